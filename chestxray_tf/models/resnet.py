"""ResNet v1 backbones (He et al. 2016, *Deep residual learning*, Table 1), without pooling or
classifier: Kim et al.'s ResNet-50 feature extractor and ResNet-18 aligner (paper 002, Sec. 3.2
and 4.2, both citing [4]), and Hermoza et al.'s ResNet-18/34 crop classifier.

`resnet_v1` builds either block type with explicit arguments:

* "bottleneck" (ResNet-50): layer for layer as `keras.applications.ResNet50` (same layer
  classes, order and names, `conv2_block3_out` ... `conv5_block3_out`; the stride on the first
  1x1 convolution; biases in every convolution), so Keras' ImageNet weights copy over by name
  and any weights file saved from `ResNet50(include_top=False)` loads.
* "basic" (ResNet-18/34): two 3x3 convolutions per block, the stride on the first, a projection
  shortcut (1x1 conv + BN) where the shape changes, convolutions without bias and explicit
  1-pixel zero padding: torchvision's layout, so its parameter count (minus the fc layer) is
  reproduced and converted weights map one to one. Layer names follow the Keras scheme
  (`conv{s}_block{b}_{1,2}_conv`, `_0_conv` for the projection, `_out`). Keras has no
  ImageNet ResNet-18/34: only a local weights file loads.

The stem is the same for both: 7x7/2 convolution, BN, ReLU, 3x3/2 max-pool (`conv1_*`,
`pool1_*`). The output is the last stage's feature map (stride 32 with the default strides).
"""


import keras

from chestxray_tf.models.resnet_v2 import _BN_EPSILON, WEIGHT_FILE_SUFFIXES, load_weights

BLOCK_TYPES = ("basic", "bottleneck")

# Stride of the first block of stages conv2..conv5 (conv2 follows the stem's max-pool).
STAGE_STRIDES = (1, 2, 2, 2)

RESNET18 = {"block": "basic", "blocks": (2, 2, 2, 2), "widths": (64, 128, 256, 512),
            "stem_width": 64}
RESNET34 = {"block": "basic", "blocks": (3, 4, 6, 3), "widths": (64, 128, 256, 512),
            "stem_width": 64}
RESNET50 = {"block": "bottleneck", "blocks": (3, 4, 6, 3), "widths": (64, 128, 256, 512),
            "stem_width": 64}
# Test variants: one block per stage; every strided convolution is at least 16 wide (8-wide
# stride-2 1x1 convolutions corrupted the heap in oneDNN on CPU, see backbones.py).
RESNET18_TINY = {"block": "basic", "blocks": (1, 1, 1, 1), "widths": (16, 16, 32, 64),
                 "stem_width": 16}
RESNET50_TINY = {"block": "bottleneck", "blocks": (1, 1, 1, 1), "widths": (16, 16, 32, 32),
                 "stem_width": 16}


def _conv_bn(x, filters, kernel_size, *, strides, name, use_bias, kernel_regularizer,
             padding="valid"):
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                            use_bias=use_bias, kernel_regularizer=kernel_regularizer,
                            name=f"{name}_conv")(x)
    return keras.layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, name=f"{name}_bn")(x)


def _relu(x, name):
    return keras.layers.Activation("relu", name=name)(x)


def bottleneck_block(x, filters, *, stride, conv_shortcut, name, kernel_regularizer):
    """Keras' `residual_block_v1`: 1x1 (stride) -> 3x3 -> 1x1 with 4x `filters`, + shortcut."""
    conv = dict(use_bias=True, kernel_regularizer=kernel_regularizer)
    shortcut = (_conv_bn(x, 4 * filters, 1, strides=stride, name=f"{name}_0", **conv)
                if conv_shortcut else x)
    x = _relu(_conv_bn(x, filters, 1, strides=stride, name=f"{name}_1", **conv), f"{name}_1_relu")
    x = _relu(_conv_bn(x, filters, 3, strides=1, padding="same", name=f"{name}_2", **conv),
              f"{name}_2_relu")
    x = _conv_bn(x, 4 * filters, 1, strides=1, name=f"{name}_3", **conv)
    return _relu(keras.layers.Add(name=f"{name}_add")([shortcut, x]), f"{name}_out")


def basic_block(x, filters, *, stride, conv_shortcut, name, kernel_regularizer):
    """Basic block (He et al. 2016, Fig. 2 left): 3x3 (stride) -> 3x3, + shortcut, ReLU."""
    conv = dict(use_bias=False, kernel_regularizer=kernel_regularizer)
    shortcut = (_conv_bn(x, filters, 1, strides=stride, name=f"{name}_0", **conv)
                if conv_shortcut else x)
    x = keras.layers.ZeroPadding2D(padding=1, name=f"{name}_1_pad")(x)
    x = _relu(_conv_bn(x, filters, 3, strides=stride, name=f"{name}_1", **conv), f"{name}_1_relu")
    x = keras.layers.ZeroPadding2D(padding=1, name=f"{name}_2_pad")(x)
    x = _conv_bn(x, filters, 3, strides=1, name=f"{name}_2", **conv)
    return _relu(keras.layers.Add(name=f"{name}_add")([shortcut, x]), f"{name}_out")


_BLOCKS = {"basic": (basic_block, 1), "bottleneck": (bottleneck_block, 4)}


def stage_output_names(blocks):
    """Names of the outputs of stages conv2..conv5 (conv2_x ... conv5_x of He et al. Table 1),
    e.g. ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")."""
    return tuple(f"conv{stage + 2}_block{n}_out" for stage, n in enumerate(blocks))


def resnet_v1(input_shape=(512, 512, 3), *, block="bottleneck", blocks=RESNET50["blocks"],
              widths=RESNET50["widths"], stem_width=64, strides=STAGE_STRIDES, weights=None,
              kernel_regularizer=None, name="resnet_v1"):
    """ResNet v1 without pooling/classifier: [B, h, w, 3] -> [B, h/32, w/32, C].

    Args:
        input_shape: (h, w, 3) of the input image.
        block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50).
        blocks: residual blocks of stages conv2..conv5.
        widths: filters of stages conv2..conv5 (bottleneck outputs are 4x these).
        stem_width: filters of the 7x7 stem convolution.
        strides: stride of the first block of each stage (default (1, 2, 2, 2): stride 32).
        weights: None (random), "imagenet" (copied by name from
            `keras.applications.ResNet50(include_top=False, weights="imagenet")`; the RESNET50
            configuration only), or the path of a local `.weights.h5` / `.h5` file saved from a
            model of the same structure (for ResNet-50, also from `keras.applications.ResNet50(
            include_top=False)`).
        kernel_regularizer: regulariser of every convolution kernel.
        name: model name.

    Returns:
        A functional `keras.Model`; its output is the last stage's `conv5_block{n}_out`, with
        widths[-1] channels (basic) or 4 * widths[-1] (bottleneck). The stage outputs are
        reachable by `stage_output_names(blocks)` (see `stage_outputs_model`).
    """
    if block not in _BLOCKS:
        raise ValueError(f"block must be one of {BLOCK_TYPES}, got {block!r}")
    for arg, value in (("blocks", blocks), ("widths", widths), ("strides", strides)):
        if len(value) != 4 or any(int(v) != v or v < 1 for v in value):
            raise ValueError(f"{arg} needs 4 positive integers (stages conv2..conv5), "
                             f"got {arg}={value!r}")
    if int(stem_width) != stem_width or stem_width < 1:
        raise ValueError(f"stem_width must be a positive integer, got {stem_width!r}")
    block_fn, expansion = _BLOCKS[block]
    image = keras.Input(shape=input_shape, name="image")
    x = keras.layers.ZeroPadding2D(padding=3, name="conv1_pad")(image)
    x = _relu(_conv_bn(x, stem_width, 7, strides=2, name="conv1", use_bias=block == "bottleneck",
                       kernel_regularizer=kernel_regularizer), "conv1_relu")
    x = keras.layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    channels = stem_width
    for stage, (width, num_blocks, stride) in enumerate(zip(widths, blocks, strides)):
        for index in range(1, num_blocks + 1):
            first = index == 1
            x = block_fn(x, width, stride=stride if first else 1,
                         conv_shortcut=first and (stride != 1 or channels != expansion * width),
                         name=f"conv{stage + 2}_block{index}",
                         kernel_regularizer=kernel_regularizer)
            channels = expansion * width
    model = keras.Model(image, x, name=name)
    _load_weights(model, weights, {"block": block, "blocks": tuple(blocks),
                                   "widths": tuple(widths), "stem_width": stem_width},
                  tuple(strides))
    return model


def stage_outputs_model(backbone, name=None):
    """The model [B, h, w, 3] -> [conv2_x, conv3_x, conv4_x, conv5_x] stage outputs of a
    `resnet_v1` backbone, sharing its layers (Kim et al.'s perceptual network, Sec. 4.2)."""
    blocks = [sum(layer.name.startswith(f"conv{s}_block") and layer.name.endswith("_out")
                  for layer in backbone.layers) for s in range(2, 6)]
    outputs = [backbone.get_layer(n).output for n in stage_output_names(blocks)]
    return keras.Model(backbone.input, outputs, name=name or f"{backbone.name}_stages")


def _load_weights(model, weights, structure, strides):
    def imagenet():
        if structure != RESNET50 or strides != STAGE_STRIDES:
            raise ValueError(
                f"weights='imagenet' exists in Keras only for ResNet-50 v1 ({RESNET50}), not "
                f"for {model.name} ({structure}, strides {strides}); pass a local weights "
                f"file (ending in {' or '.join(WEIGHT_FILE_SUFFIXES)}) or None")
        return keras.applications.ResNet50(include_top=False, weights="imagenet",
                                           input_shape=model.input_shape[1:])
    load_weights(model, weights, imagenet)
