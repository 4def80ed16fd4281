"""The "reference" baseline of Li et al. 2018 (paper 000, Sec. 4.1, Table 1): the same
backbone with global average pooling and a dense sigmoid layer, trained with plain binary
cross-entropy (`chestxray_tf.losses.bce`), as in Wang et al. 2017's ChestX-ray8 classifier.

Outputs (a dict, read by key everywhere):
* "image_probs" [B, K]: sigmoid(W . GAP(f) + b), the image-level probabilities.
* "cam" [B, h, w, K]: sigmoid(W . f_ij + b), the class activation map (Zhou et al. 2016) of
  the same dense layer applied at every backbone cell, so the evaluator can localize with it.
  Since the dense layer is linear, GAP of the CAM's logits equals the image logits.
"""

import keras

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.models.backbones import build_backbone
from chestxray_tf.models.li2018 import DEFAULT_WEIGHT_DECAY


def build_baseline(*, image_size=512, num_classes=NUM_CLASSES, backbone="resnet_v2_50",
                   weights=None, weight_decay=DEFAULT_WEIGHT_DECAY, name="baseline"):
    """Builds the global-pooling baseline.

    Args:
        image_size: side S of the input image "image" [B, S, S, 3], pixels in [-1, 1].
        num_classes: K.
        backbone: a name of `chestxray_tf.models.backbones.BACKBONES`.
        weights: initial backbone weights: None, "imagenet" or a local weights file.
        weight_decay: L2 factor on every kernel (in `model.losses`); 0 or None: none.
        name: model name.

    Returns:
        A `keras.Model` with outputs {"image_probs": [B, K], "cam": [B, h, w, K]}, both
        float32 whatever the dtype policy.
    """
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = build_backbone(backbone, input_shape=(image_size, image_size, 3),
                              weights=weights, kernel_regularizer=regularizer)(image)
    pooled = keras.layers.GlobalAveragePooling2D(name="global_pool")(features)
    classifier = keras.layers.Dense(num_classes, kernel_regularizer=regularizer,
                                    name="classifier")
    image_probs = keras.layers.Activation("sigmoid", dtype="float32",
                                          name="image_probs")(classifier(pooled))
    cam = keras.layers.Activation("sigmoid", dtype="float32", name="cam")(classifier(features))
    return keras.Model(image, {"image_probs": image_probs, "cam": cam}, name=name)
