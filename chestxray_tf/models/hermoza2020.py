"""The model of Hermoza et al. 2020 (paper 004, Sec. 3.2, Fig. 1; brief hermoza2020.md §3-4, §7).

Classification module: DenseNet-121 taps -> FPN without 3x3 output convs -> x_FPN (Q = 256 at
H/4) -> per class k a two-layer 1x1 head (BN, LeakyReLU(0.1), 256 -> 128 =: f_k; BN, LeakyReLU,
128 -> 1) -> saliency logits x_S [B, H/4, W/4, K] -> LSE-LBA pooling -> image logits y~.
Detection module: RoIAlign of the N = 395 proposals (per class on f_k gated by sigmoid(x_S)) ->
shared conv3x3 64 + ReLU + global max pool -> confidences c_{n,k} and deltas (zero-initialised)
-> refined boxes r_{n,k} -> straight-through Gumbel pick b~_k -> crop of the input -> crop
backbone (ResNet-34) -> per-class heads -> crop logits z~ (+ y~ with `crop_residual`, code).
Inference maps: x_RPN (`ProposalMap`), x_FS = sigmoid(x_S) * x_RPN, both min-max normalised.

Outputs of `build_hermoza2020` (a dict, float32): "image_logits" / "image_probs" [B, K],
"saliency" sigmoid(x_S) [B, m, m, K] (m = S/4), "crop_logits" / "crop_probs" [B, K],
"confidences" [B, N, K], "boxes" refined [B, N, K, 4], "picked_boxes" [B, K, 4] (y1, x1, y2, x2
input pixels), "rpn_map" / "fused_map" [B, m', m', K] in [0, 1] (m' = m, or S with
map_resolution="image").
"""

import math

import keras

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.models.gumbel import GumbelPick
from chestxray_tf.models.hermoza2020_layers import (CropBoxes, MinMaxNormalize, ProposalFeatures,
                                                    ProposalMap, RefineBoxes, SelectBoxes,
                                                    _check_choice)
from chestxray_tf.models.layers import LSEPooling
from chestxray_tf.models.proposals import proposal_boxes

__all__ = ["TAPS", "proposal_boxes", "with_leaky_relu", "fpn_saliency_head",
           "build_classification_module", "build_detection_module", "build_hermoza2020"]

# DenseNet-121 layers feeding the FPN (Keras names of torchvision's transition1-3.relu and the
# final relu; authors' classifier.py), from stride 4 to stride 32.
TAPS = ("pool2_relu", "pool3_relu", "pool4_relu", "relu")
LEAKY_SLOPE = 0.1
LEAKY_SCOPES = ("pretrained", "all")
MAP_RESOLUTIONS = ("saliency", "image")
# PyTorch BatchNorm defaults (momentum 0.1 = Keras 0.9, eps 1e-5) for the heads added on top.
_BN = {"momentum": 0.9, "epsilon": 1e-5}


def _he_normal():
    """He normal, fan-in, not truncated (PyTorch `kaiming_normal_`, the authors' head init)."""
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def with_leaky_relu(model, negative_slope=LEAKY_SLOPE):
    """A copy of the functional `model` (its weights included) whose ReLU activations are
    LeakyReLU(`negative_slope`) of the same names (Sec. 4.2: "we replace all ReLU activations
    by LeakyReLU" [0.1]; applied to the pre-trained DenseNet-121 and ResNet-34, brief erratum 5).
    """
    def is_relu(layer):
        return (isinstance(layer, keras.layers.ReLU) or (
            isinstance(layer, keras.layers.Activation)
            and keras.activations.serialize(layer.activation) in ("relu", {"class_name": "relu"})))

    def clone(layer):
        if is_relu(layer):
            return keras.layers.LeakyReLU(negative_slope=negative_slope, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _per_class_conv(x, classes, fan_in, depth, name, initializer):
    """[B, h, w, K, C] -> [B, h, w, K, depth], an own 1x1 convolution (no bias) per class k
    (EinsumDense: Conv2D(groups=K) is ~26x slower backward on CPU)."""
    return keras.layers.EinsumDense("bhwkc,kcd->bhwkd", (x.shape[1], x.shape[2], classes, depth),
                                    kernel_initializer=initializer, name=name)(x)


def _bn_leaky(x, name):
    x = keras.layers.BatchNormalization(name=f"{name}_bn", **_BN)(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_leaky")(x)


def fpn_saliency_head(taps, *, num_classes=NUM_CLASSES, width=256, class_width=128,
                      name="fpn"):
    """FPN over the DenseNet taps and the per-class saliency head (Sec. 3.2; authors'
    `MultiFPNHead`).

    Lateral 1x1 convs (Q = `width`, bias) on every tap; top-down p_l = lat_l + nearest_up(p_{l+1})
    from the deepest tap; no 3x3 output convs; x_FPN = p at stride 4. Per class k (x_FPN tiled
    K times so each class has its own BN): BN -> LeakyReLU(0.1) -> 1x1 (Q -> class_width, no bias)
    = f_k -> BN -> LeakyReLU(0.1) -> 1x1 (-> 1, no bias) = x_S[k]. He-normal (fan-in) kernels,
    zero biases.

    Args:
        taps: {name: tensor} with the four `TAPS` ([B, S/4, S/4, .], ..., [B, S/32, S/32, .]).
        num_classes: K. width: Q. class_width: channels of f_k. name: layer-name prefix.

    Returns:
        {"x_fpn": [B, m, m, Q], "class_features": [B, m, m, K, class_width],
         "saliency_logits": [B, m, m, K]}, m = S/4.
    """
    missing = [t for t in TAPS if t not in taps]
    if missing:
        raise ValueError(f"taps must contain {TAPS}, missing {missing}")
    laterals = [keras.layers.Conv2D(width, 1, kernel_initializer=_he_normal(),
                                    name=f"{name}_lateral_{tap}")(taps[tap]) for tap in TAPS]
    top = laterals[-1]
    for tap, lateral in zip(TAPS[-2::-1], laterals[-2::-1]):
        if lateral.shape[1] != 2 * top.shape[1] or lateral.shape[2] != 2 * top.shape[2]:
            raise ValueError(f"tap {tap} {lateral.shape[1:3]} must be twice the size of the next "
                             f"deeper tap {top.shape[1:3]}; the image side must be a multiple "
                             "of 32")
        up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_up_{tap}")(top)
        top = keras.layers.Add(name=f"{name}_add_{tap}")([lateral, up])
    x_fpn = top
    size = x_fpn.shape[1]
    tiled = keras.layers.Concatenate(name=f"{name}_tile")([x_fpn] * num_classes)
    x = _bn_leaky(tiled, f"{name}_class1")
    x = keras.layers.Reshape((size, size, num_classes, width), name=f"{name}_split1")(x)
    features = _per_class_conv(x, num_classes, width, class_width, f"{name}_class_conv1",
                               keras.initializers.RandomNormal(stddev=math.sqrt(2 / width)))
    x = keras.layers.Reshape((size, size, num_classes * class_width),
                             name=f"{name}_merge2")(features)
    x = _bn_leaky(x, f"{name}_class2")
    x = keras.layers.Reshape((size, size, num_classes, class_width), name=f"{name}_split2")(x)
    x = _per_class_conv(x, num_classes, class_width, 1, f"{name}_class_conv2",
                        keras.initializers.RandomNormal(stddev=math.sqrt(2 / class_width)))
    logits = keras.layers.Reshape((size, size, num_classes), name=f"{name}_saliency_logits")(x)
    return {"x_fpn": x_fpn, "class_features": features, "saliency_logits": logits}


def build_classification_module(backbone, *, num_classes=NUM_CLASSES, width=256,
                                class_width=128, name="classification"):
    """The classification module as a `keras.Model` named `name`.

    Args:
        backbone: a keras.Model whose layers named `TAPS` give the FPN inputs (DenseNet-121 with
            LeakyReLU(0.1), `chestxray_tf.models.densenet.densenet`, or any stand-in).

    Returns:
        image [B, S, S, 3] -> {"x_fpn", "class_features", "saliency_logits" (see
        `fpn_saliency_head`), "image_logits" [B, K] (LSE-LBA pooling)}.
    """
    image = keras.Input(backbone.input.shape[1:], name="image")
    tap_model = keras.Model(backbone.input, {t: backbone.get_layer(t).output for t in TAPS},
                            name=f"{backbone.name}_taps")
    outputs = fpn_saliency_head(tap_model(image), num_classes=num_classes, width=width,
                                class_width=class_width)
    outputs["image_logits"] = LSEPooling(dtype="float32", name="lse_pool")(
        outputs["saliency_logits"])
    return keras.Model(image, outputs, name=name)


def _activation(negative_slope, name):
    if negative_slope is None:
        return keras.layers.ReLU(name=name)
    return keras.layers.LeakyReLU(negative_slope=negative_slope, name=name)


def _proposal_head(rois, num_classes, filters, negative_slope):
    """Shared head (authors' `HeadDetection`): [B, N, G, 5, 5, C] -> conv3x3 `filters` (bias) ->
    ReLU -> global max pool -> confidences [B, N, K] (Dense, no bias, N(0.01, 0.01)) and deltas
    [B, N, K, 4] (Dense, zero kernel and bias: refined boxes start at the proposals). G = K
    (per-class RoIs, one output each) or 1 (x_FPN RoIs, K outputs)."""
    _, count, groups, size, _, channels = rois.shape
    outputs = num_classes // groups
    x = keras.layers.Reshape((count * groups, size, size, channels), name="det_rois")(rois)
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(
        filters, 3, padding="same", kernel_initializer=_he_normal()), name="det_conv")(x)
    x = keras.layers.TimeDistributed(_activation(negative_slope, "act"), name="det_act")(x)
    x = keras.layers.TimeDistributed(keras.layers.GlobalMaxPooling2D(), name="det_pool")(x)
    scores = keras.layers.Dense(outputs, use_bias=False, name="det_confidence",
                                kernel_initializer=keras.initializers.RandomNormal(0.01, 0.01))(x)
    deltas = keras.layers.Dense(4 * outputs, kernel_initializer="zeros", name="det_deltas")(x)
    confidences = keras.layers.Reshape((count, num_classes), name="confidences")(scores)
    deltas = keras.layers.Reshape((count, num_classes, 4), name="deltas")(deltas)
    return confidences, deltas


def _crop_classifier(crops, crop_backbone, num_classes, hidden, negative_slope, dropout):
    """Crops [B, K, c, c, 3] -> crop logits [B, K]: the crop backbone on every crop, concat(max,
    avg) pooling, then per class k its own head BN -> Dropout -> Dense(hidden) -> ReLU -> BN ->
    Dropout -> Dense(1) (authors' `CropClassifier`; per-class weights via EinsumDense, BN over
    the flattened [K * C] features = one BN per class; PyTorch Linear init U(+-1/sqrt(fan_in)))."""
    x = keras.layers.TimeDistributed(crop_backbone, name="crop_backbone")(crops)
    pooled = keras.layers.Concatenate(name="crop_concat_pool")([
        keras.layers.TimeDistributed(keras.layers.GlobalMaxPooling2D(), name="crop_max")(x),
        keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D(), name="crop_avg")(x)])
    x = pooled
    for i, depth in enumerate((hidden, 1), start=1):
        fan_in = x.shape[-1]
        x = keras.layers.Reshape((num_classes * fan_in,), name=f"crop_head{i}_flat")(x)
        x = keras.layers.BatchNormalization(name=f"crop_head{i}_bn", **_BN)(x)
        x = keras.layers.Dropout(dropout, name=f"crop_head{i}_dropout")(x)
        x = keras.layers.Reshape((num_classes, fan_in), name=f"crop_head{i}_split")(x)
        bound = 1 / math.sqrt(fan_in)
        init = keras.initializers.RandomUniform(-bound, bound)
        x = keras.layers.EinsumDense("bkc,kcd->bkd", (num_classes, depth), bias_axes="kd",
                                     kernel_initializer=init, bias_initializer=init,
                                     name=f"crop_head{i}_dense")(x)
        if depth != 1:
            x = _activation(negative_slope, f"crop_head{i}_act")(x)
    return keras.layers.Reshape((num_classes,), name="crop_head_logits")(x)


def build_detection_module(*, image_size, num_classes, class_features_shape, x_fpn_shape,
                           crop_backbone, roi_features="per_class", filters=64, crop_size=64,
                           crop_hidden=512, dropout=0.5, negative_slope=None, tau=1.0, seed=None,
                           sampler="crop_and_resize", crop="bilinear", name="detection"):
    """The detection module as a `keras.Model` named `name` (Sec. 3.2, Fig. 1 b).

    Inputs {"image" [B, S, S, 3], "class_features" [B, m, m, K, D], "saliency_logits"
    [B, m, m, K], "x_fpn" [B, m, m, Q]} -> {"confidences" [B, N, K], "boxes" [B, N, K, 4],
    "picked_boxes" [B, K, 4], "crop_logits" [B, K]} (crop logits of the crop classifier alone).
    """
    size = class_features_shape[0]
    inputs = {"image": keras.Input((image_size, image_size, 3), name="image"),
              "class_features": keras.Input(class_features_shape, name="class_features"),
              "saliency_logits": keras.Input((size, size, num_classes), name="saliency_logits"),
              "x_fpn": keras.Input(x_fpn_shape, name="x_fpn")}
    roi_layer = ProposalFeatures(image_size, roi_features, sampler=sampler,
                                 name="proposal_features")
    if roi_features == "x_fpn":
        rois = roi_layer(inputs["x_fpn"])
    else:
        rois = roi_layer([inputs["class_features"], inputs["saliency_logits"]])
    confidences, deltas = _proposal_head(rois, num_classes, filters, negative_slope)
    boxes = RefineBoxes(image_size, name="boxes")(deltas)
    selection = GumbelPick(tau=tau, seed=seed, name="gumbel_pick")(confidences)
    picked = SelectBoxes(name="picked_boxes")([selection, boxes])
    crops = CropBoxes(crop_size, sampler, crop, name="crops")([inputs["image"], picked])
    crop_logits = _crop_classifier(crops, crop_backbone, num_classes, crop_hidden,
                                   negative_slope, dropout)
    return keras.Model(inputs, {"confidences": confidences, "boxes": boxes,
                                "picked_boxes": picked, "crop_logits": crop_logits}, name=name)


def build_hermoza2020(*, image_size=512, num_classes=NUM_CLASSES, backbone, crop_backbone,
                      width=256, class_width=128, roi_features="per_class", det_filters=64,
                      crop_size=64, crop_hidden=512, dropout=0.5, leaky_scope="pretrained",
                      crop_residual=False, map_resolution="saliency", confidence="raw", tau=1.0,
                      seed=None, sampler="crop_and_resize", crop="bilinear", name="hermoza2020"):
    """Builds the Hermoza et al. 2020 model (outputs: see the module docstring).

    Args:
        image_size: S, a multiple of 32; proposals scale with S / 512 (N = 395 at any S).
        num_classes: K.
        backbone: keras.Model over [S, S, 3] with the `TAPS` layers (DenseNet-121, LeakyReLU).
        crop_backbone: keras.Model over [crop_size, crop_size, 3] -> [h', w', C] (ResNet-34).
        width, class_width: Q = 256 and the 128 channels of f_k.
        roi_features: "per_class" (code, default) or "x_fpn" (the paper's sentence; ~7x cheaper).
        det_filters: channels of the detection conv (64). crop_size: side of the crops (64).
        crop_hidden, dropout: the crop heads' hidden width (512) and dropout (0.5).
        leaky_scope: "pretrained" (LeakyReLU(0.1) only in the two pre-trained networks and the
            FPN head; ReLU in the detection conv and crop heads, code) or "all".
        crop_residual: z~ = crop logit + y~ (authors' code) instead of the crop logit (paper).
        map_resolution: x_RPN and x_FS at the saliency map's S/4 ("saliency", paper) or at S
            ("image", code: sigmoid(x_S) bilinearly upsampled).
        confidence: weights of x_RPN, "raw" c (code) or "softmax" over the proposals.
        tau: initial Gumbel temperature (the non-trainable weight of layer "gumbel_pick" inside
            the sub-model "detection"). seed: Gumbel noise seed.
        sampler: bilinear sampling of RoIAlign and the crops, "crop_and_resize" (CPU / GPU) or
            "gather" (the same values, XLA-compatible: `jit_compile`, TPU).
        crop: "bilinear" (crop_and_resize of the picked box) or "glimpse" (the authors' Gaussian
            filterbank crop, sigma^2 = 1 px^2).
    """
    _check_choice("leaky_scope", leaky_scope, LEAKY_SCOPES)
    _check_choice("map_resolution", map_resolution, MAP_RESOLUTIONS)
    _check_choice("roi_features", roi_features, ("per_class", "x_fpn"))
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size!r}")
    if tuple(backbone.input.shape[1:]) != (image_size, image_size, 3):
        raise ValueError(f"backbone input {backbone.input.shape} does not match image_size "
                         f"{image_size}")
    classification = build_classification_module(backbone, num_classes=num_classes,
                                                 width=width, class_width=class_width)
    image = keras.Input((image_size, image_size, 3), name="image")
    cls = classification(image)
    detection = build_detection_module(
        image_size=image_size, num_classes=num_classes,
        class_features_shape=tuple(cls["class_features"].shape[1:]),
        x_fpn_shape=tuple(cls["x_fpn"].shape[1:]), crop_backbone=crop_backbone,
        roi_features=roi_features, filters=det_filters, crop_size=crop_size,
        crop_hidden=crop_hidden, dropout=dropout,
        negative_slope=LEAKY_SLOPE if leaky_scope == "all" else None, tau=tau, seed=seed,
        sampler=sampler, crop=crop)
    det = detection({"image": image, "class_features": cls["class_features"],
                     "saliency_logits": cls["saliency_logits"], "x_fpn": cls["x_fpn"]})
    crop_logits = det["crop_logits"]
    if crop_residual:
        crop_logits = keras.layers.Add(name="crop_residual")([crop_logits, cls["image_logits"]])
    saliency = keras.layers.Activation("sigmoid", dtype="float32", name="saliency")(
        cls["saliency_logits"])
    map_size = saliency.shape[1] if map_resolution == "saliency" else image_size
    rpn = ProposalMap(image_size, map_size, confidence, name="rpn_raw")(
        [det["confidences"], det["boxes"]])
    fused_saliency = saliency
    if map_size != saliency.shape[1]:
        fused_saliency = keras.layers.UpSampling2D(map_size // saliency.shape[1],
                                                   interpolation="bilinear",
                                                   name="saliency_up")(saliency)
    fused = keras.layers.Multiply(name="fused_raw")([fused_saliency, rpn])
    outputs = {
        "image_logits": keras.layers.Identity(dtype="float32", name="image_logits")(
            cls["image_logits"]),
        "image_probs": keras.layers.Activation("sigmoid", dtype="float32", name="image_probs")(
            cls["image_logits"]),
        "saliency": saliency,
        "crop_logits": keras.layers.Identity(dtype="float32", name="crop_logits")(crop_logits),
        "crop_probs": keras.layers.Activation("sigmoid", dtype="float32", name="crop_probs")(
            crop_logits),
        "confidences": keras.layers.Identity(dtype="float32", name="confidences")(
            det["confidences"]),
        "boxes": keras.layers.Identity(dtype="float32", name="boxes")(det["boxes"]),
        "picked_boxes": keras.layers.Identity(dtype="float32", name="picked_boxes")(
            det["picked_boxes"]),
        "rpn_map": MinMaxNormalize(dtype="float32", name="rpn_map")(rpn),
        "fused_map": MinMaxNormalize(dtype="float32", name="fused_map")(fused),
    }
    return keras.Model(image, outputs, name=name)
