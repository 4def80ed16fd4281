"""The model of Sedai et al. 2018 (paper 003, Sec. 2; brief shared/briefs/sedai2018.md).

C-CNN (Sec. 2.1): the feature maps F_b at the ends of dense blocks 2, 3, 4 of a DenseNet-121
(taps `pool3_relu`, `pool4_relu`, `relu`: 32^2 x 512, 16^2 x 1024, 8^2 x 1024 at 256 px; D-4,
D-5) are each globally average-pooled and fed to their own fully connected layer, giving the
block logits l_b^c; Eq. 1: p_c = sigmoid(sum_b w_b^c l_b^c), with layer relevance weights w
initialised to 1/B and constrained to the probability simplex per class (Sec. 2.2; D-7: exact
Euclidean projection after every optimiser step, `Simplex`; option softmax).

A-CNN (Sec. 2.3): Eq. 2, the CAM of each block with its FC kernel (no bias), S_b^c =
sum_j V_j^c(b) F_j^b; Eq. 3, S_c = sum_b w_b^c R(S_b^c) with R a bilinear resize to the input
size (D-3); then min-max per (image, class) to [0, 1] (D-6).

Outputs (a dict, read by key everywhere), all float32:
* "image_probs" [N, K]: p_c (Eq. 1).
* "logits" [N, K]: z_c = sum_b w_b^c l_b^c (the loss takes these).
* "block_logits" [N, B, K]: l_b^c.
* "attention" [N, S, S, K]: the normalised multiscale attention map (Eq. 3 + D-6).
* "deepest_attention" [N, S, S, K]: the last tap's CAM alone, R(S_B^c) min-max normalised
  (the DN-CAM reading of the same model, for the multiscale-vs-deepest comparison).
The relevance weights are `model.get_layer("relevance").relevance_weights()` [B, K].
"""

import keras
from keras import ops

from chestxray_tf.labels import NUM_CLASSES
from chestxray_tf.models.cam import BilinearResize, GapClassifier, MinMaxNormalization
from chestxray_tf.models.densenet import build_densenet, feature_taps

# Ends of dense blocks 2, 3, 4 after their BN-ReLU (brief D-5).
SEDAI_TAPS = ("pool3_relu", "pool4_relu", "relu")
RELEVANCE_CHOICES = ("projected", "softmax")


@keras.saving.register_keras_serializable(package="chestxray_tf")
class Simplex(keras.constraints.Constraint):
    """Euclidean projection of every column w[:, c] onto {w >= 0, sum_b w_b = 1}.

    Duchi et al. 2008, Fig. 1 (sort-based, exact): u = w sorted in decreasing order,
    rho = max {j : u_j - (sum_{r<=j} u_r - 1) / j > 0}, theta = (sum_{r<=rho} u_r - 1) / rho,
    projection = max(w - theta, 0). Vectorised over the columns (axis 0 is projected).
    """

    def __call__(self, w):
        columns = ops.moveaxis(w, 0, -1)                      # [..., B]
        u = ops.flip(ops.sort(columns, axis=-1), axis=-1)     # decreasing
        cumulative = ops.cumsum(u, axis=-1)
        j = ops.arange(1, u.shape[-1] + 1, dtype=u.dtype)
        rho = ops.sum(ops.cast(u - (cumulative - 1.0) / j > 0, "int32"), axis=-1,
                      keepdims=True)                          # >= 1: j = 1 always passes
        theta = (ops.take_along_axis(cumulative, rho - 1, axis=-1) - 1.0) / ops.cast(
            rho, u.dtype)
        return ops.moveaxis(ops.maximum(columns - theta, 0.0), -1, 0)

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="chestxray_tf")
class RelevanceWeights(keras.layers.Layer):
    """The layer relevance weights w [B, K] and their per-class convex combination.

    call([x_1, ..., x_B]), each x_b [N, ..., K] -> sum_b w_b^c x_b[..., c] (Eq. 1 on the block
    logits, Eq. 3 on the resized CAMs; the layer is called on both and shares w).

    relevance: "projected" (the paper's constrained problem: one weight "relevance" [B, K],
        init 1/B, `Simplex` constraint, applied by the optimiser after every step) or "softmax"
        (w = softmax over blocks of "relevance_logits" [B, K], init 0, i.e. 1/B; never 0).
    """

    def __init__(self, num_blocks, num_classes, relevance="projected", **kwargs):
        super().__init__(**kwargs)
        if relevance not in RELEVANCE_CHOICES:
            raise ValueError(f"relevance must be one of {RELEVANCE_CHOICES}, got {relevance!r}")
        for arg, value in (("num_blocks", num_blocks), ("num_classes", num_classes)):
            if int(value) != value or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        self.num_blocks, self.num_classes = int(num_blocks), int(num_classes)
        self.relevance = relevance

    def build(self, input_shape):
        shape = (self.num_blocks, self.num_classes)
        if self.relevance == "projected":
            self.w = self.add_weight(name="relevance", shape=shape,
                                     initializer=keras.initializers.Constant(1.0 / shape[0]),
                                     constraint=Simplex())
        else:
            self.w = self.add_weight(name="relevance_logits", shape=shape, initializer="zeros")

    def relevance_weights(self):
        """w [B, K]: every column non-negative, summing to 1."""
        return self.w if self.relevance == "projected" else ops.softmax(self.w, axis=0)

    def call(self, blocks):
        if len(blocks) != self.num_blocks:
            raise ValueError(f"RelevanceWeights expects {self.num_blocks} inputs, got "
                             f"{len(blocks)}")
        w = ops.cast(self.relevance_weights(), self.compute_dtype)
        return sum(w[b] * ops.cast(x, self.compute_dtype) for b, x in enumerate(blocks))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "num_blocks": self.num_blocks,
                "num_classes": self.num_classes, "relevance": self.relevance}


def _backbone(backbone, image_size, weights):
    if isinstance(backbone, str):
        return build_densenet(backbone, (image_size, image_size, 3), weights=weights)
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"backbone must be a DenseNet name or a keras.Model, got {backbone!r}")
    if weights is not None:
        raise ValueError(f"weights={weights!r} applies to a backbone built by name; load the "
                         f"weights into the given model {backbone.name!r} instead")
    if tuple(backbone.input_shape[1:]) != (image_size, image_size, 3):
        raise ValueError(f"backbone {backbone.name!r} takes {backbone.input_shape[1:]}, "
                         f"not the image_size={image_size} images {(image_size, image_size, 3)}")
    return backbone


def build_sedai2018(*, image_size=256, num_classes=NUM_CLASSES, backbone="densenet121",
                    taps=SEDAI_TAPS, weights=None, relevance="projected", name="sedai2018"):
    """Builds the C-CNN / A-CNN of Sedai et al. 2018 (one model, both outputs).

    Args:
        image_size: side S of the input image "image" [N, S, S, 3] (256 in the paper).
        num_classes: K (14).
        backbone: a name of `chestxray_tf.models.densenet.DENSENETS` ("densenet121";
            "densenet_tiny" for tests) or a functional keras.Model taking [S, S, 3] images
            (e.g. from `densenet`) that has the `taps` layers.
        taps: names of the B backbone layers F_b (default: ends of dense blocks 2-4, D-5;
            ("relu",) gives the DN-CAM baseline with B = 1).
        weights: initial weights of a backbone given by name: None (Xavier, the paper's,
            D-8), "imagenet" or a local weights file.
        relevance: "projected" (default, D-7) or "softmax".
        name: model name.

    Returns:
        A `keras.Model` with outputs {"image_probs" [N, K], "logits" [N, K],
        "block_logits" [N, B, K], "attention" [N, S, S, K], "deepest_attention"
        [N, S, S, K]}, float32 whatever the policy.
    """
    if relevance not in RELEVANCE_CHOICES:
        raise ValueError(f"relevance must be one of {RELEVANCE_CHOICES}, got {relevance!r}")
    if int(image_size) != image_size or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    tapped = feature_taps(_backbone(backbone, image_size, weights), taps)
    image = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = tapped(image)
    if not isinstance(features, (list, tuple)):
        features = [features]
    relevance_layer = RelevanceWeights(len(taps), num_classes, relevance, dtype="float32",
                                       name="relevance")
    block_logits, block_rows, block_maps = [], [], []
    for b, feature in enumerate(features, start=1):
        logits_b, cam_b = GapClassifier(num_classes, name=f"block{b}_fc")(feature)
        block_logits.append(logits_b)
        block_rows.append(keras.layers.Reshape((1, num_classes),
                                               name=f"block{b}_logits")(logits_b))
        block_maps.append(BilinearResize(image_size, dtype="float32",
                                         name=f"block{b}_resize")(cam_b))
    stacked = (keras.layers.Concatenate(axis=1, dtype="float32", name="block_logits")(
        block_rows) if len(block_rows) > 1 else keras.layers.Identity(
        dtype="float32", name="block_logits")(block_rows[0]))
    logits = relevance_layer(block_logits)
    image_probs = keras.layers.Activation("sigmoid", dtype="float32",
                                          name="image_probs")(logits)
    attention = MinMaxNormalization(dtype="float32", name="attention")(
        relevance_layer(block_maps))
    deepest = MinMaxNormalization(dtype="float32", name="deepest_attention")(block_maps[-1])
    return keras.Model(image, {"image_probs": image_probs, "logits": logits,
                               "block_logits": stacked, "attention": attention,
                               "deepest_attention": deepest}, name=name)
