"""A task's region rule in TensorFlow: one implementation for evaluation, export and predict.

`region_boxes(maps, rule)` turns localization maps [B, h, w, K] into the regions of a
`tasks.base.RegionRule`, inside a graph (the SavedModel's signatures run it) and on any
device: threshold (> T_s, or >= T_s with `inclusive`), 8-connected components
(`label_components`, label propagation by 3 x 3 max-pooling until nothing changes), then

* keep="all": one region, every passing cell (Li et al. 2018, Sec. 3.3: "discrete regions
  count as one region"), its box the bounding box of them all;
* keep="largest": the component with the most cells (a tie goes to the one whose first cell
  comes first in raster order), Hermoza et al.;
* keep="each": every component, at most R = `max_regions`, by their largest map value
  (Sedai et al.'s box per blob).

Boxes are normalised (ymin, xmin, ymax, xmax) over the map's frame, cell (r, c) covering
[r / h, (r + 1) / h) x [c / w, (c + 1) / w); `region_scores` is the region's largest map value,
0 for a slot without a region (its box is all zero). `chestxray_tf.metrics.regions` is the
NumPy twin (SciPy's labelling) the tests compare with.
"""

import tensorflow as tf


def binarize(maps, rule):
    """bool [B, h, w, K]: the cells in a region."""
    maps = tf.cast(maps, tf.float32)
    return maps >= rule.threshold if rule.inclusive else maps > rule.threshold


def label_components(mask):
    """int32 [B, h, w, K]: 0 for background, else 1 + the raster index of the first cell of
    the cell's 8-connected component (components of each image and class apart)."""
    shape = tf.shape(mask)
    height, width = shape[1], shape[2]
    index = tf.reshape(tf.range(1, height * width + 1, dtype=tf.float32), [1, height, width, 1])
    big = tf.cast(height * width + 1, tf.float32)
    # Propagate the smallest index over each component: max-pooling of the negated indices
    # (background -big never wins over a cell of the component).
    start = tf.where(mask, -index * tf.ones_like(tf.cast(mask, tf.float32)), -big)

    def step(labels, _):
        pooled = tf.nn.max_pool2d(labels, ksize=3, strides=1, padding="SAME")
        return tf.where(mask, pooled, -big), labels

    def not_done(labels, previous):
        return tf.reduce_any(tf.not_equal(labels, previous))

    first, _ = step(start, start)
    labels, _ = tf.while_loop(not_done, step, (first, start),
                              maximum_iterations=height * width)
    return tf.cast(tf.where(mask, -labels, 0.0), tf.int32)


def _per_map(x):
    """[B, h, w, K] -> [B * K, h * w] (one row per image and class)."""
    shape = tf.shape(x)
    return tf.reshape(tf.transpose(x, [0, 3, 1, 2]), [shape[0] * shape[3], shape[1] * shape[2]])


def _regions(maps, rule):
    """The kept regions of every map: (labels [B, h, w, K], kept labels int32 [B, K, R] (-1 for
    an empty slot), extents int32 [4, B, K, R] (first row, first column, last row, last
    column), peaks float32 [B, K, R])."""
    shape = tf.shape(maps)
    batch, height, width, classes = shape[0], shape[1], shape[2], shape[3]
    mask = binarize(maps, rule)
    labels = tf.cast(mask, tf.int32) if rule.keep == "all" else label_components(mask)
    rows, cells = batch * classes, height * width
    slots = cells + 1  # a label is 0 (background) or 1 .. h * w
    segment = tf.reshape(_per_map(labels) + slots * tf.range(rows)[:, None], [-1])
    num = rows * slots

    def per_region(reduce, values):
        return tf.reshape(reduce(tf.reshape(values, [-1]), segment, num), [rows, slots])

    position = tf.tile(tf.range(cells)[None], [rows, 1])
    size = per_region(tf.math.unsorted_segment_sum, tf.ones_like(position))
    peak = per_region(tf.math.unsorted_segment_max, _per_map(tf.cast(maps, tf.float32)))
    extents = [per_region(tf.math.unsorted_segment_min, position // width),
               per_region(tf.math.unsorted_segment_min, position % width),
               per_region(tf.math.unsorted_segment_max, position // width),
               per_region(tf.math.unsorted_segment_max, position % width)]
    present = tf.concat([tf.zeros([rows, 1], tf.bool), size[:, 1:] > 0], axis=1)
    rank = tf.cast(size, tf.float32) if rule.keep == "largest" else peak
    # top_k keeps the first of equal values: the smaller label, the earlier first cell. A map
    # with fewer label slots than `num_regions` (a tiny grid) is padded with empty slots.
    ranked = tf.pad(tf.where(present, rank, -1.0),
                    [[0, 0], [0, tf.maximum(rule.num_regions - slots, 0)]], constant_values=-1.0)
    order = tf.math.top_k(ranked, k=rule.num_regions).indices
    order, padded = tf.minimum(order, slots - 1), order >= slots
    found = tf.gather(present, order, batch_dims=1) & ~padded

    def out(x):
        return tf.reshape(x, [batch, classes, rule.num_regions])

    kept = out(tf.where(found, order, -1))
    extents = tf.stack([out(tf.gather(e, order, batch_dims=1)) for e in extents])
    peaks = out(tf.where(found, tf.gather(peak, order, batch_dims=1), 0.0))
    return labels, kept, extents, peaks


def region_boxes(maps, rule):
    """The regions of `rule` on `maps` [B, h, w, K].

    Returns:
        (boxes float32 [B, K, R, 4] normalised yxyx over the map's frame, scores float32
        [B, K, R] the regions' largest map values); R = `rule.num_regions`; a slot without a
        region has a zero box and score.
    """
    maps = tf.convert_to_tensor(maps)
    _, kept, extents, peaks = _regions(maps, rule)
    shape = tf.cast(tf.shape(maps), tf.float32)
    h, w = shape[1], shape[2]
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(extents, tf.float32))
    boxes = tf.stack([ymin / h, xmin / w, (ymax + 1.0) / h, (xmax + 1.0) / w], axis=-1)
    return boxes * tf.cast(kept >= 0, tf.float32)[..., None], peaks


def region_mask(maps, rule):
    """bool [B, h, w, K]: the cells of the kept regions (all passing cells with keep="all")."""
    labels, kept, _, _ = _regions(tf.convert_to_tensor(maps), rule)
    hits = labels[..., None] == kept[:, None, None, :, :]  # [B, h, w, K, R]
    return tf.reduce_any(hits & (labels[..., None] > 0), axis=-1)
