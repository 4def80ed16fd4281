"""Hermoza et al. 2020 (paper 004) as a Task: DenseNet-121 + FPN saliency maps with LSE-LBA
pooling (classification module), region proposals picked per class by a straight-through
Gumbel-softmax and a ResNet-34 crop classifier (detection module), `models.hermoza2020`; the
class-balanced BCE of Eq. 1 and 2 (`losses.weighted_bce`); three training stages (Sec. 3.2,
4.2); three localization maps Sal / Det / Mix (Tables 2 and 3).

Stages (Sec. 3.2 "trained in three stages"; learning rates of Sec. 4.2):
1. "classification": the classification module alone with l_CLS (Eq. 1), lr 1e-3;
2. "detection": the detection module (RoI head, ResNet-34, crop heads) with l_RPN (Eq. 2),
   the classification module frozen (batch norm in inference mode), lr 1e-3; the released
   code's loss BCE(z) + BCE(y~) is `loss.stage2="code"`;
3. "joint": everything with l_CLS + l_RPN, lr 3e-4.
The Gumbel temperature tau is annealed 1 -> 0.001 in stages 2 and 3 (`loss.tau_schedule`,
`models.gumbel.annealing_span`) by a hook that assigns it in-graph from the stage's step.

Inference maps (`maps(outputs, variant)`): "mix" x_FS (the paper's method, served by export
and predict), "sal" sigmoid(x_S), "det" x_RPN; each is evaluated and compared with its row of
Table 2 ("Mix", "Sal", "Det").
"""

import ml_collections
import numpy as np

from chestxray_tf.labels import CLASS_NAMES, NUM_CLASSES
from chestxray_tf.losses.weighted_bce import class_balanced_bce, negative_fraction
from chestxray_tf.models import backbones
from chestxray_tf.models.gumbel import TAU_SCHEDULES, annealed_tau_in_graph, annealing_span
from chestxray_tf.models.hermoza2020 import build_hermoza2020, with_leaky_relu
from chestxray_tf.tasks import base

STAGES = ("classification", "detection", "joint")
STAGE2_LOSSES = ("paper", "code")
# Map variant -> (model output, row of the paper's Table 2).
MAP_VARIANTS = {"mix": ("fused_map", "Mix"), "sal": ("saliency", "Sal"),
                "det": ("rpn_map", "Det")}
# The options of the model and loss the report lists (paper default vs the released code's).
REPORTED_OPTIONS = ("model.roi_features", "model.crop", "model.crop_residual",
                    "model.map_resolution", "model.confidence", "model.leaky_scope",
                    "loss.stage2", "loss.tau_schedule", "eval.region_keep",
                    "eval.threshold_selection", "eval.tune_metric")

# The `:tiny` sizes (tests, laptops): 64 px inputs, tiny DenseNet and ResNet, narrow heads,
# RoIs of x_FPN (brief erratum 4: ~7x cheaper; the per-class RoIs trace for minutes on CPU).
TINY_MODEL = {"backbone": "densenet_tiny", "weights": None, "crop_backbone": "resnet18_tiny",
              "crop_weights": None, "width": 16, "class_width": 8, "det_filters": 8,
              "crop_size": 32, "crop_hidden": 16, "roi_features": "x_fpn"}


class Hermoza2020(base.Task):
    """Outputs of `models.hermoza2020.build_hermoza2020`; image scores sigma(y~) (Table 1)."""
    name = "hermoza2020"
    map_key = MAP_VARIANTS["mix"][0]
    uses_boxes = False  # all three stages train on the image labels; boxes only in evaluation

    @property
    def jit_compile_on_gpu(self):
        """XLA has no CropAndResize kernel: only the `gather` sampler's step compiles."""
        return self.config.model.sampler == "gather"

    @classmethod
    def default_config(cls):
        config = ml_collections.ConfigDict()
        m = config.model = ml_collections.ConfigDict()
        m.backbone = "densenet121"               # "CNN" (Sec. 4.2)
        m.weights = ml_collections.config_dict.placeholder(str)
        m.weights = "imagenet"                   # None / "imagenet" / a weights file
        m.crop_backbone = "resnet34"             # "ResNet" (Sec. 4.2)
        m.crop_weights = ml_collections.config_dict.placeholder(str)  # a local ImageNet
        #                                          ResNet-34 weights file (Keras has none)
        m.num_classes = NUM_CLASSES              # K, the 14 findings of ChestX-ray14
        m.width = 256                            # Q, channels of x_FPN
        m.class_width = 128                      # channels of f_k
        m.roi_features = "per_class"             # code (brief erratum 4) | x_fpn (paper)
        m.det_filters = 64                       # channels of the detection convs
        m.crop_size = 64                         # side of the crop fed to the crop classifier
        m.crop_hidden = 512                      # hidden width of the crop classifier
        m.dropout = 0.5                          # before the crop classifier's output
        m.leaky_scope = "pretrained"             # LeakyReLU(0.1) in the pre-trained nets
        m.crop_residual = False                  # True: z = crop logit + y~ (code)
        m.map_resolution = "saliency"            # x_RPN at H/4 (paper) | image (code)
        m.confidence = "raw"                     # x_RPN weights: raw c (code) | softmax
        m.crop = "bilinear"                      # bilinear | glimpse (code)
        m.sampler = "crop_and_resize"            # | gather (XLA / TPU)
        config.loss = ml_collections.ConfigDict()
        config.loss.stage2 = "paper"             # l_RPN (paper) | code: BCE(z) + BCE(y~)
        config.loss.tau_schedule = "stages_2_3"  # brief D-tau; stage2 | per_stage | constant
        config.stages = ml_collections.ConfigDict()
        # Learning rates of Sec. 4.2; steps from brief D-ep (8, 2, 4 epochs of ~9,412 steps
        # at batch 8 on the 75,300 training images of the code's validation carve-out).
        config.stages.classification = ml_collections.ConfigDict(  # stage 1, Eq. 1
            {"learning_rate": 1e-3, "num_steps": 75_300})
        config.stages.detection = ml_collections.ConfigDict(  # stage 2, Eq. 2
            {"learning_rate": 1e-3, "num_steps": 18_825})
        config.stages.joint = ml_collections.ConfigDict(  # stage 3: everything, both losses
            {"learning_rate": 3e-4, "num_steps": 37_650})
        return config

    @classmethod
    def smoke(cls, config):
        config.model.update(TINY_MODEL)

    def __init__(self, config, stats=None):
        super().__init__(config, stats)
        for field, value, allowed in (("loss.stage2", config.loss.stage2, STAGE2_LOSSES),
                                      ("loss.tau_schedule", config.loss.tau_schedule,
                                       TAU_SCHEDULES)):
            if value not in allowed:
                raise ValueError(f"config.{field}={value!r}: expected one of "
                                 f"{', '.join(allowed)}")

    # -------------------------------------------------------------- model
    def build_model(self, pretrained=True):
        m, size = self.config.model, self.config.data.image_size

        def network(name, shape, weights):
            model = backbones.build_backbone(name, shape, weights=weights if pretrained else None)
            return with_leaky_relu(model)

        return build_hermoza2020(
            image_size=size, num_classes=m.num_classes,
            backbone=network(m.backbone, (size, size, 3), m.weights),
            crop_backbone=network(m.crop_backbone, (m.crop_size, m.crop_size, 3), m.crop_weights),
            width=m.width, class_width=m.class_width, roi_features=m.roi_features,
            det_filters=m.det_filters, crop_size=m.crop_size, crop_hidden=m.crop_hidden,
            dropout=m.dropout, leaky_scope=m.leaky_scope, crop_residual=m.crop_residual,
            map_resolution=m.map_resolution, confidence=m.confidence, seed=self.config.seed,
            sampler=m.sampler, crop=m.crop)

    # -------------------------------------------------------------- losses (Eq. 1, 2)
    @property
    def beta(self):
        """beta_P(k) = 1 - P_k / |D| (Eq. 1; beta_N = 1 - beta_P) of the training selection."""
        if self.stats is None:
            raise ValueError("hermoza2020: the losses need the training selection's counts "
                             "(Task(config, stats))")
        return negative_fraction(self.stats.positives, self.stats.num_images).astype(np.float32)

    def _bce(self, batch, logits):
        return class_balanced_bce(batch["labels"], logits, self.beta)

    def classification_loss(self, batch, outputs):
        """Stage 1: l_CLS(y~, y), Eq. 1, summed over the classes."""
        cls = self._bce(batch, outputs["image_logits"])
        return cls, {"l_cls": cls}

    def detection_loss(self, batch, outputs):
        """Stage 2: l_RPN(z~, y), Eq. 2 (paper); + l_CLS with `loss.stage2="code"`."""
        rpn = self._bce(batch, outputs["crop_logits"])
        if self.config.loss.stage2 == "paper":
            return rpn, {"l_rpn": rpn}
        cls = self._bce(batch, outputs["image_logits"])
        return rpn + cls, {"l_rpn": rpn, "l_cls": cls}

    def joint_loss(self, batch, outputs):
        """Stage 3: l_CLS + l_RPN."""
        cls = self._bce(batch, outputs["image_logits"])
        rpn = self._bce(batch, outputs["crop_logits"])
        return cls + rpn, {"l_cls": cls, "l_rpn": rpn}

    # -------------------------------------------------------------- stages
    def tau_hook(self, stage_number):
        """hook(model, step): tau of `gumbel_pick` <- the schedule's value at the stage's step
        (in-graph, before every step)."""
        steps = {2: int(base.stage_train_config(self.config, STAGES[1]).num_steps),
                 3: int(base.stage_train_config(self.config, STAGES[2]).num_steps)}
        offset, total, end = annealing_span(stage_number, steps, self.config.loss.tau_schedule)

        def hook(model, step):
            tau = model.get_layer("detection").get_layer("gumbel_pick").tau
            tau.assign(annealed_tau_in_graph(step, offset, total, end))
        return hook

    def stages(self):
        return [self.gradient_stage("classification", self.classification_loss,
                                    trainable=("classification",)),
                self.gradient_stage("detection", self.detection_loss, trainable=("detection",),
                                    hooks=(self.tau_hook(2),)),
                self.gradient_stage("joint", self.joint_loss, hooks=(self.tau_hook(3),))]

    # -------------------------------------------------------------- inference rule
    def map_variants(self):
        return tuple(MAP_VARIANTS)

    def maps(self, outputs, variant=""):
        if variant and variant not in MAP_VARIANTS:
            raise ValueError(f"hermoza2020 map variant {variant!r}: expected one of "
                             f"{', '.join(MAP_VARIANTS)}")
        return outputs[MAP_VARIANTS[variant or "mix"][0]]

    def comparison_row(self, stage, variant=""):
        del stage
        return MAP_VARIANTS[variant or "mix"][1]

    def report_details(self, model):
        lse = model.get_layer("classification").get_layer("lse_pool")
        sharpness = np.asarray(lse.sharpness, dtype=np.float64)
        tau = float(model.get_layer("detection").get_layer("gumbel_pick").tau.numpy())
        options = []
        for key in REPORTED_OPTIONS:
            section, field = key.split(".")
            options.append([key, str(self.config[section][field])])
        options.append(["gumbel tau (checkpoint)", f"{tau:.4g}"])
        return {
            "Options (paper default or the released code's behaviour)": {
                "columns": ["option", "value"], "rows": options},
            "Learned LSE sharpness r_k = r0 + exp(beta_k)": {
                "columns": ["class", "r_k"],
                "rows": [[name, round(float(r), 4)] for name, r in zip(CLASS_NAMES,
                                                                        sharpness)]},
        }
