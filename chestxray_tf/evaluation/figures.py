"""The figures of an evaluation report (SPEC §6), drawn on matplotlib's Agg canvas.

* `plot_roc_curves`: the ROC curve of every class at the 200 thresholds of Li et al. 2018
  (footnote 4; `chestxray_tf.metrics.auc.roc_curve_thresholded`), one small panel per class
  with its AUC and positive count.
* `plot_heatmap_gallery`: maps over the X-rays, as Li et al. Figure 7 ("rendering the final
  output tensor as heatmaps and overlapping on the original images ... the ground-truth
  bounding boxes in yellow"), with the predicted region outlined; one gallery per class.

A map may have any resolution (a PxP patch grid, a CAM at 1/32 or 1/4 of the input, a saliency
map at the image's own size): cell (r, c) of an h x w map covers the pixels
[c W/w, (c+1) W/w) x [r H/h, (r+1) H/h) of an H x W image, as in `chestxray_tf.metrics`.
"""

import math

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from chestxray_tf.labels import CLASS_NAMES
from chestxray_tf.metrics.auc import roc_auc_thresholded, roc_curve_thresholded

TRUE_BOX_COLOR = "yellow"
REGION_COLOR = "cyan"
PRED_BOX_COLOR = "lime"
HEATMAP_CMAP = "jet"


def _new_figure(width, height):
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def roc_legend(auc_result, class_names=CLASS_NAMES):
    """Legend labels "<class> (AUC 0.812)" ("<class> (AUC —)" for a class without positives or
    negatives) of an `AUCResult`."""
    return [f"{name} (AUC {auc:.3f})" if defined else f"{name} (AUC —)"
            for name, auc, defined in zip(class_names, auc_result.per_class, auc_result.defined)]


ROC_COLUMNS = 4  # small multiples: one panel per class, this many per row


def plot_roc_curves(labels, probs, out_png, class_names=CLASS_NAMES, num_thresholds=200):
    """The ROC curve of every class, one small panel each (ROC_COLUMNS per row, the chance
    diagonal dashed), its AUC and positive count in the panel's title.

    Args:
        labels: [N, K] in {0, 1}.
        probs: [N, K] probabilities.
        out_png: the PNG to write.
        class_names: the K class names of the columns.
        num_thresholds: thresholds of the curve (Li et al.: 200).

    Returns:
        out_png as a string.
    """
    if np.ndim(labels) != 2 or np.shape(labels)[1] != len(class_names):
        raise ValueError(f"labels must be [N, {len(class_names)}] (one column per class of "
                         f"class_names), got shape {np.shape(labels)}")
    _, fpr, tpr = roc_curve_thresholded(labels, probs, num_thresholds)
    aucs = roc_auc_thresholded(labels, probs, num_thresholds)
    positives = np.asarray(labels).sum(axis=0).astype(int)
    columns = min(ROC_COLUMNS, len(class_names))
    rows = math.ceil(len(class_names) / columns)
    figure = _new_figure(2.6 * columns, 2.6 * rows + 0.4)
    for k, label in enumerate(roc_legend(aucs, class_names)):
        ax = figure.add_subplot(rows, columns, k + 1)
        if aucs.defined[k]:
            ax.plot(fpr[k], tpr[k], color="C0", linewidth=1.4)
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])
        ax.set_title(f"{label}\n{positives[k]} positive of {np.shape(labels)[0]}",
                     fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_aspect("equal")
        if k % columns == 0:
            ax.set_ylabel("true positive rate", fontsize=7)
        if k >= len(class_names) - columns:
            ax.set_xlabel("false positive rate", fontsize=7)
    mean = f"mean AUC {aucs.mean:.3f}" if np.isfinite(aucs.mean) else "no class has an AUC"
    figure.suptitle(f"ROC curves at {num_thresholds} thresholds ({mean})", fontsize=10)
    figure.tight_layout()
    figure.savefig(out_png, dpi=100)
    return str(out_png)


def upsample_to_image(grid, height, width):
    """[h, w] grid -> [height, width]: pixel (i, j) takes the value of the cell covering it,
    cell floor(i h / height), floor(j w / width)."""
    grid = np.asarray(grid)
    rows = (np.arange(height) * grid.shape[0]) // height
    cols = (np.arange(width) * grid.shape[1]) // width
    return grid[rows[:, None], cols[None, :]]


def _grey_image(image, index):
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=-1)
    if pixels.ndim != 2 or not np.all(np.isfinite(pixels)):
        raise ValueError(f"image {index} must be a finite [H, W] (or [H, W, C]) array, got "
                         f"shape {np.shape(image)}")
    return pixels


def _heat_map(saliency, index):
    values = np.asarray(saliency, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"map {index} must be a non-empty [h, w] grid, got shape {values.shape}")
    if not np.all((values >= 0) & (values <= 1)):
        raise ValueError(f"map {index} has values outside [0, 1] (or NaN); normalise it first")
    return values


def _boxes(boxes, index, name):
    array = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64)
    if array.ndim == 1 and array.size == 4:
        array = array[None, :]
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} of image {index} must be [M, 4] boxes (x, y, w, h), got shape "
                         f"{array.shape}")
    return array


def _draw_boxes(ax, boxes, color, linestyle):
    for x, y, w, h in boxes:
        ax.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor=color, linewidth=1.5,
                               linestyle=linestyle))


def _outline_region(ax, region, height, width, index):
    """The outline of a region on any grid, resized to the image (cell edges exactly)."""
    mask = np.asarray(region)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"predicted region {index} must be a bool [h, w] mask, got "
                         f"{mask.dtype} {mask.shape}")
    if not mask.any():
        return
    # A border of False makes the outline close along the image's edges too.
    pixels = np.pad(upsample_to_image(mask, height, width), 1).astype(np.float64)
    xs = np.arange(-1, width + 1) + 0.5
    ys = np.arange(-1, height + 1) + 0.5
    ax.contour(xs, ys, pixels, levels=[0.5], colors=REGION_COLOR, linewidths=1.5)


def _per_image(values, count, name):
    if values is None:
        return [None] * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} images")
    return list(values)


def plot_heatmap_gallery(images, maps, true_boxes, pred_regions, titles, out_png, *,
                         pred_boxes=None, columns=4, alpha=0.45):
    """A gallery of heat maps over X-rays: true boxes in yellow, the predicted region outlined,
    the colour scale of the maps (0-1) at the right.

    Args:
        images: N grey images [H, W] (or [H, W, C], averaged over channels), any value range.
        maps: N maps [h, w] in [0, 1], any resolution (see the module docstring).
        true_boxes: N arrays [M, 4] of (x, y, w, h) boxes in image pixels (M may be 0).
        pred_regions: None, or N bool masks [h', w'] on any grid (e.g. the thresholded map,
            `chestxray_tf.metrics.regions.map_to_region`), or None entries; outlined in cyan.
        titles: None or N strings (e.g. "00012345_000.png  p=0.91  IoU 0.42").
        out_png: the PNG to write.
        pred_boxes: None, or N arrays [M, 4] of predicted boxes in image pixels (dashed).
        columns: images per row.
        alpha: opacity of the heat map.

    Returns:
        out_png as a string.
    """
    count = len(images)
    if count == 0:
        raise ValueError("no image to draw")
    maps = _per_image(maps, count, "maps")
    true_boxes = _per_image(true_boxes, count, "true_boxes")
    pred_regions = _per_image(pred_regions, count, "pred_regions")
    titles = _per_image(titles, count, "titles")
    pred_boxes = _per_image(pred_boxes, count, "pred_boxes")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    figure = _new_figure(3 * columns, 3.2 * rows)
    for i in range(count):
        image = _grey_image(images[i], i)
        height, width = image.shape
        extent = (0, width, height, 0)
        ax = figure.add_subplot(rows, columns, i + 1)
        ax.imshow(image, cmap="gray", extent=extent, interpolation="bilinear")
        ax.imshow(_heat_map(maps[i], i), cmap=HEATMAP_CMAP, vmin=0, vmax=1, alpha=alpha,
                  extent=extent, interpolation="nearest")
        _draw_boxes(ax, _boxes(true_boxes[i], i, "true_boxes"), TRUE_BOX_COLOR, "-")
        _draw_boxes(ax, _boxes(pred_boxes[i], i, "pred_boxes"), PRED_BOX_COLOR, "--")
        if pred_regions[i] is not None:
            _outline_region(ax, pred_regions[i], height, width, i)
        ax.set(xlim=(0, width), ylim=(height, 0), xticks=[], yticks=[])
        if titles[i]:
            ax.set_title(str(titles[i]), fontsize=8)
    figure.tight_layout(rect=(0, 0, 0.92, 1))
    scale = figure.add_axes((0.935, 0.15, 0.015, 0.7))
    figure.colorbar(ScalarMappable(Normalize(0, 1), HEATMAP_CMAP), cax=scale,
                    label="map value")
    figure.savefig(out_png, dpi=100)
    return str(out_png)
