"""Detection building blocks on fixed proposals: RoIAlign, box decoding, bilinear and Gaussian
"glimpse" crops of boxes, and rasterising weighted boxes into a map (Hermoza et al. 2020,
Sec. 3.2; the operators they take from Mask R-CNN and Faster R-CNN).

Boxes are (y1, x1, y2, x2) in pixels of the input image (a pixel i covers [i, i + 1)), the order
of `tf.image.crop_and_resize`. Every op is batched, has static shapes apart from the batch, and
has no Python loop over boxes or pixels.

Sampling a box on a grid (`_sample_boxes`): `tf.image.crop_and_resize` with an n x n crop
samples the map at y = y1' (h - 1) + i (y2' - y1') (h - 1) / (n - 1), i = 0..n-1, for
normalised coordinates (y1', y2'). Given the first and last sample positions in the map's index
coordinates we set y1' = first / (h - 1), y2' = last / (h - 1). The map is first padded by one
edge row/column on each side (values replicated), coordinates shifted by + 1 and normalised by
the padded size minus one (h + 1): a sample in [-1, 0) or (h - 1, h] then takes the edge value
and one beyond -1 or h is 0 (crop_and_resize's extrapolation value), which is exactly the
border rule of RoIAlign's bilinear interpolation (torchvision `roi_align`).
"""

import math

import tensorflow as tf

# Faster R-CNN's bound on the log scale deltas (torchvision BoxCoder: log(1000 / 16)).
MAX_LOG_SCALE = math.log(1000.0 / 16)
SAMPLERS = ("crop_and_resize", "gather")


def _batch_boxes(boxes, batch_size):
    """[N, 4] (shared by the batch) or [B, N, 4] -> [B, N, 4]."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    if boxes.shape.rank == 2:
        boxes = tf.broadcast_to(boxes[None], tf.concat([[batch_size], tf.shape(boxes)], 0))
    if boxes.shape.rank != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, 4] or [B, N, 4] (y1, x1, y2, x2), got shape "
                         f"{boxes.shape}")
    return boxes


def _check_sampler(sampler):
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def _gather_bilinear(padded, first, last, samples):
    """Bilinear samples of `padded` [B, H, W, C] on the samples x samples grid from `first` to
    `last` ([B, N, 2] padded index coordinates); 0 outside [0, H - 1] x [0, W - 1]."""
    height, width = padded.shape[1], padded.shape[2]
    fraction = tf.range(samples, dtype=tf.float32) / max(samples - 1, 1)
    coords = first[..., None] + (last - first)[..., None] * fraction  # [B, N, 2, n]
    ys, xs = coords[:, :, 0], coords[:, :, 1]  # [B, N, n]
    y0, x0 = tf.floor(ys), tf.floor(xs)
    wy, wx = ys - y0, xs - x0
    valid_y = tf.cast((ys >= 0) & (ys <= height - 1), tf.float32)
    valid_x = tf.cast((xs >= 0) & (xs <= width - 1), tf.float32)
    grid = tf.concat([tf.shape(ys), [samples]], 0)  # [B, N, n, n]
    total = 0.0
    for dy, weight_y in ((0, 1 - wy), (1, wy)):
        rows = tf.clip_by_value(tf.cast(y0, tf.int32) + dy, 0, height - 1)
        for dx, weight_x in ((0, 1 - wx), (1, wx)):
            cols = tf.clip_by_value(tf.cast(x0, tf.int32) + dx, 0, width - 1)
            index = tf.stack([tf.broadcast_to(rows[..., :, None], grid),
                              tf.broadcast_to(cols[..., None, :], grid)], -1)
            values = tf.gather_nd(padded, index, batch_dims=1)  # [B, N, n, n, C]
            weight = (weight_y * valid_y)[..., :, None] * (weight_x * valid_x)[..., None, :]
            total += values * weight[..., None]
    return total


def _sample_boxes(features, starts, extents, samples, sampler="crop_and_resize"):
    """Samples each box of `features` on a samples x samples grid of bin centres, bilinearly.

    Args:
        features: [B, h, w, C] float.
        starts: [B, N, 2] (y, x) of the box start in the map's index coordinates.
        extents: [B, N, 2] box height and width in map cells.
        samples: n, the number of sample points per side; sample i sits at
            start + (i + 0.5) extent / n.
        sampler: "crop_and_resize" or "gather" (XLA-compatible), the same values.

    Returns:
        [B, N, n, n, C] float32 (see the module docstring for the border rule).
    """
    features = tf.cast(features, tf.float32)
    height, width, channels = features.shape[1], features.shape[2], features.shape[3]
    if None in (height, width, channels):
        raise ValueError(f"features need static spatial and channel sizes, got {features.shape}")
    batch_size = tf.shape(features)[0]
    num_boxes = starts.shape[1] if starts.shape[1] is not None else tf.shape(starts)[1]
    step = extents / samples
    first = starts + step / 2 + 1.0  # + 1: the padding row / column
    last = starts + extents - step / 2 + 1.0
    padded = tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    if sampler == "gather":
        return _gather_bilinear(padded, first, last, samples)
    norm = tf.constant([height + 1.0, width + 1.0])
    crop_boxes = tf.concat([first / norm, last / norm], axis=-1)  # y1, x1, y2, x2
    box_indices = tf.repeat(tf.range(batch_size), num_boxes)
    crops = tf.image.crop_and_resize(padded, tf.reshape(crop_boxes, [-1, 4]), box_indices,
                                     [samples, samples], method="bilinear",
                                     extrapolation_value=0.0)
    return tf.reshape(crops, [batch_size, num_boxes, samples, samples, channels])


def roi_align(features, boxes, *, image_size, output_size=5, sampling_ratio=2,
              sampler="crop_and_resize"):
    """RoIAlign (He et al. 2017, Mask R-CNN; torchvision `roi_align` with aligned=False, the
    settings of Hermoza et al.'s code: 5 x 5 bins, 2 x 2 samples per bin).

    The box is scaled to the map by s = h / image_size (no half-pixel shift), its size is
    max(size s, 1) cells, split into output_size bins; each bin averages sampling_ratio^2
    bilinear samples at the bin-relative positions (i + 0.5) / sampling_ratio.

    Args:
        features: [B, h, w, C] float map over the image (square: h = w).
        boxes: [N, 4] (the same for every image) or [B, N, 4] boxes (y1, x1, y2, x2) in pixels of
            the image.
        image_size: S, the side of the image the boxes are in.
        output_size: bins per side (5).
        sampling_ratio: samples per bin and side (2).
        sampler: "crop_and_resize" or "gather" (XLA / TPU).

    Returns:
        float32 [B, N, output_size, output_size, C].
    """
    for name, value in (("output_size", output_size), ("sampling_ratio", sampling_ratio)):
        if int(value) != value or value < 1:
            raise ValueError(f"roi_align {name} must be a positive integer, got {value!r}")
    _check_sampler(sampler)
    if features.shape[1] != features.shape[2]:
        raise ValueError(f"roi_align expects a square map, got features of shape {features.shape}")
    boxes = _batch_boxes(boxes, tf.shape(features)[0])
    scale = features.shape[1] / image_size
    starts = boxes[..., :2] * scale
    extents = tf.maximum((boxes[..., 2:] - boxes[..., :2]) * scale, 1.0)
    samples = _sample_boxes(features, starts, extents, output_size * sampling_ratio, sampler)
    shape = tf.shape(samples)
    bins = tf.reshape(samples, [shape[0], shape[1], output_size, sampling_ratio, output_size,
                                sampling_ratio, shape[4]])
    return tf.reduce_mean(bins, axis=[3, 5])


def crop_boxes(images, boxes, crop_size, sampler="crop_and_resize"):
    """Differentiable bilinear crops of boxes of the images, resized to crop_size x crop_size
    (Hermoza et al. 2020, Sec. 3.2: the picked box b~_k "is used to crop the input image x").

    Output pixel (i, j) samples the image at the centre of the (i, j)-th of crop_size^2 equal
    cells of the box (pixel centres at i + 0.5); outside the image the edge pixel is repeated.
    Gradients flow to the images and to the box coordinates.

    Args:
        images: [B, S, S, C].
        boxes: [B, K, 4] (y1, x1, y2, x2) in pixels of the image.
        crop_size: output side.
        sampler: "crop_and_resize" or "gather" (XLA / TPU).

    Returns:
        float32 [B, K, crop_size, crop_size, C].
    """
    if int(crop_size) != crop_size or crop_size < 1:
        raise ValueError(f"crop_size must be a positive integer, got {crop_size!r}")
    _check_sampler(sampler)
    boxes = _batch_boxes(boxes, tf.shape(images)[0])
    return _sample_boxes(images, boxes[..., :2] - 0.5, boxes[..., 2:] - boxes[..., :2],
                         int(crop_size), sampler)


def decode_boxes(deltas, anchors, image_size, max_log_scale=MAX_LOG_SCALE):
    """Applies box deltas to anchors with the Faster R-CNN box coding (Ren et al. 2015;
    torchvision `BoxCoder(weights=(1, 1, 1, 1))`, as in Hermoza et al.'s code), then clips to the
    image.

    With anchor height h_a, width w_a and centre (c_y, c_x) = (y1 + h_a / 2, x1 + w_a / 2) and
    deltas (d_y, d_x, d_h, d_w): c'_y = d_y h_a + c_y, h' = exp(min(d_h, max_log_scale)) h_a (same
    for x); box = (c'_y - h'/2, c'_x - w'/2, c'_y + h'/2, c'_x + w'/2) clipped to [0, S].

    Args:
        deltas: [..., 4] (d_y, d_x, d_h, d_w).
        anchors: [..., 4] (y1, x1, y2, x2) pixels, broadcastable against deltas.
        image_size: S.
        max_log_scale: upper clamp of d_h and d_w (log(1000 / 16)).

    Returns:
        float32 [..., 4] refined boxes (y1, x1, y2, x2).
    """
    deltas = tf.cast(deltas, tf.float32)
    anchors = tf.cast(anchors, tf.float32)
    size = anchors[..., 2:] - anchors[..., :2]
    centre = anchors[..., :2] + size / 2
    new_centre = deltas[..., :2] * size + centre
    new_size = tf.exp(tf.minimum(deltas[..., 2:], max_log_scale)) * size
    boxes = tf.concat([new_centre - new_size / 2, new_centre + new_size / 2], axis=-1)
    return tf.clip_by_value(boxes, 0.0, float(image_size))


def rasterize_boxes(boxes, weights, image_size, map_size):
    """Sum of weighted box indicators on a map_size x map_size grid over the image:

        map[b, i, j, k] = sum_n weights[b, n, k] * 1[(i, j) in round(boxes[b, n, k] * m / S)],

    a cell (i, j) being in a box (y1, x1, y2, x2) of map coordinates when
    round(y1) <= i < round(y2) and round(x1) <= j < round(x2) (round half to even: the slice
    `map[y1:y2, x1:x2]` of the rounded box in Hermoza et al.'s `build_heatmap`).

    Args:
        boxes: [B, N, K, 4] (y1, x1, y2, x2) in pixels of the image.
        weights: [B, N, K].
        image_size: S.
        map_size: m, the side of the output map.

    Returns:
        float32 [B, m, m, K].
    """
    boxes = tf.round(tf.cast(boxes, tf.float32) * (map_size / image_size))
    cells = tf.range(map_size, dtype=tf.float32)
    inside_y = tf.cast((boxes[..., 0:1] <= cells) & (cells < boxes[..., 2:3]), tf.float32)
    inside_x = tf.cast((boxes[..., 1:2] <= cells) & (cells < boxes[..., 3:4]), tf.float32)
    return tf.einsum("bnk,bnky,bnkx->byxk", tf.cast(weights, tf.float32), inside_y, inside_x)


def glimpse_boxes(images, boxes, crop_size, variance=1.0):
    """Differentiable Gaussian "glimpse" crops of boxes (DRAW-style filterbanks), the crop of
    Hermoza et al.'s released code (`crop_ops._get_va_crop`).

    Per axis, for a box of centre c and size w (pixels) in an image of side S: centre
    g^ = (S + 1) c / S, stride d = (S - 1) / (n - 1) * w / S, filter centres
    mu_i = g^ + (i - n/2 - 0.5) d (i = 0..n-1), filters F[i, a] = exp(-(a - mu_i)^2 / (2 variance))
    normalised over a; crop = F_y x F_x^T per channel.

    Args:
        images: [B, S, S, C] (square).
        boxes: [B, K, 4] (y1, x1, y2, x2) pixels.
        crop_size: n. variance: sigma^2 in pixels^2 (1).

    Returns:
        float32 [B, K, n, n, C].
    """
    if int(crop_size) != crop_size or crop_size < 2:
        raise ValueError(f"glimpse crop_size must be an integer >= 2, got {crop_size!r}")
    images = tf.cast(images, tf.float32)
    size = images.shape[1]
    if size is None or images.shape[2] != size:
        raise ValueError(f"glimpse_boxes needs static square images, got {images.shape}")
    boxes = tf.cast(boxes, tf.float32)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2  # [B, K, 2]
    extent = boxes[..., 2:] - boxes[..., :2]
    g_hat = (size + 1) * centre / size
    stride = (size - 1) / (crop_size - 1) * extent / size
    offsets = tf.range(crop_size, dtype=tf.float32) - crop_size / 2 - 0.5
    mu = g_hat[..., None] + offsets * stride[..., None]  # [B, K, 2, n]
    pixels = tf.range(size, dtype=tf.float32)
    filters = tf.exp(-(pixels - mu[..., None]) ** 2 / (2 * variance))  # [B, K, 2, n, S]
    filters = filters / tf.maximum(tf.reduce_sum(filters, -1, keepdims=True), 1e-8)
    return tf.einsum("bkia,badc,bkjd->bkijc", filters[:, :, 0], images, filters[:, :, 1])
