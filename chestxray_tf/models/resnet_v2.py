"""Convolutional backbones without global pooling or classifier (Li et al. 2018, Sec. 3.1).

The base model uses the pre-activation ResNet (ResNet-v2-50, He et al. 2016): with the final
classification and global pooling layers removed, an h x w x 3 image gives an
h/32 x w/32 x 2048 feature tensor (512 x 512 -> 16 x 16).

`resnet_v2` builds that network layer for layer as `keras.applications.ResNet50V2` does
(same layer classes, order and names, ending with `post_bn` / `post_relu`), so Keras'
ImageNet weights and any weights file saved from `ResNet50V2(include_top=False)` load into it.
Unlike the Keras application it takes a kernel regulariser (the paper's L2 regularisation) and
smaller widths/depths (the `resnet_v2_tiny` variant for tests and the demo).

`resnet_v2(..., antialias=True)` is the anti-aliased variant of Rozenberg et al. 2019 (Sec. 3.3,
after Zhang 2019): every stride-2 step but the stem convolution becomes a stride-1 step followed
by a `BlurPool2D` (brief §3.2), with the same weighted layers and names, so the plain
backbone's weights (and Keras' ResNet50V2 ImageNet weights) load into it by name.

`chestxray_tf.models.backbones` registers it beside the other papers' backbones.
"""

import os
import re

import keras

from chestxray_tf.models.blur_pool import BlurPool2D

# Keras' ResNet-v2 batch-norm epsilon (keras.applications.resnet), kept for weight transfer.
_BN_EPSILON = 1.001e-5

# Stem width, bottleneck widths of stages conv2..conv5 and their numbers of blocks.
RESNET_V2_50 = {"stem_width": 64, "widths": (64, 128, 256, 512), "blocks": (3, 4, 6, 3)}
# The tiny stem is 16 wide: with 8, training on CPU with an odd batch size corrupts the heap in
# oneDNN's 1x1 stride-2 convolution of 8 channels (TF 2.21; uxlfoundation/oneDNN#6035).
RESNET_V2_TINY = {"stem_width": 16, "widths": (8, 16, 32, 64), "blocks": (1, 1, 1, 1)}

# Stride of the last block of each stage: conv2..conv4 halve, conv5 keeps (total stride 32
# with the stem's conv and max-pool).
_STAGE_STRIDES = (2, 2, 2, 1)

WEIGHT_FILE_SUFFIXES = (".weights.h5", ".h5")


def _conv(filters, kernel_size, name, kernel_regularizer, strides=1, use_bias=True):
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, use_bias=use_bias,
                               kernel_regularizer=kernel_regularizer, name=name)


def _bn_relu(x, name):
    """Batch norm + ReLU named `{name}_bn` / `{name}_relu` as in Keras' ResNet-v2."""
    x = keras.layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x)


def residual_block_v2(x, filters, *, stride, conv_shortcut, name, kernel_regularizer,
                      blur_size=None):
    """Pre-activation bottleneck block (1x1 -> 3x3 with `stride` -> 1x1 with 4x `filters`).

    With `blur_size` and stride 2 (anti-aliasing, Zhang 2019 / brief §3.2): the 3x3 conv has
    stride 1 and `{name}_2_blur` follows its ReLU; the subsampled identity shortcut
    (`{name}_0_pool`) becomes `{name}_0_blur`; a projection shortcut blurs before its 1x1 conv.
    """
    preact = _bn_relu(x, f"{name}_preact")
    blur = blur_size is not None and stride > 1
    conv_stride = 1 if blur else stride
    if conv_shortcut:
        source = BlurPool2D(blur_size, name=f"{name}_0_blur")(preact) if blur else preact
        shortcut = _conv(4 * filters, 1, f"{name}_0_conv", kernel_regularizer,
                         strides=conv_stride)(source)
    elif blur:
        shortcut = BlurPool2D(blur_size, name=f"{name}_0_blur")(x)
    elif stride > 1:
        shortcut = keras.layers.MaxPooling2D(1, strides=stride, name=f"{name}_0_pool")(x)
    else:
        shortcut = x
    x = _conv(filters, 1, f"{name}_1_conv", kernel_regularizer, use_bias=False)(preact)
    x = _bn_relu(x, f"{name}_1")
    x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name=f"{name}_2_pad")(x)
    x = _conv(filters, 3, f"{name}_2_conv", kernel_regularizer, strides=conv_stride,
              use_bias=False)(x)
    x = _bn_relu(x, f"{name}_2")
    if blur:
        x = BlurPool2D(blur_size, name=f"{name}_2_blur")(x)
    x = _conv(4 * filters, 1, f"{name}_3_conv", kernel_regularizer)(x)
    return keras.layers.Add(name=f"{name}_out")([shortcut, x])


def residual_stage_v2(x, filters, blocks, *, stride, name, kernel_regularizer, blur_size=None):
    """`blocks` blocks: the first projects the shortcut, the last one strides."""
    for index in range(1, blocks + 1):
        x = residual_block_v2(x, filters, stride=stride if index == blocks else 1,
                              conv_shortcut=index == 1, name=f"{name}_block{index}",
                              kernel_regularizer=kernel_regularizer, blur_size=blur_size)
    return x


def resnet_v2(input_shape=(512, 512, 3), *, weights=None, stem_width=64,
              widths=RESNET_V2_50["widths"], blocks=RESNET_V2_50["blocks"],
              kernel_regularizer=None, antialias=False, blur_size=3, blur_stem_conv=False,
              name="resnet_v2_50"):
    """Pre-activation ResNet without pooling/classifier: [B, h, w, 3] -> [B, h/32, w/32, C].

    Args:
        input_shape: (h, w, 3) of the input image, pixels in [-1, 1] (the scaling of
            Keras' ResNet-v2 ImageNet weights).
        weights: None (random initialisation), "imagenet" (Keras' ResNet50V2 ImageNet weights,
            downloaded by Keras; ResNet-v2-50 widths only), or the path of a local
            `.weights.h5` / `.h5` file saved from `keras.applications.ResNet50V2(
            include_top=False)` or from a model built by this function.
        stem_width: filters of the 7x7 stem convolution.
        widths: bottleneck widths of stages conv2..conv5 (output channels are 4x these).
        blocks: number of residual blocks of stages conv2..conv5.
        kernel_regularizer: regulariser of every convolution kernel (e.g. keras.regularizers.L2).
        antialias: Rozenberg et al. 2019's anti-aliased backbone (Zhang 2019): the stem
            max-pool gets stride 1 + `pool1_blur`, and the last blocks of conv2..conv4 blur
            instead of striding (see `residual_block_v2`). Same weighted layers and names.
        blur_size: side of the binomial blur filter when `antialias` (3: [1, 2, 1]).
        blur_stem_conv: with `antialias`, also turn the 7x7/2 stem conv into 7x7/1 +
            `conv1_blur` (the paper's literal "every downsampling"; Zhang's code leaves it
            strided by default, as here).
        name: model name.

    Returns:
        A functional `keras.Model` whose output is the `post_relu` feature map,
        C = 4 * widths[-1] channels (2048 for ResNet-v2-50).
    """
    if len(widths) != len(_STAGE_STRIDES) or len(blocks) != len(_STAGE_STRIDES):
        raise ValueError(f"widths and blocks need one entry per stage conv2..conv5, got "
                         f"widths={widths}, blocks={blocks}")
    if blur_stem_conv and not antialias:
        raise ValueError("blur_stem_conv=True needs antialias=True")
    blur_size = blur_size if antialias else None
    image = keras.Input(shape=input_shape, name="image")
    x = keras.layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(image)
    x = _conv(stem_width, 7, "conv1_conv", kernel_regularizer,
              strides=1 if blur_stem_conv else 2)(x)
    if blur_stem_conv:
        x = BlurPool2D(blur_size, name="conv1_blur")(x)
    x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=1 if antialias else 2, name="pool1_pool")(x)
    if antialias:
        x = BlurPool2D(blur_size, name="pool1_blur")(x)
    for stage, (width, num_blocks, stride) in enumerate(zip(widths, blocks, _STAGE_STRIDES)):
        x = residual_stage_v2(x, width, num_blocks, stride=stride, name=f"conv{stage + 2}",
                              kernel_regularizer=kernel_regularizer, blur_size=blur_size)
    features = _bn_relu(x, "post")
    model = keras.Model(image, features, name=name)
    _load_weights(model, weights, {"stem_width": stem_width, "widths": tuple(widths),
                                   "blocks": tuple(blocks)})
    return model


def load_weights(model, weights, imagenet):
    """Loads `weights` into a backbone: None (keep the initialisation), "imagenet" (copies by
    layer name from the Keras application `imagenet()` builds; it raises where Keras has
    none), or the path of a local `.weights.h5` / `.h5` file."""
    if weights is None:
        return
    if isinstance(weights, str) and weights == "imagenet":
        _copy_weights_by_name(_download(imagenet, model.name), model)
        return
    path = os.fspath(weights)
    if not path.endswith(WEIGHT_FILE_SUFFIXES):
        raise ValueError(f"weights {path!r} of {model.name}: expected None, 'imagenet' or a "
                         f"file ending in {' or '.join(WEIGHT_FILE_SUFFIXES)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} of {model.name} does not exist")
    model.load_weights(path)


class WeightsUnavailable(ValueError):
    """The ImageNet weights could not be downloaded (no internet): the message says how to go on."""


def _download(imagenet, name):
    """`imagenet()`, with a failed download (Keras raises a bare `Exception("URL fetch failure
    on <url>: ...")`) turned into one line naming the file, Keras' cache folder and the options."""
    try:
        return imagenet()
    except Exception as e:  # noqa: BLE001 -- Keras' get_file raises Exception itself
        url = re.search(r"URL fetch failure on (\S+): ", str(e))
        if url is None:
            raise
        file_name = url.group(1).rsplit("/", 1)[-1]
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")),
                             "models")
        raise WeightsUnavailable(
            f"the ImageNet weights of {name} could not be downloaded ({url.group(1)}): copy "
            f"{file_name} into {cache}/ (Keras' cache), or give a local file with "
            f"--config.model.weights=PATH, or train from scratch with "
            f"--config.model.weights=None") from e


def _load_weights(model, weights, structure):
    def imagenet():
        if structure != RESNET_V2_50:
            raise ValueError(f"ImageNet weights exist only for ResNet-v2-50 "
                             f"({RESNET_V2_50}), not for {model.name} ({structure})")
        return keras.applications.ResNet50V2(include_top=False, weights="imagenet",
                                             input_shape=model.input_shape[1:])
    load_weights(model, weights, imagenet)


def _copy_weights_by_name(source, target):
    """Copies every weighted layer of `source` into the layer of `target` with its name."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())
