"""Figures of the `kim` task's compute stages: the anchor image (PNG) and the disease masks
over the anchor, one panel per boxed class with its N_c (the paper's Fig. 3)."""

import numpy as np
from matplotlib import colormaps

from chestxray_tf.evaluation.figures import HEATMAP_CMAP, _new_figure, upsample_to_image
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES


def _grey(anchor):
    """[S, S, 3] in [-1, 1] -> [S, S] in [0, 1]."""
    return np.clip((np.asarray(anchor, dtype=np.float64).mean(axis=-1) + 1.0) / 2.0, 0.0, 1.0)


def save_anchor_png(path, anchor):
    """The anchor image A [S, S, 3] (model scaling [-1, 1]) as an 8-bit grey PNG."""
    figure = _new_figure(4, 4)
    ax = figure.add_axes([0, 0, 1, 1])
    ax.imshow(_grey(anchor), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    figure.savefig(path, dpi=100)


def plot_masks(masks, anchor, counts, path):
    """psi [p, p, K] of the boxed classes over the anchor (Fig. 3), titled with N_c when
    `counts` ({class: N_c}) is given."""
    grey = _grey(anchor)
    size = grey.shape[0]
    figure = _new_figure(2.2 * 4, 2.4 * 2)
    cmap = colormaps[HEATMAP_CMAP]
    for i, name in enumerate(BOXED_CLASSES):
        ax = figure.add_subplot(2, 4, i + 1)
        mask = upsample_to_image(masks[..., CLASS_NAMES.index(name)], size, size)
        peak = mask.max()
        heat = cmap(mask / peak if peak > 0 else mask)[..., :3]
        alpha = 0.5 * (mask > 0)[..., None]
        ax.imshow((1 - alpha) * grey[..., None] + alpha * heat)
        ax.set_title(name + (f" (N={counts[name]})" if counts else ""), fontsize=8)
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
