"""chestxray_tf/models/backbones.py: every registered backbone through the shared harness
(build, call, gradient step, .keras round trip) at a tiny size, and its pyramid taps."""

import numpy as np
import pytest

import chestxray_tf.models  # noqa: F401  (registers the custom layers for load_model)
from chestxray_tf.models import backbones
from harness import run_model_test

TINY = ("resnet_v2_tiny", "resnet_v2_tiny_aa", "densenet_tiny", "resnet18_tiny", "resnet50_tiny")


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbones_pass_the_harness(name, tmp_path):
    model = backbones.build_backbone(name, (64, 64, 3))
    image = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    out = run_model_test(model, image, tmp_path)
    assert out.shape[1:3] == (2, 2)  # stride 32


@pytest.mark.parametrize("name", TINY)
def test_pyramid_levels_have_their_strides(name, tmp_path):
    levels = list(backbones.get_backbone(name).levels)
    model = backbones.build_backbone(name, (64, 64, 3), outputs=levels)
    out = model(np.zeros((1, 64, 64, 3), np.float32))
    assert set(out) == set(levels)
    for level in levels:
        assert out[level].shape[1] == 64 // 2 ** int(level[1:]), (name, level)


def test_layer_taps_and_bad_names():
    model = backbones.build_backbone("densenet_tiny", (64, 64, 3),
                                     outputs=("pool3_relu", "P5"))
    assert set(model.output) == {"pool3_relu", "P5"}
    with pytest.raises(ValueError, match="no pyramid level or layer named 'P9'"):
        backbones.build_backbone("densenet_tiny", (64, 64, 3), outputs=("P9",))
    with pytest.raises(ValueError, match="unknown backbone 'resnet_v3'"):
        backbones.build_backbone("resnet_v3")


@pytest.mark.parametrize("name,channels", [("resnet_v2_50", 2048), ("resnet_v2_50_aa", 2048),
                                           ("densenet121", 1024), ("resnet18", 512),
                                           ("resnet34", 512), ("resnet50", 2048)])
def test_full_size_backbones_build_at_512(name, channels):
    assert backbones.build_backbone(name, (512, 512, 3)).output_shape == (None, 16, 16, channels)
