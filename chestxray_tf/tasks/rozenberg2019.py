"""Rozenberg et al. 2019 (paper 001) as a Task: the anti-aliased Li model with a PAC-CRF
(`models.rozenberg2019`), the relaxed threshold loss of Eq. 12 (`losses.rozenberg2019`) and
the paper's training (Sec. 4, "Training details"):

1. "we train the unary terms using the base model until converges": gradient stages
   base_1 .. base_R (z := p, every layer but the CRF part), each followed by a compute stage
   thresholds_base_r that refits (τ, ρ, τ̂, ρ̂) with the weights frozen ("we then freeze the
   network weights, and find the optimal thresholds; we continue to alternate");
2. "we freeze the base model and train only the PAC-CRF part": crf_1 .. crf_R (the `crf*`
   layers, the base frozen with batch norm in inference mode) alternating with
   thresholds_crf_r on z.

The rounds of one phase share one learning-rate decay: round r starts at the lr the phase's
continuous exponential decay has reached after the previous rounds (brief errata 1: the decay
period is max(10 epochs, phase steps / 2); the per-round start assumes the second term, which
holds in both of the paper's settings).

Evaluation: the region {z ≥ 0.5} (inclusive) against the union of the true boxes, hit when
IoU ≥ T or IoR ≥ T (inclusive); map variants "" (z, the CRF output) and "unary" (p).
"""

import json
import os

import ml_collections
import numpy as np
import tensorflow as tf
from keras import ops

from chestxray_tf.labels import CLASS_NAMES, NUM_CLASSES
from chestxray_tf.losses.li2018 import li2018_loss
from chestxray_tf.losses.rozenberg2019 import THRESHOLD_NAMES, pooled_gamma, rozenberg2019_loss
from chestxray_tf.models.rozenberg2019 import CRF_LAYER_PREFIX, build_rozenberg2019
from chestxray_tf.models.rozenberg2019_thresholds import (METHODS, fit_thresholds,
                                                         threshold_statistics,
                                                         thresholds_converged)
from chestxray_tf.tasks import base
from chestxray_tf.tasks.li2018 import backbone_weights

GAMMAS = ("pooled", "per_class", "batch")
STAGE1_LOSSES = ("rozenberg2019", "li2018")
PHASES = ("base", "crf")
# Li et al.'s loss settings for the literal reading of stage 1 (`stage1_loss="li2018"`).
LI_LAMBDA_BBOX, LI_SMOOTHING = 5.0, 0.98
TINY_MODEL = {"backbone": "resnet_v2_tiny", "weights": None, "grid": 4, "head_width": 16,
              "crf_window": 3, "crf_feature_resize": 1}


def round_train_config(train, rounds, index):
    """The train settings of round `index` (0-based) of a phase of `rounds` rounds whose
    `train.num_steps` is the phase's total: num_steps / rounds steps, starting at the lr the
    phase's decay reached, with the decay period of the whole phase (min fraction of the
    phase's steps, `lr_decay_min_fraction`; without it each round restarts the schedule)."""
    out = ml_collections.ConfigDict(train.to_dict())
    steps = max(1, train.num_steps // rounds)
    out.num_steps = steps
    if train.lr_decay_epochs and train.lr_schedule == "step" and train.lr_decay_min_fraction:
        period = max(1.0, train.lr_decay_min_fraction * train.num_steps)
        out.learning_rate = float(train.learning_rate
                                  * train.lr_decay_factor ** (index * steps / period))
        out.lr_decay_min_fraction = train.lr_decay_min_fraction * rounds
    return out


class Rozenberg2019(base.Task):
    """Outputs `patch_probs` p, `z` (the map), `image_probs` (mean z) and `thresholds`."""
    name = "rozenberg2019"
    map_key = "z"
    uses_boxes = True  # Eq. 12's box term trains on the P x P box masks
    jit_compile_on_gpu = True  # compiles: the CRF branch area-resizes by average pooling

    @classmethod
    def default_config(cls):
        config = ml_collections.ConfigDict()
        config.model = ml_collections.ConfigDict()
        config.model.backbone = "resnet_v2_50"   # resnet_v2_50 | resnet_v2_tiny (tests)
        config.model.weights = ml_collections.config_dict.placeholder(str)
        config.model.weights = "imagenet"        # None / "imagenet" / a weights file
        config.model.grid = 20                   # P
        config.model.head_width = 512            # width of the patch head before the logits
        config.model.num_classes = NUM_CLASSES   # "the full complement of 14 disease types"
        config.model.antialias = True            # blur-pool (Zhang 2019) at the stride-2 steps
        config.model.blur_size = 3               # binomial blur filter size
        config.model.blur_stem_conv = False      # True: the literal "every downsampling"
        config.model.crf_window = 19             # "a 19 x 19 PAC filter"
        config.model.crf_steps = 5               # mean-field iterations of the PAC-CRF
        config.model.crf_message = "spin"        # or "pac"
        config.model.crf_feature_resize = 4      # feature branch input: the image area-resized to this x P
        config.model.weight_decay = 0.0          # the decay is the optimizer's (adam_l2)
        config.loss = ml_collections.ConfigDict()
        config.loss.form = "relu"                # relu (Eq. 12) | sigmoid (Eq. 5 + 8)
        config.loss.lambda_ann = 70.0            # weight of the annotated (box) term, Eq. 12
        config.loss.gamma = "pooled"             # pooled | per_class | batch
        config.loss.stage1 = "rozenberg2019"     # or li2018 (literal "the base model")
        config.thresholds = ml_collections.ConfigDict()
        config.thresholds.fit = "youden"         # youden | quantile | fixed
        config.thresholds.rounds_base = 3        # threshold fits alternating with base training
        config.thresholds.rounds_crf = 2         # threshold fits alternating with CRF training
        config.stages = ml_collections.ConfigDict()
        config.stages.base = ml_collections.ConfigDict({"num_steps": 3000}) # steps of the base phase (split over its rounds)
        config.stages.crf = ml_collections.ConfigDict({"num_steps": 1000}) # steps of the CRF phase (split over its rounds)
        return config

    @classmethod
    def smoke(cls, config):
        config.model.update(TINY_MODEL)
        config.thresholds.update(rounds_base=2, rounds_crf=1)

    def __init__(self, config, stats=None):
        super().__init__(config, stats)
        c = config
        for field, value, allowed in (("loss.gamma", c.loss.gamma, GAMMAS),
                                      ("loss.stage1", c.loss.stage1, STAGE1_LOSSES),
                                      ("thresholds.fit", c.thresholds.fit, METHODS)):
            if value not in allowed:
                raise ValueError(f"config.{field} must be one of {', '.join(allowed)}, "
                                 f"got {value!r}")
        for phase in PHASES:
            rounds = c.thresholds[f"rounds_{phase}"]
            if not (isinstance(rounds, int) and rounds >= 1):
                raise ValueError(f"config.thresholds.rounds_{phase} must be an integer >= 1, "
                                 f"got {rounds!r}")

    # -------------------------------------------------------------- model and data
    def build_model(self, pretrained=True):
        m = self.config.model
        return build_rozenberg2019(
            image_size=self.config.data.image_size, grid=m.grid, num_classes=m.num_classes,
            backbone=m.backbone, antialias=m.antialias, blur_size=m.blur_size,
            blur_stem_conv=m.blur_stem_conv, weights=backbone_weights(self.config, pretrained),
            head_width=m.head_width, weight_decay=m.weight_decay, crf_window=m.crf_window,
            crf_steps=m.crf_steps, crf_message=m.crf_message,
            crf_feature_resize=m.crf_feature_resize)

    def targets(self):
        return {"grid": self.config.model.grid}

    # -------------------------------------------------------------- losses
    def gamma(self, labels):
        """γ of Eq. 11: pooled |P| / |N| of the training selection (default), per class, or
        of the batch's B x K labels (Wang et al.'s practice)."""
        if self.config.loss.gamma == "batch":
            return ops.sum(labels) / ops.maximum(ops.sum(1.0 - labels), 1.0)
        if self.stats is None:
            raise ValueError("loss.gamma='pooled'/'per_class' needs the training selection's "
                             "counts (Task(config, stats))")
        return pooled_gamma(self.stats.positives, self.stats.negatives,
                            per_class=self.config.loss.gamma == "per_class")

    def relaxed_loss(self, key):
        """Eq. 12 (or Eq. 5 + 8) on the model output `key` ("patch_probs": z := p; "z")."""
        def loss(batch, outputs):
            labels = ops.cast(batch["labels"], "float32")
            return rozenberg2019_loss(labels, batch["box_mask"], batch["has_box"],
                                      outputs[key], outputs["thresholds"],
                                      lambda_ann=self.config.loss.lambda_ann,
                                      gamma=self.gamma(labels), form=self.config.loss.form,
                                      return_terms=True)
        return loss

    def li_loss(self, batch, outputs):
        """Li et al.'s Eq. 4 on p: the literal reading of stage 1 (brief errata 4)."""
        return li2018_loss(batch["labels"], batch["box_mask"], batch["has_box"],
                           outputs["patch_probs"], lambda_bbox=LI_LAMBDA_BBOX,
                           smoothing=LI_SMOOTHING, return_terms=True)

    # -------------------------------------------------------------- stages
    def stages(self):
        stage1_loss = (self.relaxed_loss("patch_probs") if self.config.loss.stage1 ==
                       "rozenberg2019" else self.li_loss)
        base_layers = (self.config.model.backbone, "head_*", "patch_logits")
        phases = (("base", stage1_loss, base_layers, "patch_probs"),
                  ("crf", self.relaxed_loss("z"), (f"{CRF_LAYER_PREFIX}*",), "z"))
        out = []
        for phase, loss, trainable, key in phases:
            rounds = self.config.thresholds[f"rounds_{phase}"]
            train = base.stage_train_config(self.config, phase)
            for r in range(rounds):
                out.append(base.Stage(name=f"{phase}_{r + 1}", loss=loss,
                                      trainable=trainable,
                                      train=round_train_config(train, rounds, r)))
                out.append(base.Stage(name=f"thresholds_{phase}_{r + 1}", kind="compute",
                                      compute=self.threshold_fit(key)))
        return out

    def threshold_fit(self, key):
        """The compute stage: refits the thresholds on the training selection from the map
        `key` with the weights frozen; writes thresholds.json in the stage's folder."""
        def compute(context):
            layer = context.model.get_layer("thresholds")
            current = layer.thresholds.numpy()
            predict = tf.function(lambda images: context.model(images, training=False))
            maps, masks, labels, has_box = [], [], [], []
            for batch in context.dataset(context.split.train):
                maps.append(predict(batch["image"])[key].numpy())
                masks.append(batch["box_mask"].numpy())
                labels.append(batch["labels"].numpy())
                has_box.append(batch["has_box"].numpy())
            statistics = threshold_statistics(np.concatenate(maps), np.concatenate(masks))
            new, kept = fit_thresholds(current, np.concatenate(labels), np.concatenate(has_box),
                                       statistics, method=self.config.thresholds.fit)
            layer.assign(new)
            summary = {"method": self.config.thresholds.fit, "map": key,
                       "thresholds": dict(zip(THRESHOLD_NAMES, new.tolist())),
                       "kept": [[CLASS_NAMES[k], part] for k, part in kept],
                       "converged": thresholds_converged(current, new)}
            tf.io.gfile.makedirs(context.stage_dir)
            with tf.io.gfile.GFile(os.path.join(context.stage_dir, "thresholds.json"), "w") as f:
                json.dump(summary, f, indent=2)
            return summary
        return compute

    # -------------------------------------------------------------- inference rule
    def maps(self, outputs, variant=""):
        """"" : z (the CRF output); "unary": p (the base model's patch probabilities)."""
        return outputs["patch_probs" if variant == "unary" else self.map_key]

    def map_variants(self):
        return ("", "unary")

    def report_details(self, model):
        values = model.get_layer("thresholds").thresholds.numpy()
        k = self.config.model.num_classes
        names = CLASS_NAMES if k == NUM_CLASSES else [str(i) for i in range(k)]
        c = self.config
        options = [["loss.form", c.loss.form], ["loss.gamma", c.loss.gamma],
                   ["loss.stage1", c.loss.stage1], ["thresholds.fit", c.thresholds.fit],
                   ["rounds (base, crf)", f"{c.thresholds.rounds_base}, "
                                          f"{c.thresholds.rounds_crf}"],
                   ["optimizer", f"{c.train.optimizer} (weight_decay {c.train.weight_decay:g})"],
                   ["antialias (blur size, stem conv)",
                    f"{c.model.antialias} ({c.model.blur_size}, {c.model.blur_stem_conv})"],
                   ["crf (window, steps, message)",
                    f"{c.model.crf_window}, {c.model.crf_steps}, {c.model.crf_message}"]]
        return {"Fitted thresholds": {"columns": ["class", *THRESHOLD_NAMES],
                                      "rows": [[names[j], *(round(float(v), 4)
                                                            for v in values[:, j])]
                                               for j in range(k)]},
                "Options of this run": {"columns": ["option", "value"], "rows": options}}
