"""A two-stage toy task for the stage-runner tests: stage "base" trains the tiny Li model,
stage "fit" (compute) writes a non-trainable `offset` variable from the training split, stage
"head" trains only the head with the base frozen."""

import keras
import ml_collections
import numpy as np

from chestxray_tf import tasks
from chestxray_tf.tasks import base, li2018


@keras.saving.register_keras_serializable(package="chestxray_tf_tests")
class Offset(keras.layers.Layer):
    """image_probs + a non-trainable scalar offset (the compute stage's variable)."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                      name="offset")

    def call(self, x):
        return x + 0.0 * self.offset


class ToyTask(li2018.Li2018):
    name = "toy"
    published = "li2018"

    @classmethod
    def default_config(cls):
        config = super().default_config()
        config.stages = ml_collections.ConfigDict({"base": {"num_steps": 4},
                                                   "head": {"num_steps": 3}})
        return config

    def build_model(self, pretrained=True):
        model = super().build_model(pretrained)
        offset = Offset(name="offset")
        outputs = dict(model.output)
        outputs["image_probs"] = offset(outputs["image_probs"])
        return keras.Model(model.input, outputs, name="toy")

    def fit_offset(self, context):
        """Counts the training images and writes it to the `offset` variable."""
        count = 0
        for batch in context.dataset(context.split.train):
            count += int(batch["labels"].shape[0])
        context.model.get_layer("offset").offset.assign(float(count))
        return {"num_images": count}

    def stages(self):
        return [self.gradient_stage("base", self.loss),
                base.Stage("fit", kind="compute", compute=self.fit_offset),
                self.gradient_stage("head", self.loss,
                                    trainable=("head_*", "patch_logits"))]


def register():
    tasks.TASKS["toy"] = ToyTask


def toy_config(manifest):
    from chestxray_tf.training import defaults
    register()
    config = defaults.smoke(defaults.base_config("toy"))
    config.data.manifest = str(manifest)
    config.train.update(strategy="default", num_val_images=0, checkpoint_every_steps=1)
    return config


def weights_by_path(model):
    return {v.path: np.array(v.numpy()) for v in model.weights}


def head_weight_paths(model):
    names = ("head_conv", "head_bn", "patch_logits")
    return {v.path for layer in names for v in model.get_layer(layer).weights}
