"""Kim et al. (paper 002) with the paper's settings: official split (boxes only for
evaluation), 512 px in [-1, 1], no augmentation; stages s0 -> anchor -> s1 -> s2 -> s3 -> s4
(`chestxray_tf.tasks.kim`); evaluation: CAM in the original frame, binarised at 180/255, a box
per region, best IoU > T at T = 0.3, 0.5, 0.7 (Tables 1, 2), AUC (Tables 3, 4).

Arguments (`--config=configs/kim.py:ARG`, comma-separated): `tiny` (smoke mode);
`masks=disease` (default, "ResNet-50+Alignment+DM"), `masks=pseudo` (Table 2's pseudo-disease
masks, "Base model+PDM"), `masks=none` (the 10-epoch control: s4 retrains s2 five more epochs
with psi = 0); `threshold=180` (default) or `threshold=60` (Wang et al. [18]'s other
binarisation threshold, of 255). Evaluate a stage's row with `cli.evaluate --checkpoint`
naming its final checkpoint under W/stages/ (s0: "ResNet-50", s2: "ResNet-50+Alignment").
"""

from chestxray_tf.tasks import kim
from chestxray_tf.training import defaults

MAX_REGIONS = 10  # boxes per class and image: every 8-connected region, at most 10 by peak


def get_config(arg=None):
    args = defaults.parse_arg(arg, masks=str, threshold=int)
    config = defaults.base_config("kim")
    masks = args.get("masks", "disease")
    if masks not in kim.MASK_KINDS:
        raise ValueError(f"config argument masks={masks!r}: expected one of {kim.MASK_KINDS}")
    threshold = args.get("threshold", 180)
    if threshold not in kim.WANG_THRESHOLDS:
        raise ValueError(f"config argument threshold={threshold}: expected one of "
                         f"{tuple(kim.WANG_THRESHOLDS)} (of 255, Wang et al. [18])")
    config.name = "kim" + {"disease": "", "pseudo": "_pdm", "none": "_control"}[masks] + (
        "" if threshold == 180 else f"_t{threshold}")
    config.model.masks = masks
    config.data.update(protocol="official", image_size=512, normalization="minus_one_one",
                       augment="")
    config.train.update(batch_size=32, optimizer="adam", learning_rate=1e-4, lr_decay_epochs=0)
    config.eval.update(localization="boxes", region_threshold=kim.WANG_THRESHOLDS[threshold],
                       region_inclusive=False, region_keep="each", max_regions=MAX_REGIONS,
                       iou_thresholds=(0.3, 0.5, 0.7), inclusive=False, experiment="")
    return defaults.smoke(config) if args["tiny"] else config
