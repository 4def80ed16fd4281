"""Sedai et al. 2018 (paper 003) as a Task: a multiscale DenseNet-121 (`models.sedai2018`;
C-CNN, Eq. 1; A-CNN, Eq. 2, 3), the class-balanced cross-entropy (`losses.weighted_bce`, beta_c
the fraction of negatives of class c in the training selection, brief D-2), one training stage
(Adam 1e-3, batch 32, lr x0.1 on a validation-loss plateau, best by validation loss: D-9 ...
D-12), and the evaluation of Table 1 (the attention map thresholded at 0.5, D-13, a box per
8-connected blob, accuracy at T(IoU) 0.3 / 0.5 with strict `>` and AFP, D-14).

Map variants: "" (the multiscale attention map of Eq. 3, min-max normalised, D-6) and
"deepest" (the last tapped block's CAM alone, resized and normalised the same way: the DN-CAM
reading of the same model, for the validation question "does the multiscale map localize small
lesions better than the last block's CAM?")."""

import ml_collections
import numpy as np

from chestxray_tf.labels import CLASS_NAMES, NUM_CLASSES
from chestxray_tf.losses.weighted_bce import (batch_negative_fraction, class_balanced_bce,
                                              negative_fraction)
from chestxray_tf.models.sedai2018 import SEDAI_TAPS, build_sedai2018
from chestxray_tf.tasks import base

BETA_SOURCES = ("train_split", "batch")
DNCAM_TAPS = ("relu",)
# Boxes per class with keep="each": the paper draws a box around every blob and gives no cap;
# 16 is above any blob count a min-max normalised 256 px map thresholded at 0.5 shows in
# practice (a cap only orders blobs by peak value, see `RegionRule`).
MAX_BOXES = 16


def paper_settings(config):
    """The shared sections as the paper's protocol (Sec. 3; brief D-9 ... D-14), in place."""
    config.data.update(protocol="sedai2018", image_size=256, normalization="minus_one_one",
                       augment="")
    # ~78.5k training images / 32 = 2,453 steps per epoch; at most 30 epochs (D-12); the
    # validation loss of the plateau rule on the whole val split (~11.2k images; any count
    # above it takes all).
    config.train.update(batch_size=32, optimizer="adam", learning_rate=1e-3, weight_decay=0.0,
                        lr_schedule="plateau", plateau_patience=1, plateau_factor=0.1,
                        plateau_min_delta=1e-4, plateau_min_lr=1e-6, select_by="val_loss",
                        num_steps=30 * 2_453, eval_every_steps=0, num_val_images=1_000_000)
    config.eval.update(localization="boxes", region_threshold=0.5, region_inclusive=False,
                       region_keep="each", max_regions=MAX_BOXES, iou_thresholds=(0.3, 0.5),
                       inclusive=False, afp=True, average_iou=True, threshold_selection="fixed",
                       tune_per_threshold=True, experiment="table1")
    return config


# The arguments of configs/sedai2018*.py (`--config=configs/sedai2018.py:ARG`).
CONFIG_ARGS = {"selection": str, "weights": str, "all_thresholds": int}


def paper_config(arg, name, taps=SEDAI_TAPS):
    """The config of configs/sedai2018*.py: `paper_settings` with the file's `taps` and the
    options of `arg` (`defaults.parse_arg` with `CONFIG_ARGS`): `selection` (the eval
    threshold selection), `weights` (backbone weights; ImageNet normalisation with them, D-8),
    `all_thresholds=1` (T(IoU) 0.1 ... 0.7), `tiny`."""
    from chestxray_tf.training import defaults  # defaults imports the task registry
    args = defaults.parse_arg(arg, **CONFIG_ARGS)
    config = paper_settings(defaults.base_config(Sedai2018.name))
    config.name = name
    config.model.taps = tuple(taps)
    config.eval.threshold_selection = args.get("selection", config.eval.threshold_selection)
    if "weights" in args:
        config.model.weights = args["weights"]
        config.data.normalization = "imagenet"
    if args.get("all_thresholds"):
        config.eval.iou_thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    return defaults.smoke(config) if args["tiny"] else config


class Sedai2018(base.Task):
    """Sedai et al. 2018: outputs `image_probs` (Eq. 1) and the `attention` map (Eq. 3)."""
    name = "sedai2018"
    map_key = "attention"
    uses_boxes = False  # class-balanced BCE on the image labels; boxes only in evaluation
    jit_compile_on_gpu = True  # the step compiles (docs/benchmarks.md, "XLA")

    @classmethod
    def default_config(cls):
        config = ml_collections.ConfigDict()
        config.model = ml_collections.ConfigDict()
        config.model.backbone = "densenet121"    # densenet121 | densenet_tiny (tests)
        config.model.weights = ml_collections.config_dict.placeholder(str)
        config.model.weights = None              # Xavier, the paper's (D-8); "imagenet" / file
        config.model.taps = SEDAI_TAPS           # F_1, F_2, F_3 (D-5); ("relu",) = DN-CAM
        config.model.relevance = "projected"     # simplex projection (D-7) | softmax
        config.model.num_classes = NUM_CLASSES   # K, the 14 findings of ChestX-ray14
        config.loss = ml_collections.ConfigDict()
        config.loss.beta = "train_split"         # beta_c from the training selection (D-2)
                                                 # | "batch" (per minibatch)
        config.stages = ml_collections.ConfigDict()
        config.stages.train = ml_collections.ConfigDict()
        return config

    @classmethod
    def smoke(cls, config):
        config.model.update(backbone="densenet_tiny", weights=None)

    def build_model(self, pretrained=True):
        m = self.config.model
        return build_sedai2018(image_size=self.config.data.image_size,
                               num_classes=m.num_classes, backbone=m.backbone,
                               taps=tuple(m.taps), weights=m.weights if pretrained else None,
                               relevance=m.relevance)

    # -------------------------------------------------------------- loss
    def negative_fraction(self):
        """beta [K] of the training selection (`stats`), float32."""
        if self.stats is None:
            raise ValueError("sedai2018: the class-balanced loss needs the training "
                             "selection's counts (Task stats); none were given")
        return negative_fraction(self.stats.positives, self.stats.num_images).astype(np.float32)

    def loss(self, batch, outputs):
        """The class-balanced cross-entropy of Sec. 2.2 per example (from the logits of Eq. 1)."""
        source = self.config.loss.beta
        if source not in BETA_SOURCES:
            raise ValueError(f"config.loss.beta={source!r}: expected one of "
                             f"{', '.join(BETA_SOURCES)}")
        beta = (self.negative_fraction() if source == "train_split"
                else batch_negative_fraction(batch["labels"]))
        loss = class_balanced_bce(batch["labels"], outputs["logits"], beta)
        return loss, {"image_term": loss}

    def stages(self):
        return [self.gradient_stage("train", self.loss)]

    # -------------------------------------------------------------- inference rule
    def map_variants(self):
        return ("",) if tuple(self.config.model.taps) == DNCAM_TAPS else ("", "deepest")

    def maps(self, outputs, variant=""):
        if variant not in self.map_variants():
            raise ValueError(f"sedai2018: unknown map variant {variant!r}; expected one of "
                             f"{self.map_variants()}")
        return outputs["deepest_attention" if variant == "deepest" else self.map_key]

    def comparison_row(self, stage, variant=""):
        """A-CNN (the paper's row); DN-CAM for a B = 1 run or the deepest block's map."""
        del stage
        dncam = variant == "deepest" or tuple(self.config.model.taps) == DNCAM_TAPS
        return "DN-CAM" if dncam else "A-CNN"

    def report_details(self, model):
        """The learned relevance weights w [B, K] per class (the paper's Fig. 2) and the
        options of the run."""
        weights = np.asarray(model.get_layer("relevance").relevance_weights())
        taps = tuple(self.config.model.taps)
        m, e = self.config.model, self.config.eval
        return {
            "Relevance weights w_b^c (Eq. 1; each row sums to 1)": {
                "columns": ["class"] + [f"block {b + 1} ({t})" for b, t in enumerate(taps)],
                "rows": [[name] + [round(float(v), 4) for v in weights[:, c]]
                         for c, name in enumerate(CLASS_NAMES)]},
            "Options of this run": {
                "columns": ["option", "value"],
                "rows": [["backbone weights", str(m.weights)], ["relevance", m.relevance],
                         ["beta_c", self.config.loss.beta],
                         ["threshold selection", e.threshold_selection],
                         ["map threshold", e.region_threshold],
                         ["boxes per class (blobs)", e.max_regions]]}}
