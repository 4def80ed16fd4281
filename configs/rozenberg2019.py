"""Rozenberg et al. 2019, Table 1: Li's Fig. 6 protocol (80% of the annotated images + 0% or
20% of the unannotated ones; test = the held-out fold's annotated images), P = 20, anti-aliased
ResNet-v2-50 + PAC-CRF, the relaxed loss of Eq. 12, alternating threshold fits.

Arguments (`--config=configs/rozenberg2019.py:ARG`, comma-separated): `tiny` (smoke mode),
`unannotated=0` (default) or `unannotated=20` (percent of ALL unannotated images: the two
halves "0%" / "20%" of Table 1, experiments "un0" / "un20"), `test_fold=F` (one fold of the
5-fold CV; `cli.cv` runs them all).

Batch: "batch size 48" is global; `train.batch_size` is per replica, so 48 here is for one
replica: on N replicas set `--config.train.batch_size=48/N` (e.g. 6 on 8 GPUs).
Optimizer: Adam + coupled weight decay 0.01 (`adam_l2`, PyTorch's Adam(weight_decay=0.01) of
2019; `--config.train.optimizer=adamw` is the decoupled reading). lr 1e-3, continuous
exponential decay x0.1 per max(10 epochs, half the phase) (brief errata 1). Length (brief
§4.4): stage 1 = max(3,000 steps, 20 epochs) over 3 threshold rounds, stage 2 = a third of it
over 2 rounds.
"""

from chestxray_tf.training import defaults

UNANNOTATED = (0, 20)
GLOBAL_BATCH = 48
# 20 epochs of the 20% setting: 704 + 22,248 training images / 48 = 478 steps per epoch.
BASE_STEPS = {0: 3000, 20: 9560}


def get_config(arg=None):
    args = defaults.parse_arg(arg, unannotated=int, test_fold=int)
    unannotated = args.get("unannotated", 0)
    if unannotated not in UNANNOTATED:
        raise ValueError(f"config argument unannotated={unannotated}: Table 1 has "
                         f"{' and '.join(map(str, UNANNOTATED))} (percent of the unannotated "
                         "images)")
    config = defaults.base_config("rozenberg2019")
    config.name = f"rozenberg2019_un{unannotated}"
    config.data.update(protocol="li2018", annotated_fraction=0.8,
                       unannotated_fraction=unannotated / 100.0,
                       test_fold=args.get("test_fold", 0))
    config.train.update(batch_size=GLOBAL_BATCH, optimizer="adam_l2", weight_decay=0.01,
                        learning_rate=1e-3, lr_decay_epochs=10, lr_decay_factor=0.1,
                        lr_staircase=False, lr_decay_min_fraction=0.5)
    config.stages.base.num_steps = BASE_STEPS[unannotated]
    config.stages.crf.num_steps = BASE_STEPS[unannotated] // 3
    config.eval.update(localization="regions", region_threshold=0.5, region_inclusive=True,
                       inclusive=True, experiment=f"un{unannotated}")
    return defaults.smoke(config) if args["tiny"] else config
