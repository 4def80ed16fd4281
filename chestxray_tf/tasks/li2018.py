"""Li et al. 2018 (paper 000) as a Task: ResNet-v2-50 -> patch slicing -> patch recognition
head (`models.li2018`), the MIL loss of Eq. 1, 2, 4 (`losses.li2018`), one training stage, and
the region rule of Sec. 3.3 (all patches with p > T_s together form one region)."""

import ml_collections

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.losses.li2018 import li2018_loss
from chestxray_tf.models.li2018 import DEFAULT_WEIGHT_DECAY, build_li2018
from chestxray_tf.tasks import base

# The tiny sizes of the `:tiny` smoke mode for the ResNet-v2 tasks (tests, laptops).
TINY_MODEL = {"backbone": "resnet_v2_tiny", "weights": None, "grid": 4, "head_width": 16}


def backbone_weights(config, pretrained):
    """The backbone weights to load: the config's, or None when a checkpoint will be restored."""
    return config.model.weights if pretrained else None


class Li2018(base.Task):
    """Li et al. 2018: outputs `patch_probs` [B, P, P, K] (the map) and `image_probs` (Eq. 2)."""
    name = "li2018"
    map_key = "patch_probs"
    uses_boxes = True  # Eq. 4's box term trains on the P x P box masks
    jit_compile_on_gpu = True  # the step compiles (docs/benchmarks.md, "XLA")

    @classmethod
    def default_config(cls):
        config = ml_collections.ConfigDict()
        config.model = ml_collections.ConfigDict()
        config.model.backbone = "resnet_v2_50"   # resnet_v2_50 | resnet_v2_tiny (tests)
        config.model.weights = ml_collections.config_dict.placeholder(str)
        config.model.weights = "imagenet"        # None / "imagenet" / a weights file
        config.model.grid = 16                   # P
        config.model.head_width = 512            # c*
        config.model.num_classes = NUM_CLASSES   # K, the 14 findings of ChestX-ray14
        config.model.smoothing = ml_collections.config_dict.placeholder(float)
        config.model.smoothing = 0.98            # None: no [0.98, 1] mapping
        config.model.weight_decay = DEFAULT_WEIGHT_DECAY  # L2 on kernels; no value in paper
        config.loss = ml_collections.ConfigDict()
        config.loss.lambda_bbox = 5.0            # lambda_bbox of Eq. 4 (box term weight)
        config.loss.other_classes = "image_label"  # or "negative" (literal Sec. 3.2)
        config.stages = ml_collections.ConfigDict()
        config.stages.train = ml_collections.ConfigDict()  # config.train as it is
        return config

    @classmethod
    def smoke(cls, config):
        config.model.update(TINY_MODEL)

    def build_model(self, pretrained=True):
        m = self.config.model
        return build_li2018(image_size=self.config.data.image_size, grid=m.grid,
                            num_classes=m.num_classes, backbone=m.backbone,
                            weights=backbone_weights(self.config, pretrained),
                            head_width=m.head_width, weight_decay=m.weight_decay,
                            smoothing=m.smoothing)

    def targets(self):
        return {"grid": self.config.model.grid}

    def loss(self, batch, outputs):
        """Eq. 4 per example, with its box and image terms."""
        return li2018_loss(batch["labels"], batch["box_mask"], batch["has_box"],
                           outputs["patch_probs"], lambda_bbox=self.config.loss.lambda_bbox,
                           smoothing=self.config.model.smoothing,
                           other_classes=self.config.loss.other_classes, return_terms=True)

    def stages(self):
        return [self.gradient_stage("train", self.loss)]
