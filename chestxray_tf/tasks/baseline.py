"""The "reference" of Li et al. 2018 Table 1 as a Task: the same backbone, global average
pooling, a dense sigmoid layer and plain binary cross-entropy (`models.baseline`,
`losses.bce`); its map is the class activation map of that dense layer."""

import ml_collections

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.losses.bce import bce_loss
from chestxray_tf.models.baseline import build_baseline
from chestxray_tf.models.li2018 import DEFAULT_WEIGHT_DECAY
from chestxray_tf.tasks import base, li2018


class Baseline(base.Task):
    """Global pooling + dense + BCE; its report compares with Li et al.'s reference rows."""
    name = "baseline"
    published = "li2018"
    published_row = "baseline"
    map_key = "cam"
    uses_boxes = False  # BCE on the image labels only (Li et al. Table 1's reference)
    jit_compile_on_gpu = True  # the step compiles (docs/benchmarks.md, "XLA")

    @classmethod
    def default_config(cls):
        config = ml_collections.ConfigDict()
        config.model = ml_collections.ConfigDict()
        config.model.backbone = "resnet_v2_50"   # resnet_v2_50 | resnet_v2_tiny (tests)
        config.model.weights = ml_collections.config_dict.placeholder(str)
        config.model.weights = "imagenet"        # None / "imagenet" / a weights file
        config.model.num_classes = NUM_CLASSES   # K, the 14 findings of ChestX-ray14
        config.model.weight_decay = DEFAULT_WEIGHT_DECAY # L2 on kernels, as Li et al.'s model
        config.loss = ml_collections.ConfigDict()
        config.stages = ml_collections.ConfigDict()
        config.stages.train = ml_collections.ConfigDict()
        return config

    @classmethod
    def smoke(cls, config):
        config.model.update(backbone=li2018.TINY_MODEL["backbone"], weights=None)

    def build_model(self, pretrained=True):
        m = self.config.model
        return build_baseline(image_size=self.config.data.image_size,
                              num_classes=m.num_classes, backbone=m.backbone,
                              weights=li2018.backbone_weights(self.config, pretrained),
                              weight_decay=m.weight_decay)

    def loss(self, batch, outputs):
        loss = bce_loss(batch["labels"], outputs["image_probs"])
        return loss, {"image_term": loss}

    def stages(self):
        return [self.gradient_stage("train", self.loss)]
