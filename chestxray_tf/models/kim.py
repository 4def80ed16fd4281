"""Building blocks of Kim, Jung, Lee, *Weakly Supervised Thoracic Disease Localization via
Disease Masks* (paper 002; brief `briefs/kim.md`).

Alignment module (Sec. 3.2, brief §3.1-3.3):
* `affine_matrix`: the five parameters (s_x, s_y, t_x, t_y, theta) -> the 2 x 3 matrix of Eq. 6.
* `AffineParams`: the aligner's regressor output -> parameters, unbounded (default) or bounded
  (s = 1 + 0.5 tanh, t = 0.5 tanh, theta = (pi/6) tanh; flag `aligner.bounded`).
* `SpatialTransformer`: warps an image by the parameters (`sampler.affine_warp`, PyTorch
  `affine_grid` + `grid_sample` semantics, fill -1 = black in [-1, 1]).
* `build_aligner`: ResNet-18 -> GAP -> [Dense(hidden) -> ReLU] -> Dense(5), zero kernel and a
  bias giving the identity at initialisation -> {"params", "aligned"}.
* `grid_smooth`: B(G(.)) of Eq. 6: average pooling S/32 x S/32 (16 at 512 px), bilinear back.
* `boxes_to_aligned` / `boxes_to_original`: a box through the alignment and back.

Attention network (Sec. 3.1, Eqs. 1, 2, 4, 5, brief §3.4-3.5):
* `AttentionCam`: the CAM head with disease-mask attention, Ŝ_c = (1 + psi_c) ⊙ S_c and
  logit_c = mean_ij Ŝ_c + b_c, psi = 0 giving the plain CAM classifier.
* `OriginalFrameMaps`: Ŝ -> R x R maps in [0, 1] in the original image's frame (inverse warp).
* `build_classifier`: [frozen aligner ->] ResNet-50 -> AttentionCam, the S0 / S2 / S4 model.
"""

import math

import keras
import numpy as np
from keras import ops

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.models.layers import Float32Layer
from chestxray_tf.models.resnet import RESNET18, RESNET50, resnet_v1
from chestxray_tf.models.sampler import affine_warp, invert_affine, transform_boxes

NUM_PARAMS = 5  # (s_x, s_y, t_x, t_y, theta), in this order everywhere
IDENTITY_PARAMS = (1.0, 1.0, 0.0, 0.0, 0.0)
DEFAULT_FILL = -1.0  # black in the paper's [-1, 1] scaling (brief §3.2 [decision])
ATTENTION_CHOICES = ("class", "union")


def affine_matrix(params):
    """Eq. 6: [B, 5] (s_x, s_y, t_x, t_y, theta) -> [B, 2, 3]
    [[s_x cos theta, -s_y sin theta, t_x], [s_x sin theta, s_y cos theta, t_y]].

    theta in radians; t in normalised units (t = 1 is half the image). The matrix maps output
    points to input points (`sampler` module docstring).
    """
    params = ops.convert_to_tensor(params)
    if len(params.shape) != 2 or params.shape[-1] != NUM_PARAMS:
        raise ValueError(f"affine_matrix params must be [B, 5] (s_x, s_y, t_x, t_y, theta), "
                         f"got shape {tuple(params.shape)}")
    s_x, s_y, t_x, t_y, theta = (params[:, i] for i in range(NUM_PARAMS))
    cos, sin = ops.cos(theta), ops.sin(theta)
    return ops.stack([ops.stack([s_x * cos, -s_y * sin, t_x], axis=-1),
                      ops.stack([s_x * sin, s_y * cos, t_y], axis=-1)], axis=1)


@keras.saving.register_keras_serializable(package="chestxray_tf")
class AffineParams(keras.layers.Layer):
    """The regressor's 5 outputs -> (s_x, s_y, t_x, t_y, theta) (brief §3.1, erratum 4).

    Unbounded (default): the outputs are the parameters (the Dense bias (1, 1, 0, 0, 0) gives
    the identity). Bounded: s = 1 + 0.5 tanh(r), t = 0.5 tanh(r), theta = (pi / 6) tanh(r)
    (a zero bias gives the identity).
    """

    def __init__(self, bounded=False, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(bounded, bool):
            raise ValueError(f"AffineParams bounded must be True or False, got {bounded!r}")
        self.bounded = bounded

    def call(self, raw):
        if not self.bounded:
            return raw
        squashed = ops.tanh(raw)
        scale = ops.convert_to_tensor([0.5, 0.5, 0.5, 0.5, math.pi / 6], dtype=raw.dtype)
        offset = ops.convert_to_tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=raw.dtype)
        return offset + scale * squashed

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bounded": self.bounded}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class SpatialTransformer(Float32Layer):
    """[images [B, H, W, C], params [B, 5]] -> images warped by `affine_matrix(params)`,
    [B, H, W, C] float32 (Eq. 6 without B(G(.)); brief §3.2). Outside the input: `fill_value`."""

    def __init__(self, fill_value=DEFAULT_FILL, **kwargs):
        super().__init__(**kwargs)
        if isinstance(fill_value, (bool, str)) or not np.isscalar(fill_value) or \
                not math.isfinite(fill_value):
            raise ValueError(f"SpatialTransformer fill_value must be a finite number, got "
                             f"{fill_value!r}")
        self.fill_value = float(fill_value)

    def call(self, inputs):
        images, params = inputs
        matrices = affine_matrix(ops.cast(params, "float32"))
        return affine_warp(ops.cast(images, "float32"), matrices, fill_value=self.fill_value)

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "fill_value": self.fill_value}


def build_aligner(image_size=512, *, backbone=RESNET18, weights=None, bounded=False, hidden=0,
                  fill_value=DEFAULT_FILL, name="kim_aligner"):
    """The alignment module (Sec. 3.2): image I [B, S, S, 3] -> {"params": [B, 5],
    "aligned": W_A(I) [B, S, S, 3]}, both float32.

    Args:
        image_size: S.
        backbone: a `resnet_v1` configuration (RESNET18 in the paper; RESNET18_TINY in tests).
        weights: None or a local weights file of that backbone (Keras has no ImageNet ResNet-18).
        bounded: `AffineParams(bounded=True)` instead of the unbounded parameters.
        hidden: 0 (GAP -> Dense(5), brief §3.1) or the width of a ReLU layer before it
            (erratum 13: the independent STN reference uses 256).
        fill_value: the value of the aligned image outside the original.
        name: model name.

    The last Dense has a zero kernel and the bias giving the identity transform, so the
    aligner starts as the identity whatever the backbone's weights.
    """
    if int(hidden) != hidden or hidden < 0:
        raise ValueError(f"hidden must be 0 or a positive integer, got {hidden!r}")
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = resnet_v1((image_size, image_size, 3), **backbone, weights=weights,
                         name=f"{name}_backbone")(image)
    x = keras.layers.GlobalAveragePooling2D(name="aligner_pool")(features)
    if hidden:
        x = keras.layers.Dense(int(hidden), activation="relu", name="aligner_hidden")(x)
    bias = np.zeros(NUM_PARAMS) if bounded else np.asarray(IDENTITY_PARAMS)
    raw = keras.layers.Dense(NUM_PARAMS, kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant(bias),
                             dtype="float32", name="aligner_regressor")(x)
    params = AffineParams(bounded=bounded, dtype="float32", name="params")(raw)
    aligned = SpatialTransformer(fill_value=fill_value, name="aligned")([image, params])
    return keras.Model(image, {"params": params, "aligned": aligned}, name=name)


def grid_smooth(images, pool_size):
    """B(G(x)) of Eq. 6: average pooling `pool_size` x `pool_size` with stride `pool_size`
    (G; 16 at 512 px), then bilinear resizing back to the input size (B; half-pixel centres)."""
    images = ops.convert_to_tensor(images)
    height, width = images.shape[1:3]
    if height % pool_size or width % pool_size:
        raise ValueError(f"grid_smooth pool_size {pool_size} must divide the image size "
                         f"{height}x{width}")
    pooled = ops.average_pool(images, pool_size, strides=pool_size, padding="valid")
    return ops.image.resize(pooled, (height, width), interpolation="bilinear")


def boxes_to_aligned(boxes_yxyx, params):
    """Boxes of the original images -> the enclosing boxes in the aligned frame (NumPy).

    Args:
        boxes_yxyx: [N, 4] normalised (ymin, xmin, ymax, xmax).
        params: [N, 5] aligner parameters of the boxes' images.
    """
    return transform_boxes(boxes_yxyx, invert_affine(affine_matrix(
        np.asarray(params, dtype=np.float64))))


def boxes_to_original(boxes_yxyx, params):
    """Boxes of the aligned frame (e.g. predicted from a CAM) -> the enclosing boxes in the
    original images (NumPy; the inverse of `boxes_to_aligned` for boxes that stay boxes)."""
    return transform_boxes(boxes_yxyx, affine_matrix(np.asarray(params, dtype=np.float64)))


@keras.saving.register_keras_serializable(package="chestxray_tf")
class AttentionCam(Float32Layer):
    """CAM head with disease-mask attention (Eqs. 1, 2, 4, 5; brief §2.10-2.11, §3.4).

    features f [B, p, p, C'] -> (Ŝ [B, p, p, K], logits [B, K]), float32, with
        S_c = sum_k w_k^c f_k                 (Eq. 1, a 1x1 convolution without bias)
        Ŝ_c = sum_k w_k^c (psi_c f_k + f_k) = (1 + psi_c) ⊙ S_c     (Eqs. 4-5)
        logit_c = mean_ij Ŝ_c^{ij} + b_c,    P_c = sigmoid(logit_c)   (Eq. 2 read as GAP)
    Computing (1 + psi_c) ⊙ S_c instead of f'_c per class is exact (Eq. 5 is linear in f') and
    avoids a [B, p, p, K, C'] tensor. The masks psi [p, p, K] are a non-trainable weight, zero
    at construction (no attention: the S0 / S2 classifier) and set by `set_masks` for S4.

    attention: "class" (psi_c per class, the default [decision]) or "union" (one mask
    max_c psi_c for every class, the literal class-agnostic reading of Eq. 4; erratum 6).
    """

    def __init__(self, num_classes, attention="class", **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"AttentionCam num_classes must be a positive integer, got "
                             f"{num_classes!r}")
        if attention not in ATTENTION_CHOICES:
            raise ValueError(f"AttentionCam attention must be one of {ATTENTION_CHOICES}, got "
                             f"{attention!r}")
        self.num_classes = int(num_classes)
        self.attention = attention

    def build(self, input_shape):
        _, height, width, channels = input_shape
        if None in (height, width, channels):
            raise ValueError(f"AttentionCam needs static feature sizes, got {input_shape}")
        self.kernel = self.add_weight(shape=(channels, self.num_classes), name="kernel",
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(shape=(self.num_classes,), name="bias", initializer="zeros")
        self.masks = self.add_weight(shape=(height, width, self.num_classes), name="masks",
                                     initializer="zeros", trainable=False)

    def set_masks(self, masks):
        """Sets psi [p, p, K] (finite, >= 0)."""
        masks = np.asarray(masks, dtype=np.float32)
        if masks.shape != tuple(self.masks.shape):
            raise ValueError(f"masks must have shape {tuple(self.masks.shape)}, got "
                             f"{masks.shape}")
        if not np.all(np.isfinite(masks)) or masks.min() < 0:
            raise ValueError("masks must be finite and >= 0")
        self.masks.assign(masks)

    def call(self, features):
        features = ops.cast(features, "float32")
        cam = ops.einsum("bhwk,kc->bhwc", features, self.kernel)
        masks = self.masks
        if self.attention == "union":
            masks = ops.max(masks, axis=-1, keepdims=True)
        attended = (1.0 + masks) * cam
        return attended, ops.mean(attended, axis=(1, 2)) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[:3] + (self.num_classes,), (input_shape[0], self.num_classes))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "attention": self.attention}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class OriginalFrameMaps(Float32Layer):
    """Localization maps for the evaluation (brief §2.5, §3.5): cams [B, p, p, K] of the aligned
    frame (and the aligner's params [B, 5]) -> [B, R, R, K] float32 in [0, 1].

    Bilinear resize to R x R; with params, warp by A^-1 into the original frame (fill = the
    map's minimum, done as warping map - min with fill 0); min-max normalise per (image, class)
    (a constant map gives zeros). Called on cams alone, no warp (the S0 model).
    """

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        if int(size) != size or size < 1:
            raise ValueError(f"OriginalFrameMaps size must be a positive integer, got {size!r}")
        self.size = int(size)

    def call(self, inputs):
        cams, params = inputs if isinstance(inputs, (list, tuple)) else (inputs, None)
        maps = ops.image.resize(ops.cast(cams, "float32"), (self.size, self.size),
                                interpolation="bilinear")
        maps = maps - ops.min(maps, axis=(1, 2), keepdims=True)
        if params is not None:
            inverse = invert_affine(affine_matrix(ops.cast(params, "float32")))
            maps = affine_warp(maps, inverse, fill_value=0.0)
        maps = maps - ops.min(maps, axis=(1, 2), keepdims=True)
        span = ops.max(maps, axis=(1, 2), keepdims=True)
        return ops.where(span > 0, maps / ops.where(span > 0, span, 1.0), 0.0)

    def compute_output_shape(self, input_shape):
        cams_shape = input_shape[0] if isinstance(input_shape, (list, tuple)) and \
            isinstance(input_shape[0], (list, tuple)) else input_shape
        return (cams_shape[0], self.size, self.size, cams_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def build_classifier(image_size=512, *, backbone=RESNET50, num_classes=NUM_CLASSES,
                     weights=None, aligner=None, attention="class", cam_size=128,
                     name="kim_classifier"):
    """Kim et al.'s classifier (brief §3.4): image I [B, S, S, 3] -> {"image_probs" [B, K],
    "cam_scores" Ŝ [B, p, p, K] (aligned frame, no bias: S3's input), "cam" [B, R, R, K]
    (`OriginalFrameMaps`, R = cam_size)}, all float32.

    Args:
        image_size: S.
        backbone: a `resnet_v1` configuration (RESNET50; RESNET50_TINY in tests).
        weights: None, "imagenet" (RESNET50 only) or a local weights file of the backbone.
        aligner: None (S0: the original images) or a `build_aligner` model, frozen and run in
            inference mode inside this model (S2, S4: the classifier sees the sharp W_A(I)).
        attention: `AttentionCam` attention ("class" or "union"); masks zero until set (S4).
        cam_size: R.
        name: model name.
    """
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    x, params = image, None
    if aligner is not None:
        aligner.trainable = False
        aligned = aligner(image, training=False)
        x, params = aligned["aligned"], aligned["params"]
    features = resnet_v1((image_size, image_size, 3), **backbone, weights=weights,
                         name=f"{name}_backbone")(x)
    cams, logits = AttentionCam(num_classes, attention=attention, name="cam_head")(features)
    probs = keras.layers.Activation("sigmoid", dtype="float32", name="image_probs")(logits)
    maps = OriginalFrameMaps(cam_size, name="cam")(cams if params is None else [cams, params])
    return keras.Model(image, {"image_probs": probs, "cam_scores": cams, "cam": maps},
                       name=name)


@keras.saving.register_keras_serializable(package="chestxray_tf")
class StageSwitch(Float32Layer):
    """The `kim` task's main outputs: [base outputs, aligned outputs] -> the base classifier's
    (S0) while the non-trainable scalar `aligned` is 0, the aligned classifier's (S2, S4) once
    it is 1. The training stages set it (S2's hook), so a checkpoint of any stage, its export
    and predict serve that stage's model; each argument is a list of tensors of equal shapes.
    Float32 under any policy: it selects among the classifiers' float32 outputs.
    """

    def build(self, input_shape):
        self.aligned = self.add_weight(shape=(), name="aligned", initializer="zeros",
                                       trainable=False)

    def call(self, inputs):
        base, aligned = inputs
        use_aligned = self.aligned > 0.5
        return [ops.where(use_aligned, a, b) for b, a in zip(base, aligned)]

    def compute_output_shape(self, input_shape):
        return list(input_shape[0])


@keras.saving.register_keras_serializable(package="chestxray_tf")
class AnchorImage(Float32Layer):
    """Holds the anchor image A [S, S, 3] (Sec. 3.2) as a non-trainable weight, zero until the
    anchor stage writes it, so it is checkpointed and exported with the model; the call passes
    its input through unchanged (the layer sits on the aligner's parameters, float32 under any
    policy: affine parameters and A are geometry and pixels)."""

    def __init__(self, image_size, **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)

    def build(self, input_shape):
        self.image = self.add_weight(shape=(self.image_size, self.image_size, 3), name="image",
                                     initializer="zeros", trainable=False)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size}


def build_kim(image_size=512, *, backbone=RESNET50, aligner_backbone=RESNET18,
              num_classes=NUM_CLASSES, weights=None, aligner_weights=None, bounded=False,
              hidden=0, fill_value=DEFAULT_FILL, attention="class", cam_size=128, name="kim"):
    """The whole of Kim et al.'s pipeline as one model (the `kim` task trains it in stages):
    image I [B, S, S, 3] ->

    * "base_probs", "base_cam_scores": the base classifier on I (`build_classifier`, layer
      "kim_base"; S0, and S1's perceptual network);
    * "params", "aligned": the alignment module (`build_aligner`, layer "kim_aligner") and W_A(I);
    * "aligned_probs", "aligned_cam_scores": the classifier on W_A(I) (layer "kim_classifier";
      S2, S4; its `cam_head` holds the disease masks);
    * "image_probs", "cam_scores", "cam": the main outputs, the base classifier's or the aligned
      one's (`StageSwitch`); "cam" [B, R, R, K] in [0, 1] is in the ORIGINAL image's frame
      (`OriginalFrameMaps`: the aligned classifier's CAM warped back by A^-1).

    Every path runs at every call (the switch selects), so S0 training also runs the aligned
    path forward (at 512 px about 60 GFLOPs more than S0's 122 per image) and inference costs
    the three networks (about 100 GFLOPs instead of 60 for aligner + classifier).
    Args as `build_classifier` / `build_aligner` (weights: the two ResNet-50s'; aligner_weights:
    the ResNet-18's).
    """
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    classifier_args = dict(image_size=image_size, backbone=backbone, num_classes=num_classes,
                           weights=weights, attention=attention, cam_size=cam_size)
    base = build_classifier(**classifier_args, name="kim_base")(image)
    aligner = build_aligner(image_size, backbone=aligner_backbone, weights=aligner_weights,
                            bounded=bounded, hidden=hidden, fill_value=fill_value,
                            name="kim_aligner")(image)
    params = AnchorImage(image_size, name="anchor")(aligner["params"])
    classifier = build_classifier(**classifier_args, name="kim_classifier")
    aligned = classifier(aligner["aligned"])
    aligned_cam = OriginalFrameMaps(cam_size, name="aligned_cam")(
        [aligned["cam_scores"], params])
    probs, cam_scores, cam = StageSwitch(name="stage_switch")(
        [[base["image_probs"], base["cam_scores"], base["cam"]],
         [aligned["image_probs"], aligned["cam_scores"], aligned_cam]])
    return keras.Model(image, {
        "image_probs": probs, "cam_scores": cam_scores, "cam": cam,
        "base_probs": base["image_probs"], "base_cam_scores": base["cam_scores"],
        "params": params, "aligned": aligner["aligned"],
        "aligned_probs": aligned["image_probs"], "aligned_cam_scores": aligned["cam_scores"]},
        name=name)
