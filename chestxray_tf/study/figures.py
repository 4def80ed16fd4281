"""The study's figures, drawn from study.json's data (nothing recomputed):

* `sweep_<annotated|unannotated>_<column>.png`: the metric against the annotated (unannotated)
  fraction, a line per method that trains on boxes (mean ± std over folds), one panel per
  primary threshold rule (fixed, cross-tuned): Li et al. Figs. 5 and 6 for every method;
* `per_class_<column>.png`: a heat-map table, a row per method and a column per class, the
  value printed in each cell, one panel per primary threshold rule (stacked).

Every PNG is written atomically (`fileio.atomic_write`).
"""

import io
import os
import re

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from chestxray_tf import fileio
from chestxray_tf.study.protocols import PRIMARY_SELECTIONS


def file_stem(column):
    """A column key as part of a file name: "iou>=0.3" -> "iou_ge_0.3"."""
    return re.sub(r"[^\w.]+", "_", column.replace(">=", "_ge_").replace(">", "_gt_")
                  .replace("@", "_at_")).strip("_")


def _save(figure, path):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    fileio.atomic_write(path, buffer.getvalue())
    return path


def _panels(count, width, height, stacked=False):
    """A figure of `count` panels of width x height inches, side by side (or stacked)."""
    figure = Figure(figsize=(width, height * count) if stacked else (width * count, height))
    FigureCanvasAgg(figure)
    shape = (count, 1) if stacked else (1, count)
    return figure, [figure.add_subplot(*shape, i + 1) for i in range(count)]


def plot_sweep(sweep, entry, column, label, out_png):
    """One sweep of one metric (see the module docstring)."""
    figure, axes = _panels(len(PRIMARY_SELECTIONS), 4.5, 3.4)
    other = "unannotated" if sweep == "annotated" else "annotated"
    for ax, selection in zip(axes, PRIMARY_SELECTIONS):
        for method, points in entry[selection][column].items():
            defined = [p for p in points if p[1] is not None]
            if defined:
                x, mean, std = (np.array([p[i] if p[i] is not None else 0.0 for p in defined])
                                for i in range(3))
                ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=method)
        ax.set(title=f"{label}, thresholds {selection}", xlabel=f"{sweep} fraction "
               f"({other} {entry['fixed_at']:g})", ylabel=label, xticks=entry["fractions"])
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, out_png)


def plot_per_class(tables, column, label, out_png):
    """A heat-map table per primary threshold rule: {selection: {method: {class: value}}}."""
    any_table = next((t for t in tables.values() if t), {})
    methods = list(any_table)
    classes = list(next(iter(any_table.values()), {}))
    figure, axes = _panels(len(PRIMARY_SELECTIONS), 0.8 * len(classes) + 2.5,
                           0.45 * len(methods) + 2.0, stacked=True)
    for ax, selection in zip(axes, PRIMARY_SELECTIONS):
        grid = np.array([[np.nan if tables[selection].get(m, {}).get(k) is None else
                          tables[selection][m][k] for k in classes] for m in methods])
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, "—" if np.isnan(value) else f"{value:.2f}", ha="center",
                    va="center", fontsize=7, color="white" if value < 0.6 else "black")
        ax.set(title=f"{label}, thresholds {selection}", xticks=range(len(classes)),
               yticks=range(len(methods)))
        ax.set_xticklabels([k.replace("_", " ") for k in classes], rotation=60, ha="right",
                           fontsize=7)
        ax.set_yticklabels(methods, fontsize=7)
        figure.colorbar(image, ax=ax, fraction=0.04)
    figure.tight_layout()
    return _save(figure, out_png)


def write_all(data, out_dir):
    """Every figure of the study's data; returns {caption: path}."""
    os.makedirs(out_dir, exist_ok=True)
    labels = {c["key"]: c["label"] for c in data["columns"]}
    out = {}
    for sweep, entry in data["sweeps"].items():
        for column in entry[PRIMARY_SELECTIONS[0]]:
            if any(entry[PRIMARY_SELECTIONS[0]][column].values()):
                out[f"{labels[column]} against the {sweep} fraction"] = plot_sweep(
                    sweep, entry, column, labels[column],
                    os.path.join(out_dir, f"sweep_{sweep}_{file_stem(column)}.png"))
    for column in data["per_class"][PRIMARY_SELECTIONS[0]]:
        tables = {s: data["per_class"][s][column] for s in PRIMARY_SELECTIONS}
        if any(tables.values()):
            out[f"{labels[column]} per class"] = plot_per_class(
                tables, column, labels[column],
                os.path.join(out_dir, f"per_class_{file_stem(column)}.png"))
    return out
