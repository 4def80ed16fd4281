"""The model of Li et al. 2018 (paper 000, Sec. 3.1, Fig. 3): backbone -> patch slicing ->
fully convolutional recognition network -> P x P x K patch probabilities, and the image-level
score of Eq. 2.

Outputs (a dict, read by key everywhere):
* "patch_probs" [B, P, P, K]: sigmoid patch probabilities p_jk (Sec. 3.1).
* "image_probs" [B, K]: p(y_k | x) = 1 - prod_j (1 - p_jk)~ (Eq. 2, with the smoothing of
  Sec. 3.4, computed in log space by `chestxray_tf.losses.li2018.image_probs`).
"""

import keras

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.losses import li2018 as li2018_losses
from chestxray_tf.models.backbones import build_backbone
from chestxray_tf.models.layers import PatchSlicing

# The paper adds "L2 regularization to the loss function" (Sec. 3.4) without a value;
# 1e-4 (Keras L2: weight_decay * sum(w ** 2)) is our choice (issue 4).
DEFAULT_WEIGHT_DECAY = 1e-4


@keras.saving.register_keras_serializable(package="chestxray_tf")
class ImageProbs(keras.layers.Layer):
    """[B, P, P, K] patch probabilities -> [B, K] image-level scores (Eq. 2)."""

    def __init__(self, smoothing=0.98, **kwargs):
        super().__init__(**kwargs)
        self.smoothing = smoothing

    def call(self, patch_probs):
        return li2018_losses.image_probs(patch_probs, self.smoothing)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


def recognition_head(features, *, grid, num_classes, head_width, regularizer):
    """Patch slicing and the recognition network (Sec. 3.1): features [B, h', w', C] ->
    PatchSlicing(P) -> Conv3x3(c*) -> BN -> ReLU -> Conv1x1(K) = patch logits [B, P, P, K]."""
    x = PatchSlicing(grid, name="patch_slicing")(features)
    # The 3x3 convolution feeds batch norm, whose offset makes a bias redundant.
    x = keras.layers.Conv2D(head_width, 3, padding="same", use_bias=False,
                            kernel_regularizer=regularizer, name="head_conv")(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.Activation("relu", name="head_relu")(x)
    return keras.layers.Conv2D(num_classes, 1, kernel_regularizer=regularizer,
                               name="patch_logits")(x)


def build_li2018(*, image_size=512, grid=16, num_classes=NUM_CLASSES, backbone="resnet_v2_50",
                 weights=None, head_width=512, weight_decay=DEFAULT_WEIGHT_DECAY,
                 smoothing=0.98, name="li2018"):
    """Builds the Li et al. 2018 model.

    Args:
        image_size: side S of the input image "image" [B, S, S, 3], pixels in [-1, 1].
        grid: patch grid size P (the paper uses 12, 16 or 20).
        num_classes: K.
        backbone: a name of `chestxray_tf.models.backbones.BACKBONES` ("resnet_v2_50" in the
            paper; "resnet_v2_tiny" for tests and the demo).
        weights: initial backbone weights: None, "imagenet" or a local weights file (see
            `chestxray_tf.models.resnet_v2.resnet_v2`); the head starts from Keras' default
            initialisers.
        head_width: channels c* of the 3x3 convolution of the recognition network (512).
        weight_decay: L2 factor on every convolution kernel (backbone and head); the paper
            gives no value, the default 1e-4 is ours. The penalties are in `model.losses`,
            which the training loop adds to the loss. 0 or None: no regularisation.
        smoothing: the factor smoothing of the image-level score (0.98; None: none).
        name: model name.

    Returns:
        A `keras.Model` with outputs {"patch_probs": [B, P, P, K], "image_probs": [B, K]}, both
        float32 whatever the dtype policy.
    """
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = build_backbone(backbone, input_shape=(image_size, image_size, 3),
                              weights=weights, kernel_regularizer=regularizer)(image)
    logits = recognition_head(features, grid=grid, num_classes=num_classes,
                              head_width=head_width, regularizer=regularizer)
    patch_probs = keras.layers.Activation("sigmoid", dtype="float32", name="patch_probs")(logits)
    image_probs = ImageProbs(smoothing, dtype="float32", name="image_probs")(patch_probs)
    return keras.Model(image, {"patch_probs": patch_probs, "image_probs": image_probs},
                       name=name)
