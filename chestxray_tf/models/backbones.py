"""The backbone registry: every paper's convolutional backbone by the name a config gives,
with named multi-level outputs (keras-hub's `pyramid_outputs` style).

| name | paper | builder |
|---|---|---|
| resnet_v2_50, resnet_v2_tiny | Li et al. 2018 (and the baseline) | `resnet_v2.resnet_v2` |
| resnet_v2_50_aa, resnet_v2_tiny_aa | Rozenberg et al. 2019 (blur-pool) | `resnet_v2(antialias=True)` |
| densenet121, densenet_tiny | Sedai et al. 2018, Hermoza et al. 2020 | `densenet.densenet` |
| resnet18, resnet34, resnet50, resnet18_tiny, resnet50_tiny | Kim et al., Hermoza et al. | `resnet.resnet_v1` |

`build_backbone(name, input_shape, weights, kernel_regularizer)` -> a functional model from the
image to the last feature map; with `outputs` (pyramid levels "P2".."P5" or layer names), a
model whose output is the dict of those taps (`pyramid_model`). Every builder takes
`weights` = None | "imagenet" | a local weights file (ImageNet where Keras has it).
"""

import dataclasses
import functools
from typing import Callable

import keras

from chestxray_tf.models import densenet, resnet, resnet_v2

@dataclasses.dataclass(frozen=True)
class Backbone:
    """A registered backbone.

    build: (input_shape, *, weights, kernel_regularizer, name) -> functional `keras.Model` from
        the image to its last feature map.
    levels: pyramid level -> the layer whose output it is, keras-hub's `pyramid_outputs` style
        ("P3" has stride 8, "P5" stride 32); any other layer name of the model is a tap too.
    stride: the output stride of the last feature map.
    """
    build: Callable
    levels: dict
    stride: int = 32


def _resnet_v2_levels(structure):
    blocks = structure["blocks"]
    return {"P3": f"conv2_block{blocks[0]}_out", "P4": f"conv3_block{blocks[1]}_out",
            "P5": "post_relu"}


def _resnet_v1_levels(structure):
    names = resnet.stage_output_names(structure["blocks"])
    return dict(zip(("P2", "P3", "P4", "P5"), names))


_DENSENET_LEVELS = {"P2": "pool2_relu", "P3": "pool3_relu", "P4": "pool4_relu", "P5": "relu"}


def _resnet_v2(structure, **options):
    return Backbone(functools.partial(resnet_v2.resnet_v2, **structure, **options),
                    _resnet_v2_levels(structure))


def _resnet_v1(structure):
    return Backbone(functools.partial(resnet.resnet_v1, **structure), _resnet_v1_levels(structure))


BACKBONES = {
    "resnet_v2_50": _resnet_v2(resnet_v2.RESNET_V2_50),
    "resnet_v2_tiny": _resnet_v2(resnet_v2.RESNET_V2_TINY),
    "resnet_v2_50_aa": _resnet_v2(resnet_v2.RESNET_V2_50, antialias=True),
    "resnet_v2_tiny_aa": _resnet_v2(resnet_v2.RESNET_V2_TINY, antialias=True),
    "densenet121": Backbone(densenet.DENSENETS["densenet121"], _DENSENET_LEVELS),
    "densenet_tiny": Backbone(densenet.DENSENETS["densenet_tiny"], _DENSENET_LEVELS),
    "resnet18": _resnet_v1(resnet.RESNET18),
    "resnet34": _resnet_v1(resnet.RESNET34),
    "resnet50": _resnet_v1(resnet.RESNET50),
    "resnet18_tiny": _resnet_v1(resnet.RESNET18_TINY),
    "resnet50_tiny": _resnet_v1(resnet.RESNET50_TINY),
}


def get_backbone(name):
    """The registered `Backbone` called `name`."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name, input_shape=(512, 512, 3), weights=None, kernel_regularizer=None,
                   outputs=None):
    """The backbone registered as `name` (see `BACKBONES`), built for `input_shape`.

    Args:
        outputs: None: the model ends at the last feature map. A sequence of pyramid levels
            ("P3", ...) or layer names: the model's output is a dict {each name: its tensor}
            (the multi-level taps of FPN-style heads and multiscale CAMs).
    """
    backbone = get_backbone(name)
    model = backbone.build(input_shape, weights=weights, kernel_regularizer=kernel_regularizer,
                           name=name)
    if outputs is None:
        return model
    return pyramid_model(model, outputs, backbone.levels)


def pyramid_model(model, outputs, levels=None):
    """`model` (functional) with a dict of named intermediate outputs instead of its own.

    Args:
        model: a functional `keras.Model`.
        outputs: names of pyramid levels (keys of `levels`) or of layers of `model`.
        levels: pyramid level -> layer name.
    """
    levels = levels or {}
    layer_names = {layer.name for layer in model.layers}
    taps = {}
    for name in outputs:
        layer = levels.get(name, name)
        if layer not in layer_names:
            raise ValueError(f"{model.name} has no pyramid level or layer named {name!r} "
                             f"(levels: {', '.join(levels) or 'none'})")
        taps[name] = model.get_layer(layer).output
    return keras.Model(model.input, taps, name=model.name)
