"""Tiny stand-ins for the Hermoza et al. 2020 tests: a backbone with the DenseNet tap names and
strides 4, 8, 16, 32, and a small crop CNN."""

import keras


def tiny_backbone(image_size=64, width=8):
    """Strided convs whose last layers carry the DenseNet-121 tap names."""
    image = keras.Input((image_size, image_size, 3))
    x = keras.layers.Conv2D(width, 3, strides=4, padding="same", name="tiny_dense_conv0")(image)
    x = keras.layers.LeakyReLU(0.1, name="pool2_relu")(x)
    for i, tap in enumerate(("pool3_relu", "pool4_relu", "relu"), start=1):
        x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name=f"tiny_dense_conv{i}")(x)
        x = keras.layers.LeakyReLU(0.1, name=tap)(x)
    return keras.Model(image, x, name="tiny_densenet")


def tiny_crop_backbone(crop_size=16, width=8):
    crop = keras.Input((crop_size, crop_size, 3))
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="tiny_res_conv0")(crop)
    x = keras.layers.BatchNormalization(name="tiny_res_bn")(x)
    x = keras.layers.LeakyReLU(0.1)(x)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="tiny_res_conv1")(x)
    return keras.Model(crop, x, name="tiny_resnet")
