"""Every field a training config has, with its default; the files in `configs/` override them.

A config is data (`ml_collections.ConfigDict`): `--config=configs/li2018_table2.py
--config.train.batch_size=10` sets any field from the command line, and the resolved config is
saved as `WORKDIR/config.json` by the trainer.

The shared sections (`data`, `train`, `eval`) are the same for every task; `model`, `loss`
and `stages` are the task's own (`Task.default_config()`), so a key of one paper never reaches
another paper's builder: `--config.model.fpn_channels=...` on Li's config is an unknown field.
"""

import os

import ml_collections
from ml_collections import config_dict

from chestxray_tf import tasks as tasks_lib
from chestxray_tf.evaluation import protocol


def base_config(task="li2018"):
    """The config schema of `task`: the shared sections plus the task's own."""
    config = shared_config()
    config.task = task
    config.update(tasks_lib.get_task(task).default_config())
    return config


def shared_config():
    """The sections every task shares, defaults as in Li et al. 2018 (SPEC §1)."""
    config = ml_collections.ConfigDict()
    config.name = "li2018"                       # the experiment's name (reports, run identity)
    config.task = ""                             # registry key: chestxray_tf.tasks.TASKS
    config.seed = 0                              # initial weights and the data order of every epoch

    config.data = ml_collections.ConfigDict()
    config.data.manifest = ""                    # path of manifest.json (or its folder)
    config.data.protocol = "li2018"              # li2018 | official | sedai2018
    config.data.test_fold = 0                    # li2018 protocol: the held-out fold (0-4) of the 5-fold CV
    config.data.annotated_fraction = 0.8         # li2018 protocol: fraction of ALL boxed images trained on
    config.data.unannotated_fraction = 0.5       # li2018 protocol: fraction of ALL image-labelled images
    config.data.split_seed = 0                   # the patient-wise folds and fractions
    config.data.val_fraction = 0.1               # official protocol: val carved by patient
    config.data.image_size = 512                 # model input, px (the records are resized to it)
    config.data.normalization = "minus_one_one"  # or "imagenet"
    config.data.max_boxes = 8                    # boxes per image in a batch (padded)
    config.data.num_parallel_calls = 4           # tf.data decode/augment parallelism
    config.data.cycle_length = 4                 # TFRecord shards read at once
    config.data.shuffle_buffer = 512             # examples in the shuffle buffer
    config.data.skip_corrupt = False             # True: count and log corrupt records, go on
    config.data.augment = ""                     # "" (none) or "hermoza"
    config.data.ship_grey = True                 # training input: grey uint8 [S, S, 1] pixels
                                                 # normalised on the device (False: float32
                                                 # [S, S, 3] from the host)

    config.train = ml_collections.ConfigDict()
    config.train.strategy = "auto"               # auto | default | one_device | mirrored |
                                                 # multi_worker | tpu
    config.train.tpu_address = ""                # strategy=tpu: the TPU ("" = local / default)
    config.train.batch_size = 5                  # per replica; global = 5 x replicas
    config.train.num_steps = 500_000             # "500k iterations of minibatch"
    config.train.steps_per_epoch = 0             # 0: one pass over the training images
    config.train.optimizer = "adam"              # adam | adam_l2 | adamw | sgd
    config.train.learning_rate = 1e-3            # initial learning rate
    config.train.lr_decay_epochs = 10            # x lr_decay_factor every 10 epochs
    config.train.lr_decay_factor = 0.1           # step schedule: the factor
    config.train.lr_staircase = True             # False: continuous exponential decay
    config.train.lr_decay_min_fraction = 0.0     # step: decay period >= this x num_steps
    config.train.lr_schedule = "step"            # step (lr_decay_*) | plateau (plateau_*)
    config.train.plateau_patience = 1            # plateau: validations without a better val
                                                 # loss before lr x plateau_factor
    config.train.plateau_factor = 0.1            # plateau: the lr factor
    config.train.plateau_min_delta = 1e-4        # plateau: "better" = below the best - delta
    config.train.plateau_min_lr = 0.0            # plateau: the stage stops when a plateau
                                                 # hits lr <= plateau_min_lr
    config.train.select_by = "val_auc"           # best checkpoint: val_auc | val_loss
    config.train.weight_decay = 0.0              # adamw: decoupled; adam_l2: coupled
    config.train.momentum = 0.9                  # sgd only
    config.train.jit_compile = config_dict.placeholder(bool)  # XLA-compile the train step;
                                                 # None: on GPUs where the task's measured
                                                 # choice says so (Task.jit_compile_on_gpu),
                                                 # off on CPUs
    config.train.steps_per_loop = 10             # train steps per tf.function call (logs read
                                                 # only at log steps; events end a loop early)
    config.train.precision = "float32"           # float32 | mixed_bfloat16 | mixed_float16 (Keras
                                                 # dtype policy; float16 scales the loss)
    config.train.sync_batch_norm = False         # True: batch statistics over all replicas
                                                 # (Li et al. trained 5 GPUs asynchronously,
                                                 # each with its own batch of 5)
    config.train.checkpoint_every_steps = 1000   # checkpoint cadence (and at every validation)
    config.train.keep_checkpoints = 3            # checkpoints kept per stage (plus best/)
    config.train.log_every_steps = 50            # TensorBoard scalars (and the log line without a bar)
    config.train.eval_every_steps = 0            # 0: once per epoch
    config.train.num_val_images = 256            # validation AUC in TensorBoard
    config.train.num_summary_images = 4          # heat-map overlays in TensorBoard
    config.train.progress_bar = True             # tqdm bar on the chief; False: the loss is logged

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 8                   # evaluation / prediction batch
    # The localization protocol (`chestxray_tf.evaluation.protocol`); defaults: Li et al.
    config.eval.localization = "regions"         # regions (IoU / IoR of the region with the
                                                 # true boxes) | boxes (a box per region,
                                                 # best box IoU: Sedai, Hermoza, Kim)
    config.eval.region_threshold = 0.5           # T_s: patches with p > 0.5 form the region
    config.eval.region_inclusive = False         # True: map >= T_s
    config.eval.region_keep = "all"              # all (one region) | largest | each
    config.eval.max_regions = 1                  # regions (boxes) per class with "each"
    config.eval.iou_thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7) # the T of the accuracy tables
    config.eval.inclusive = False                # True: a hit is overlap >= T
    config.eval.afp = False                      # boxes: average false positives per T
    config.eval.average_iou = False              # boxes: mean best-box IoU
    config.eval.cdice = False                    # continuous Dice of the maps
    config.eval.threshold_selection = "fixed"    # fixed (region_threshold) | test-tuned |
                                                 # cross-tuned (patient halves)
    config.eval.tune_grid = protocol.DEFAULT_TUNE_GRID # thresholds tried by test-/cross-tuning
    config.eval.tune_metric = "accuracy"         # accuracy (mean over iou_thresholds) |
                                                 # average_iou
    config.eval.tune_per_threshold = False       # one threshold per class and T
    config.eval.experiment = "B"                 # the paper's experiment (Li: A = Table 1,
                                                 # B = Table 2) the report compares with
    config.eval.gallery_images = 8               # heat-map overlays per class in the report
    return config


def parse_arg(arg, **allowed):
    """The argument of a config file, `--config=configs/X.py:ARG`: comma-separated words,
    "tiny" (the smoke mode) and key=value pairs whose keys and types `allowed` names, e.g.
    parse_arg("tiny,grid=12", grid=int) -> {"tiny": True, "grid": 12}.

    Raises:
        ValueError: an unknown key or a value of the wrong type.
    """
    out = {"tiny": False}
    for word in filter(None, (w.strip() for w in (arg or "").split(","))):
        if word == "tiny":
            out["tiny"] = True
            continue
        key, sep, value = word.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"config argument {word!r}: expected 'tiny' or one of "
                             f"{', '.join(f'{k}=...' for k in allowed) or '(no key)'}")
        try:
            out[key] = allowed[key](value)
        except ValueError as e:
            raise ValueError(f"config argument {word!r}: {e}") from e
    return out


def smoke(config):
    """The `:tiny` smoke mode, in place: the same experiment, every stage, at test sizes (64 px,
    tiny widths, the task's `smoke`), a few steps, no weights to download."""
    config.data.update(image_size=64, shuffle_buffer=64, num_parallel_calls=2)
    config.train.update(batch_size=4, num_steps=10, lr_decay_epochs=0, checkpoint_every_steps=5,
                        log_every_steps=2, num_val_images=16, num_summary_images=2,
                        progress_bar=False)
    for stage in config.stages.values():
        if "num_steps" in stage:
            stage.num_steps = min(stage.num_steps, 10)
    config.eval.update(batch_size=8, gallery_images=2)
    tasks_lib.get_task(config.task).smoke(config)
    return config


def is_path_field(name):
    """A field holding a local path: `manifest`, `weights`, or a name ending in `_path`, `_file`
    or `_dir`."""
    return name in ("manifest", "weights") or name.endswith(("_path", "_file", "_dir"))


def resolve_paths(config):
    """Makes every relative local path of the config absolute (against the current folder), in
    place, so the run's config.json means the same from any folder. URLs (`gs://...`), "",
    None and "imagenet" stay as they are."""
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            resolve_paths(value)
        elif (is_path_field(name) and isinstance(value, str) and value not in ("", "imagenet")
              and "://" not in value and not os.path.isabs(value)):
            config[name] = os.path.abspath(value)
    return config
