"""The model of Rozenberg et al. 2019 (paper 001, Sec. 3.3, Fig. 3): two branches into a
PAC-CRF.

* Upper branch (unaries): Li et al.'s base model "modified with anti-aliasing filters" — the
  anti-aliased ResNet-v2 (`resnet_v2.resnet_v2(antialias=True)`), patch slicing and Li's
  recognition head (`li2018.recognition_head`, same layer names) -> unary logits u, p = σ(u).
* Lower branch: `pac_crf.crf_feature_branch` on the image -> features f on the P x P grid.
* `pac_crf.PacCrf(u, f)` -> z, "a sharper estimate" of the patch scores.

Outputs (a dict, all float32):
* "patch_probs" [B, P, P, K]: p = σ(u), the unary branch (Li's output; stage 1 trains on it).
* "z" [B, P, P, K]: the CRF output (= "patch_probs" without the CRF); evaluation region z ≥ 0.5.
* "image_probs" [B, K]: 1ᵀz_k / P², the image score for AUC (brief §2.17; the paper has none).
* "thresholds" [B, 4, K]: (τ, ρ, τ̂, ρ̂) from the non-trainable `Thresholds` layer.

Layers of the CRF part are named `crf` and `crf_features_*`: stage 2 ("we freeze the base model
and train only the PAC-CRF part") freezes every other layer.
"""

import keras
import numpy as np

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.models.backbones import build_backbone, get_backbone
from chestxray_tf.models.li2018 import recognition_head
from chestxray_tf.models.pac_crf import PacCrf, crf_feature_branch
from chestxray_tf.models.rozenberg2019_thresholds import Thresholds, initial_thresholds

# Median box size of all NIH boxes on the 20 x 20 grid (brief errata 10), scaled by the grid
# area for other P: the initial τ̂, ρ̂ when no training boxes are given.
ALL_BOX_MEDIAN_P20 = 28.0
CRF_LAYER_PREFIX = "crf"


def _backbone(name, input_shape, *, weights, regularizer, antialias, blur_size, blur_stem_conv):
    if not antialias:
        return build_backbone(name, input_shape, weights=weights,
                              kernel_regularizer=regularizer)
    return get_backbone(name).build(input_shape, weights=weights, kernel_regularizer=regularizer,
                                    antialias=True, blur_size=blur_size,
                                    blur_stem_conv=blur_stem_conv, name=name)


def default_thresholds(grid, num_classes):
    """Initial thresholds (brief §4.1) with m_k = the all-box median for every class."""
    return initial_thresholds(np.full(num_classes, ALL_BOX_MEDIAN_P20 * grid * grid / 400.0))


def build_rozenberg2019(*, image_size=512, grid=20, num_classes=NUM_CLASSES,
                        backbone="resnet_v2_50", antialias=True, blur_size=3,
                        blur_stem_conv=False, weights=None, head_width=512, weight_decay=0.0,
                        crf=True, crf_window=19, crf_steps=5, crf_message="spin",
                        crf_feature_widths=None, crf_feature_resize=4, thresholds=None,
                        name="rozenberg2019"):
    """Builds the Rozenberg et al. 2019 model.

    Args:
        image_size: side S of the input "image" [B, S, S, 3], pixels in [-1, 1].
        grid: P (20 in the paper).
        num_classes: K (14: "the full complement of 14 disease types").
        backbone: a name of `backbones.BACKBONES` ("resnet_v2_50"; "resnet_v2_tiny" in tests).
        antialias, blur_size, blur_stem_conv: see `resnet_v2.resnet_v2`.
        weights: initial backbone weights: None, "imagenet" or a local weights file (copied by
            name, so plain ResNet-v2 weights fit the anti-aliased backbone).
        head_width: channels of Li's 3x3 head convolution (512).
        weight_decay: Keras L2 factor on the unary branch's kernels (0: the paper's weight
            decay is the optimizer's, brief §2.7).
        crf: add the PAC-CRF (False: z = p, the "Eq. 12 only" ablation).
        crf_window, crf_steps, crf_message: see `pac_crf.PacCrf` (19, 5, "spin").
        crf_feature_widths: widths of the feature branch's convolutions (default (32, K)).
        crf_feature_resize: the image is area-resized to this multiple of P first (4).
        thresholds: initial [4, K] (see `rozenberg2019_thresholds.initial_thresholds`);
            default `default_thresholds(grid, num_classes)`.
        name: model name.
    """
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    input_shape = (image_size, image_size, 3)
    image = keras.Input(shape=input_shape, name="image")
    features = _backbone(backbone, input_shape, weights=weights, regularizer=regularizer,
                         antialias=antialias, blur_size=blur_size,
                         blur_stem_conv=blur_stem_conv)(image)
    logits = recognition_head(features, grid=grid, num_classes=num_classes,
                              head_width=head_width, regularizer=regularizer)
    patch_probs = keras.layers.Activation("sigmoid", dtype="float32", name="patch_probs")(logits)
    z = patch_probs
    if crf:
        widths = crf_feature_widths or (32, num_classes)
        pairwise = crf_feature_branch(image, grid=grid, widths=tuple(widths),
                                      resize=crf_feature_resize,
                                      name=f"{CRF_LAYER_PREFIX}_features")
        z = PacCrf(crf_window, crf_steps, crf_message, name=CRF_LAYER_PREFIX)([logits, pairwise])
    image_probs = keras.layers.GlobalAveragePooling2D(dtype="float32", name="image_probs")(z)
    initial = default_thresholds(grid, num_classes) if thresholds is None else thresholds
    threshold_values = Thresholds(initial, name="thresholds")(z)
    return keras.Model(image, {"patch_probs": patch_probs, "z": z, "image_probs": image_probs,
                               "thresholds": threshold_values}, name=name)


def crf_layers(model):
    """The layers stage 2 trains (the PAC-CRF and its feature branch); freeze all others."""
    return [layer for layer in model.layers if layer.name.startswith(CRF_LAYER_PREFIX)]
