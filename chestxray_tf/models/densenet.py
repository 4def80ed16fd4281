"""DenseNet (Huang et al. 2017) without pooling/classifier, layer for layer as Keras builds it.

Sedai et al. 2018 (paper 003, Sec. 2.1) use "121 layers Densenet": a 7x7 stride-2 stem and a
3x3 stride-2 max-pool, then four dense blocks of 6, 12, 24, 16 "conv blocks" (BN-ReLU-1x1 conv
of 4k filters, BN-ReLU-3x3 conv of k = growth-rate filters, concatenated to the block's input),
separated by transitions (BN-ReLU-1x1 conv halving the channels, 2x2 average pool), and a final
BN-ReLU. Hermoza et al. 2020 use the same network.

`densenet` builds it as `keras.applications.densenet.DenseNet` does (same layer classes,
order and names: `conv1_conv`, `conv2_block1_0_bn`, ..., `pool3_relu`, `conv4_block24_concat`,
`bn`, `relu`; batch-norm epsilon 1.001e-5), so Keras' ImageNet weights and any weights file
saved from `keras.applications.DenseNet121(include_top=False)` load into it. The two
zero-padding layers, which Keras leaves unnamed (so their names depend on what was built
before), are named `conv1_pad` and `pool1_pad`; they have no weights. Unlike the Keras
application it takes a kernel regulariser, and other depths, growth rates and stem widths
(`DENSENET_TINY` for tests and the demo).

`feature_taps` turns a backbone into a model returning named intermediate tensors (Sedai et
al.'s ends of dense blocks 2-4: `pool3_relu`, `pool4_relu`, `relu`; Hermoza et al. add
`pool2_relu`).
"""

import functools

import keras

from chestxray_tf.models.resnet_v2 import _bn_relu, _conv, load_weights

# Keras' DenseNet batch-norm epsilon (keras.applications.densenet), kept for weight transfer.
_BN_EPSILON = 1.001e-5
# Compression of the transition layers (Huang et al. 2017, DenseNet-BC: theta = 0.5).
_REDUCTION = 0.5

# Conv blocks of dense blocks 1..4, growth rate k, filters of the stem convolution.
DENSENET_121 = {"blocks": (6, 12, 24, 16), "growth_rate": 32, "stem_width": 64}
# The tiny stem is 16 wide, not 8: an 8-channel stride-2 convolution corrupted the heap in
# oneDNN on CPU with odd batch sizes (see resnet_v2.RESNET_V2_TINY). Its only strided
# convolution is the stem (transitions pool, they do not stride).
DENSENET_TINY = {"blocks": (1, 1, 1, 1), "growth_rate": 8, "stem_width": 16}


def conv_block(x, growth_rate, *, name, kernel_regularizer):
    """BN-ReLU-1x1 conv (4k) -> BN-ReLU-3x3 conv (k), concatenated to the input: C -> C + k."""
    y = _bn_relu(x, f"{name}_0")
    y = _conv(4 * growth_rate, 1, f"{name}_1_conv", kernel_regularizer, use_bias=False)(y)
    y = _bn_relu(y, f"{name}_1")
    y = keras.layers.Conv2D(growth_rate, 3, padding="same", use_bias=False,
                            kernel_regularizer=kernel_regularizer, name=f"{name}_2_conv")(y)
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([x, y])


def dense_block(x, blocks, growth_rate, *, name, kernel_regularizer):
    """`blocks` conv blocks named `{name}_block1` ... `{name}_block{blocks}`."""
    for index in range(1, blocks + 1):
        x = conv_block(x, growth_rate, name=f"{name}_block{index}",
                       kernel_regularizer=kernel_regularizer)
    return x


def transition_block(x, *, name, kernel_regularizer):
    """BN-ReLU-1x1 conv halving the channels, 2x2 average pool with stride 2."""
    x = _bn_relu(x, name)
    x = _conv(int(x.shape[-1] * _REDUCTION), 1, f"{name}_conv", kernel_regularizer,
              use_bias=False)(x)
    return keras.layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)


def _check_structure(blocks, growth_rate, stem_width):
    if len(blocks) != 4 or any(int(b) != b or b < 1 for b in blocks):
        raise ValueError(f"blocks must give 4 positive integers (conv blocks of dense blocks "
                         f"1..4), got blocks={blocks!r}")
    for arg, value in (("growth_rate", growth_rate), ("stem_width", stem_width)):
        if int(value) != value or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {arg}={value!r}")


def densenet(input_shape=(512, 512, 3), *, blocks=DENSENET_121["blocks"],
             growth_rate=DENSENET_121["growth_rate"], stem_width=DENSENET_121["stem_width"],
             weights=None, kernel_regularizer=None, name="densenet121"):
    """DenseNet without pooling/classifier: [B, h, w, 3] -> [B, h/32, w/32, C] (the `relu`).

    Args:
        input_shape: (h, w, 3) of the input image.
        blocks: conv blocks of dense blocks 1..4 ((6, 12, 24, 16) for DenseNet-121).
        growth_rate: k, channels each conv block adds (32).
        stem_width: filters of the 7x7 stem convolution (64).
        weights: None (Keras' default initialisers: Glorot-uniform kernels = Xavier, the
            initialisation of Sedai et al. Sec. 2.2), "imagenet" (Keras' DenseNet121 ImageNet
            weights, downloaded by Keras; DenseNet-121 structure only; inputs then expect
            Keras' DenseNet preprocessing, ImageNet mean/std), or the path of a local
            `.weights.h5` / `.h5` file saved from `keras.applications.DenseNet121(
            include_top=False)` or from a model built by this function.
        kernel_regularizer: regulariser of every convolution kernel.
        name: model name.

    Returns:
        A functional `keras.Model` with input "image" and output the final `relu`;
        C = c_3 / 2 + blocks[3] * growth_rate channels, c_3 the channels at the end of dense
        block 3 (1024 for DenseNet-121).
    """
    _check_structure(blocks, growth_rate, stem_width)
    image = keras.Input(shape=input_shape, name="image")
    x = keras.layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(image)
    x = _conv(stem_width, 7, "conv1_conv", kernel_regularizer, strides=2, use_bias=False)(x)
    x = _bn_relu(x, "conv1")
    x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    for index, num_blocks in enumerate(blocks):
        if index > 0:
            x = transition_block(x, name=f"pool{index + 1}",
                                 kernel_regularizer=kernel_regularizer)
        x = dense_block(x, num_blocks, growth_rate, name=f"conv{index + 2}",
                        kernel_regularizer=kernel_regularizer)
    x = keras.layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, name="bn")(x)
    features = keras.layers.Activation("relu", name="relu")(x)
    model = keras.Model(image, features, name=name)
    structure = {"blocks": tuple(blocks), "growth_rate": growth_rate, "stem_width": stem_width}

    def imagenet():
        if structure != DENSENET_121:
            raise ValueError(f"weights='imagenet': ImageNet weights exist only for "
                             f"DenseNet-121 ({DENSENET_121}), not for {name} ({structure})")
        return keras.applications.DenseNet121(include_top=False, weights="imagenet",
                                              input_shape=tuple(input_shape))
    load_weights(model, weights, imagenet)
    return model


def feature_taps(backbone, taps, name=None):
    """A model from the backbone's input to its layers named `taps`, in that order.

    Args:
        backbone: a functional `keras.Model` (e.g. from `densenet`).
        taps: names of layers of `backbone` (e.g. ("pool3_relu", "pool4_relu", "relu")).
        name: model name (default: the backbone's).

    Returns:
        A `keras.Model` sharing the backbone's layers, with a list of outputs.
    """
    if isinstance(taps, str) or not taps:
        raise ValueError(f"taps must be a non-empty sequence of layer names, got {taps!r}")
    names = {layer.name for layer in backbone.layers}
    missing = [tap for tap in taps if tap not in names]
    if missing:
        raise ValueError(f"taps {missing} are not layers of backbone {backbone.name!r} "
                         f"(e.g. 'pool3_relu', 'pool4_relu', 'relu' of a DenseNet)")
    return keras.Model(backbone.input, [backbone.get_layer(tap).output for tap in taps],
                       name=name or backbone.name)


DENSENETS = {
    "densenet121": functools.partial(densenet, **DENSENET_121),
    "densenet_tiny": functools.partial(densenet, **DENSENET_TINY),
}


def build_densenet(name, input_shape=(512, 512, 3), weights=None, kernel_regularizer=None):
    """The DenseNet variant registered as `name` in `DENSENETS` (the signature of
    `backbones.build_backbone`, so the entries can join `backbones.BACKBONES`)."""
    if name not in DENSENETS:
        raise ValueError(f"unknown DenseNet {name!r}; expected one of {', '.join(DENSENETS)}")
    return DENSENETS[name](input_shape, weights=weights, kernel_regularizer=kernel_regularizer,
                           name=name)
