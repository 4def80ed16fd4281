"""Keras layers of the detection module and inference maps of Hermoza et al. 2020 (Sec. 3.2).

* `ProposalFeatures`: RoIAlign (5 x 5, sampling ratio 2) of the N fixed proposals, per class on
  the class features f_k gated by sigmoid(RoIAlign(x_S[k])) (the authors' code; the gate is
  detached), or once on x_FPN (`roi_features="x_fpn"`, the paper's sentence).
* `RefineBoxes`: r_{n,k} = decode(deltas, proposal n) (Faster R-CNN box coding, clipped).
* `SelectBoxes`: b~_k = sum_n c~_{n,k} r_{n,k} for the one-hot Gumbel selection c~.
* `CropBoxes`: the differentiable crop x~_k of the input at b~_k.
* `ProposalMap`: x_RPN = sum_n c_{n,k} 1[omega in r_{n,k}] (inference, brief D-res / D-conf).
* `MinMaxNormalize`: per (image, class) (x - min) / (max - min) (0 where the map is flat).

All compute in float32 under a mixed dtype policy (`Float32Layer`): box coordinates are in
pixels (up to S = 512, where float16's step is 0.25-0.5 px), the Gumbel selection multiplies
them, and the maps are the model's outputs.
"""

import keras
import tensorflow as tf

from chestxray_tf.models import detection
from chestxray_tf.models.gumbel import select
from chestxray_tf.models.layers import Float32Layer
from chestxray_tf.models.proposals import proposal_boxes

ROI_FEATURES = ("per_class", "x_fpn")
CROPS = ("bilinear", "glimpse")
CONFIDENCE_WEIGHTS = ("raw", "softmax")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


@keras.saving.register_keras_serializable(package="chestxray_tf")
class ProposalFeatures(Float32Layer):
    """RoI features of the N proposals of `proposal_boxes(image_size)`.

    "per_class": inputs (class_features [B, h, w, K, D], saliency_logits [B, h, w, K]) ->
    [B, N, K, 5, 5, D] = RoIAlign(f_k) * sigmoid(RoIAlign(x_S[k])), the gate without gradient
    when `detach_gate` (the code's detached hook). "x_fpn": input x_FPN [B, h, w, Q] ->
    [B, N, 1, 5, 5, Q].
    """

    def __init__(self, image_size, roi_features="per_class", output_size=5, sampling_ratio=2,
                 detach_gate=True, sampler="crop_and_resize", **kwargs):
        super().__init__(**kwargs)
        _check_choice("roi_features", roi_features, ROI_FEATURES)
        _check_choice("sampler", sampler, detection.SAMPLERS)
        self.sampler = sampler
        self.image_size = int(image_size)
        self.roi_features = roi_features
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.detach_gate = bool(detach_gate)

    def _align(self, features):
        return detection.roi_align(features, proposal_boxes(self.image_size),
                                   image_size=self.image_size, output_size=self.output_size,
                                   sampling_ratio=self.sampling_ratio, sampler=self.sampler)

    def call(self, inputs):
        if self.roi_features == "x_fpn":
            return self._align(inputs)[:, :, None]
        features, saliency = inputs
        _, height, width, classes, depth = features.shape
        flat = tf.reshape(tf.cast(features, tf.float32), [-1, height, width, classes * depth])
        rois = self._align(tf.concat([flat, tf.cast(saliency, tf.float32)], axis=-1))
        size = self.output_size
        feats = tf.reshape(rois[..., :classes * depth], [-1, rois.shape[1], size, size, classes,
                                                         depth])
        gate = rois[..., classes * depth:]
        if self.detach_gate:
            gate = tf.stop_gradient(gate)
        gated = feats * tf.sigmoid(gate)[..., None]
        return tf.transpose(gated, [0, 1, 4, 2, 3, 5])

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "roi_features": self.roi_features, "output_size": self.output_size,
                "sampling_ratio": self.sampling_ratio, "detach_gate": self.detach_gate,
                "sampler": self.sampler}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class RefineBoxes(Float32Layer):
    """Deltas [B, N, K, 4] (d_y, d_x, d_h, d_w) -> refined boxes r_{n,k} [B, N, K, 4]
    (y1, x1, y2, x2) of the proposals of `proposal_boxes(image_size)`."""

    def __init__(self, image_size, **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)

    def call(self, deltas):
        anchors = proposal_boxes(self.image_size)[None, :, None, :]
        return detection.decode_boxes(deltas, anchors, self.image_size)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class SelectBoxes(Float32Layer):
    """(selection [B, N, K], boxes [B, N, K, 4]) -> b~ [B, K, 4] (`gumbel.select`)."""

    def call(self, inputs):
        weights, boxes = inputs
        return select(weights, boxes)


@keras.saving.register_keras_serializable(package="chestxray_tf")
class CropBoxes(Float32Layer):
    """(image [B, S, S, C], boxes [B, K, 4]) -> [B, K, crop, crop, C]: "bilinear"
    (`detection.crop_boxes`) or "glimpse" (`detection.glimpse_boxes`, the authors' code)."""

    def __init__(self, crop_size, sampler="crop_and_resize", crop="bilinear", **kwargs):
        super().__init__(**kwargs)
        _check_choice("sampler", sampler, detection.SAMPLERS)
        _check_choice("crop", crop, CROPS)
        self.crop_size = int(crop_size)
        self.sampler = sampler
        self.crop = crop

    def call(self, inputs):
        images, boxes = inputs
        if self.crop == "glimpse":
            return detection.glimpse_boxes(images, boxes, self.crop_size)
        return detection.crop_boxes(images, boxes, self.crop_size, self.sampler)

    def get_config(self):
        return {**super().get_config(), "crop_size": self.crop_size, "sampler": self.sampler,
                "crop": self.crop}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class ProposalMap(Float32Layer):
    """x_RPN (Sec. 3.2 inference): (confidences [B, N, K], refined boxes [B, N, K, 4]) ->
    [B, m, m, K], the sum over the proposals of their weight on the cells of their rounded box
    (`detection.rasterize_boxes`). Weights "raw" = c_{n,k} (the authors' code; the 1/N of an
    average does not change a min-max normalised map) or "softmax" over n."""

    def __init__(self, image_size, map_size, confidence="raw", **kwargs):
        super().__init__(**kwargs)
        _check_choice("confidence", confidence, CONFIDENCE_WEIGHTS)
        self.image_size = int(image_size)
        self.map_size = int(map_size)
        self.confidence = confidence

    def call(self, inputs):
        confidences, boxes = inputs
        weights = tf.cast(confidences, tf.float32)
        if self.confidence == "softmax":
            weights = tf.nn.softmax(weights, axis=1)
        return detection.rasterize_boxes(boxes, weights, self.image_size, self.map_size)

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size,
                "map_size": self.map_size, "confidence": self.confidence}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class MinMaxNormalize(Float32Layer):
    """[B, h, w, K] -> (x - min) / (max - min) per image and class, in [0, 1]; a flat map
    gives 0."""

    def call(self, maps):
        maps = tf.cast(maps, tf.float32)
        low = tf.reduce_min(maps, axis=[1, 2], keepdims=True)
        spread = tf.reduce_max(maps, axis=[1, 2], keepdims=True) - low
        return tf.math.divide_no_nan(maps - low, spread)
