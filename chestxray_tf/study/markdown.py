"""study.md: study.json's data as tables a reader can scan (docs/study.md says how to read
them). Every number printed is a value of study.json."""

import collections

from chestxray_tf.study.protocols import PRIMARY_SELECTIONS

MISSING = "—"
SELECTION_TITLES = {
    "fixed": "Thresholds fixed (map > {threshold:g}, every class)",
    "cross-tuned": "Thresholds cross-tuned (tuned per class on one patient half of the boxed "
                   "test images, scored on the other, pooled)",
    "test-tuned": "Extra, optimistic: thresholds test-tuned (tuned per class on the very test "
                  "images they score)",
}


def _number(value, std=None):
    if value is None:
        return MISSING
    return f"{value:.3f}" if std is None else f"{value:.3f} ± {std:.3f}"


def _grid(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _groups(columns):
    """Columns grouped for printing: the summary metrics, then one group per accuracy family
    ("iou>", "iou>=", ...) and AFP, each with its thresholds across."""
    groups = collections.OrderedDict([("summary", [])])
    for column in columns:
        key = column["key"]
        if key in ("auc", "average_iou", "cdice"):
            groups["summary"].append(column)
        else:
            family = key[:key.index("@") + 1] if "@" in key else key.rstrip("0123456789.")
            groups.setdefault(family, []).append(column)
    return groups


def _family_title(family, columns):
    label = columns[0]["label"]
    return label[:label.rindex(" ") + 1] + "T" if family != "summary" else "summary"


def comparison_tables(data, selection):
    rows = data["tables"][selection]
    lines = []
    for family, columns in _groups(data["columns"]).items():
        accuracy = family != "summary" and not family.startswith("afp")
        header = ["method", "n"] + [c["label"].rsplit(" ", 1)[-1] if family != "summary"
                                    else c["label"] for c in columns]
        body = []
        for row in rows:
            cells = [row["method"], str(row["n"])]
            for c in columns:
                cell = _number(row["values"][c["key"]], row["std"][c["key"]])
                if accuracy:
                    cell += f" ({_number(row['chance'].get(c['key']))})"
                cells.append(cell)
            body.append(cells)
        title = _family_title(family, columns)
        note = " — accuracy (chance level of the method's regions moved at random)" if (
            accuracy) else (" — average false positives per image, lower is better"
                            if family.startswith("afp") else "")
        lines += ["", f"**{title}**{note}", ""] + _grid(header, body)
    return lines


def sweep_tables(data, sweep):
    entry = data["sweeps"][sweep]
    other = "unannotated" if sweep == "annotated" else "annotated"
    lines = ["", f"### {sweep.capitalize()} fraction ({other} fraction {entry['fixed_at']:g})"]
    labels = {c["key"]: c["label"] for c in data["columns"]}
    for selection in PRIMARY_SELECTIONS:
        for column, methods in entry[selection].items():
            if not any(methods.values()):
                continue
            header = ["method"] + [f"{x:g}" for x in entry["fractions"]]
            body = []
            for method, points in methods.items():
                at = {p[0]: _number(p[1], p[2]) for p in points}
                body.append([method] + [at.get(x, "not run") for x in entry["fractions"]])
            lines += ["", f"{labels[column]}, thresholds {selection}:", ""] + _grid(header, body)
    return lines


def per_class_tables(data, selection):
    lines = []
    labels = {c["key"]: c["label"] for c in data["columns"]}
    for column, methods in data["per_class"][selection].items():
        if not methods:
            continue
        classes = list(next(iter(methods.values())))
        header = ["method"] + [k.replace("_", " ") for k in classes]
        body = [[m] + [_number(v.get(k)) for k in classes] for m, v in methods.items()]
        lines += ["", f"{labels[column]} per class, thresholds {selection}:", ""]
        lines += _grid(header, body)
    return lines


def render(data):
    """The Markdown of study.md."""
    split = data["split"]
    threshold = next(iter(data["protocols"].values()))["region_threshold"]
    lines = [f"# Study: {data['name']}", "",
             "Every method trained from its own paper config on the same split and measured "
             "under the same protocols (docs/study.md); every number is the value of a run's "
             "own report.json (mean ± std over folds when there are several).", "",
             f"- data: `{data['manifest']}`",
             f"- split: Li et al.'s protocol, fold(s) {', '.join(map(str, split['folds']))}, "
             f"split seed {split['split_seed']}; comparison at {split['annotated']:g} of the "
             f"annotated + {split['unannotated']:g} of the unannotated images",
             f"- runs evaluated: {len(data['runs'])}; missing: "
             + (", ".join(f"`{r}`" for r in data["missing"]) or "none"),
             "- n: folds; accuracy cells: value (chance); — : no value (no boxed test image "
             "of the class, or the metric does not apply)"]
    lines += ["", "## Which boxes each method saw", ""]
    lines += [f"- **{task}** {note}" for task, note in data["notes"].items()]
    for selection in data["selections"]:
        title = SELECTION_TITLES[selection].format(threshold=threshold)
        lines += ["", f"## {title}"] + comparison_tables(data, selection)
    lines += ["", "## Limited supervision (Li et al. Figs. 5 and 6, every method that trains "
              "on boxes)"]
    for sweep in data["sweeps"]:
        lines += sweep_tables(data, sweep)
    lines += ["", "## Per class (the comparison's point)"]
    for selection in PRIMARY_SELECTIONS:
        lines += per_class_tables(data, selection)
    if data.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{caption}]({path})" for caption, path in data["figures"].items()]
    lines += ["", "## Runs", ""]
    for run in data["runs"]:
        main = next(iter(run["reports"].values()))
        lines.append(f"- `{run['id']}`: `{run['workdir']}` "
                     f"({len(run['reports'])} protocols x {len(main)} map variants)")
    return "\n".join(lines) + "\n"
