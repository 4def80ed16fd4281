"""Every field a training config has, with its default; the files in `configs/` override them.

A config is data (`ml_collections.ConfigDict`): `--config=configs/li2018_table2.py
--config.train.batch_size=10` sets any field from the command line, and the resolved config is
saved as `WORKDIR/config.json` by the trainer.
"""

import ml_collections

from chestxray_tf.labels import NUM_CLASSES


def base_config():
    """The config schema, defaults as in Li et al. 2018 (SPEC §1)."""
    config = ml_collections.ConfigDict()
    config.name = "li2018"
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "li2018"                 # registry key: builder and loss
    config.model.backbone = "resnet_v2_50"
    config.model.weights = "imagenet"            # None / "imagenet" / path of a weights file
    config.model.grid = 16                       # P
    config.model.head_width = 512                # c*
    config.model.num_classes = NUM_CLASSES
    config.model.smoothing = 0.98                # None: no [0.98, 1] mapping
    config.model.weight_decay = 1e-4             # L2 on kernels; the paper gives no value
    config.model.sync_batch_norm = False         # True: batch statistics over all replicas
                                                 # (the paper trained 5 GPUs asynchronously,
                                                 # each with its own batch of 5)

    config.loss = ml_collections.ConfigDict()
    config.loss.lambda_bbox = 5.0

    config.data = ml_collections.ConfigDict()
    config.data.manifest = ""                    # path of manifest.json (or its folder)
    config.data.protocol = "li2018"              # li2018 | official | sedai2018
    config.data.test_fold = 0
    config.data.annotated_fraction = 0.8
    config.data.unannotated_fraction = 0.5
    config.data.split_seed = 0
    config.data.val_fraction = 0.1               # official protocol: val carved by patient
    config.data.image_size = 512
    config.data.normalization = "minus_one_one"  # or "imagenet"
    config.data.max_boxes = 8
    config.data.num_parallel_calls = 4
    config.data.cycle_length = 4
    config.data.shuffle_buffer = 512
    config.data.skip_corrupt = False             # True: count and log corrupt records, go on
    config.data.augment = ""                     # "" (none) or "hermoza"

    config.train = ml_collections.ConfigDict()
    config.train.strategy = "auto"               # auto | default | mirrored | multi_worker | tpu
    config.train.tpu_address = ""
    config.train.batch_size = 5                  # per replica; global = 5 x replicas
    config.train.num_steps = 500_000             # "500k iterations of minibatch"
    config.train.steps_per_epoch = 0             # 0: one pass over the training images
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.lr_decay_epochs = 10            # x lr_decay_factor every 10 epochs
    config.train.lr_decay_factor = 0.1
    config.train.weight_decay = 0.0              # decoupled (adamw only)
    config.train.momentum = 0.9                  # sgd only
    config.train.jit_compile = False
    config.train.checkpoint_every_steps = 1000
    config.train.keep_checkpoints = 3
    config.train.log_every_steps = 50
    config.train.eval_every_steps = 0            # 0: once per epoch
    config.train.num_val_images = 256            # validation AUC in TensorBoard
    config.train.num_summary_images = 4          # heat-map overlays in TensorBoard
    config.train.progress_bar = True

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 8
    config.eval.region_threshold = 0.5           # T_s: patches with p > 0.5 form the region
    config.eval.iou_thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    config.eval.experiment = "B"                 # the paper's experiment (Li: A = Table 1,
                                                 # B = Table 2) the report compares with
    config.eval.gallery_images = 8               # heat-map overlays per class in the report
    return config
