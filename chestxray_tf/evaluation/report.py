"""The evaluation report: a run's metrics beside the papers' published tables (SPEC §6).

`write_report(out_dir, results, paper, ...)` writes

* `report.json`: every metric per class and mean (`results`, see `results.py`), the config and
  the checkpoint they came from, and the comparison with each of the paper's tables;
* `report.md`: the paper's tables in the paper's layout (classes across or down, rows grouped by
  threshold or setting as printed; `paper_tables.py`), each published row as printed, then our
  row and the difference to the paper's own row beside it; every metric per class; the figures
  embedded with relative links.

A table's "mean" column is the mean of our values over the table's own class columns, as the
papers' "Mean" columns are. `compare` takes several runs: `cv_report` renders the same tables
with mean ± std over the folds of a cross-validation.
"""

import json
import math
import os
import pathlib
import urllib.parse

import numpy as np

from chestxray_tf.evaluation.paper_tables import MEAN, load_published
from chestxray_tf.evaluation.results import (LOCALIZATION_METRICS, METRICS,
                                             THRESHOLDED_METRICS, mean_of, metric_table,
                                             normalize_results)
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES

METRIC_NAMES = {
    "auc": "AUC",
    "auc_exact": "AUC (exact)",
    "localization.iou": "accuracy IoU",
    "localization.ior": "accuracy IoR",
    "average_iou": "average IoU",
    "cdice": "cDice",
    "afp": "AFP",
}
MISSING = "—"


# --- comparison ---------------------------------------------------------------------------

def run_values(results, metric, threshold, columns):
    """Our values of one run in the columns of a table; "mean" is the mean over the table's
    class columns that have a value (None when none has)."""
    table = metric_table(results, metric, threshold)
    per_class = {} if table is None else table["per_class"]
    values = {c: per_class.get(c) for c in columns if c != MEAN}
    values[MEAN] = mean_of(values.values())
    return [values[c] for c in columns]


def fold_statistics(values, ddof=1):
    """(mean, std, n) of the defined values of one cell over runs; std is None for one run
    (or fewer than ddof + 1 defined values), mean is None when no run has a value."""
    defined = [v for v in values if v is not None]
    if not defined:
        return None, None, 0
    std = float(np.std(defined, ddof=ddof)) if len(values) > 1 and len(defined) > ddof else None
    return float(np.mean(defined)), std, len(defined)


def _ours_row(runs, metric, threshold, columns, ddof):
    per_run = [run_values(r, metric, threshold, columns) for r in runs]
    stats = [fold_statistics(cell, ddof) for cell in zip(*per_run)]
    return {"values": [s[0] for s in stats], "std": [s[1] for s in stats],
            "n": [s[2] for s in stats]}


def _chance_runs(runs):
    """The runs with their chance-level localization ("localization_chance": the same regions
    at random places) in place of their own, for the chance row."""
    return [{"localization": r.get("localization_chance", {})} for r in runs]


def _counts_row(runs, metric, threshold, columns):
    """The test images behind each value: per class, summed over the runs (folds); the total
    in the mean column. None where no run gives a count."""
    totals = {}
    for r in runs:
        table = metric_table(r, metric, threshold) or {}
        for c, n in (table.get("counts") or {}).items():
            totals[c] = totals.get(c, 0) + int(n)
    values = [totals.get(c) for c in columns if c != MEAN]
    total = sum(v for v in values if v is not None) if any(v is not None for v in values) else None
    values = iter(values)
    return [total if c == MEAN else next(values) for c in columns]


def _extra_rows(runs, metric, threshold, columns, ddof):
    """The rows under our row: the chance level (localization) and the test counts."""
    rows = []
    if metric in LOCALIZATION_METRICS and any("localization_chance" in r for r in runs):
        rows.append({"method": "chance (the same regions at random places)", "role": "ours",
                     "kind": "chance",
                     **_ours_row(_chance_runs(runs), metric, threshold, columns, ddof)})
    counts = _counts_row(runs, metric, threshold, columns)
    if any(v is not None for v in counts):
        what = "positive test images" if metric in ("auc", "auc_exact") else \
            "test images with a box of the class"
        rows.append({"method": f"n ({what})", "role": "ours", "kind": "counts",
                     "values": counts})
    return rows


def _difference(ours, published):
    return [None if o is None or p is None else o - p for o, p in zip(ours, published)]


def _run_label(runs, name):
    """The label of our row: `name`, marked when the thresholds were test-tuned."""
    selections = {r.get("thresholds", {}).get("selection") for r in runs}
    for tuned in ("test-tuned", "cross-tuned"):
        if tuned in selections:
            return f"{name}, {tuned} thresholds"
    return name


def _groups(table):
    """[(group label, [rows])] in the order the paper prints them."""
    groups = {}
    for row in table["rows"]:
        groups.setdefault(row.get("group"), []).append(row)
    return list(groups.items())


def _notes(table, runs):
    notes = []
    inclusive = {r.get("localization", {}).get("inclusive") for r in runs} - {None}
    if table["metric"] in LOCALIZATION_METRICS and "criterion" in table and inclusive:
        ours = ">=" if inclusive == {True} else ">" if inclusive == {False} else "mixed"
        if ours != table["criterion"]:
            notes.append(f"The paper counts a hit when overlap {table['criterion']} T; "
                         f"this run counts overlap {ours} T.")
    if table.get("threshold_selection") == "test-tuned":
        notes.append("The paper's binarisation thresholds were tuned on the boxed test images "
                     "(test-tuned).")
    return notes


def compare_table(table, runs, ddof=1, name="this run", against="paper"):
    """One published table with our row and its difference to the paper's own row appended to
    each group of rows (e.g. each T(IoU)), unless `runs` name another experiment.

    Args:
        table: a table of a published file (`load_published(...)["tables"][i]`).
        runs: normalised results of one run, or of every fold of a cross-validation.
        ddof: delta degrees of freedom of the std over runs.
        name: what our row is called ("this run"; `cv_report`: "this CV (5 folds)").
        against: the published row the difference is taken to: a role, "paper" (the
            paper's own method) or "baseline" (its reference, e.g. for our `baseline` task),
            or a row's "method" (an ablation row, e.g. Hermoza et al.'s "Sal"); a group
            without such a row compares with its "paper" row.

    Returns:
        dict: the table's description and "groups": [{"label", "rows"}], each row with
        "method", "kind" ("published", "ours", "difference", then "chance": the chance level of
        a localization table, "counts": the test images behind each of our values), "values",
        and where present "std", "n", "paired_values", "paired_std".
    """
    experiments = {r.get("experiment") for r in runs} - {None}
    label = _run_label(runs, name)
    test_tuned = table.get("threshold_selection") == "test-tuned"
    groups, compared = [], False
    for group, rows in _groups(table):
        out_rows = []
        for row in rows:
            method = row["method"] + (" [test-tuned]" if test_tuned and row["role"] == "paper"
                                      else "")
            out = {"method": method, "role": row["role"], "kind": "published",
                   "values": row["values"], "std": row.get("std")}
            if "paired_values" in row:
                out["paired_values"] = row["paired_values"]
            out_rows.append(out)
        reference = next((r for r in rows if against in (r["role"], r["method"])), None)
        if reference is None:
            reference = next(r for r in rows if r["role"] == "paper")
        experiment = reference.get("experiment", table.get("experiment"))
        if experiments and experiment is not None and experiment not in experiments:
            groups.append({"label": group, "rows": out_rows})
            continue
        compared = True
        metric = reference.get("metric", table["metric"])
        threshold = reference.get("threshold")
        ours = {"method": label, "role": "ours", "kind": "ours",
                **_ours_row(runs, metric, threshold, table["columns"], ddof)}
        diff = {"method": f"{name} - paper ({reference['method']})", "role": "ours",
                "kind": "difference", "values": _difference(ours["values"], reference["values"])}
        if "paired_metric" in table:
            paired = _ours_row(runs, table["paired_metric"], threshold, table["columns"], ddof)
            ours["paired_values"], ours["paired_std"] = paired["values"], paired["std"]
            diff["paired_values"] = _difference(paired["values"], reference["paired_values"])
        groups.append({"label": group, "rows": out_rows + [ours, diff] + _extra_rows(
            runs, metric, threshold, table["columns"], ddof)})
    notes = _notes(table, runs)
    if not compared:
        notes.append(f"Not compared: {name} reproduces experiment "
                     f"{', '.join(sorted(experiments))}, not this table's.")
    keys = ("id", "reference", "caption", "setting", "metric", "layout", "decimals",
            "group_label", "columns", "column_labels")
    return {**{k: table[k] for k in keys}, "wrap": table.get("wrap"),
            "paired_decimals": table.get("paired_decimals"), "notes": notes, "groups": groups}


def compare(published, runs, ddof=1, name="this run", against="paper"):
    """`compare_table` for every table of a published file."""
    return [compare_table(t, runs, ddof, name, against) for t in published["tables"]]


# --- every metric of a run ---------------------------------------------------------------

def _series(runs):
    """[(label, metric, threshold)] of every metric present in any run, in METRICS order."""
    series = []
    inclusive = any(r.get("localization", {}).get("inclusive") for r in runs)
    for metric in METRICS:
        if metric in THRESHOLDED_METRICS:
            keys = set()
            for r in runs:
                parent = (r.get("localization", {}).get(metric.split(".")[1], {})
                          if metric in LOCALIZATION_METRICS else r.get("afp", {}))
                keys.update(parent)
            op = ">=" if inclusive and metric in LOCALIZATION_METRICS else ">"
            for key in sorted(keys, key=float):
                series.append((f"{METRIC_NAMES[metric]} {op} {key}", metric, key))
        elif any(metric in r for r in runs):
            series.append((METRIC_NAMES[metric], metric, None))
    return series


def all_metrics_table(runs, ddof=1, decimals=3):
    """Every metric of the runs (rows), per class and mean (columns, 8 a block), as a
    `compare_table`-shaped dict."""
    present = set()
    for r in runs:
        for _, metric, threshold in _series([r]):
            present.update(metric_table(r, metric, threshold)["per_class"])
    columns = [c for c in CLASS_NAMES if c in present] + [MEAN]
    rows = [{"method": label, "role": "ours", "kind": "metric",
             **_ours_row(runs, metric, threshold, columns, ddof)}
            for label, metric, threshold in _series(runs)]
    for label, metric in (("positive test images", "auc"),
                          ("test images with a box", "localization.iou")):
        series = next(((m, t) for _, m, t in _series(runs) if m == metric), None)
        if series is not None:
            rows.append({"method": f"n ({label})", "role": "ours", "kind": "counts",
                         "values": _counts_row(runs, *series, columns)})
    return {"id": "all_metrics", "reference": "Per class and mean", "caption": "",
            "setting": "", "metric": None, "layout": "classes_across", "decimals": decimals,
            "group_label": None, "columns": columns, "column_labels": columns,
            "wrap": len(BOXED_CLASSES), "paired_decimals": None, "notes": [],
            "groups": [{"label": None, "rows": rows}]}


# --- Markdown -----------------------------------------------------------------------------

def _format(value, decimals, std=None, signed=False):
    if value is None:
        return MISSING
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    return text if std is None else f"{text} ± {std:.{decimals}f}"


def _cells(row, table):
    """The printed cells of one row of a compared table."""
    decimals = table["decimals"]
    if row["kind"] == "counts":
        return [MISSING if v is None else str(v) for v in row["values"]]
    signed = row["kind"] == "difference"
    std = row.get("std") or [None] * len(row["values"])
    cells = [_format(v, decimals, s, signed) for v, s in zip(row["values"], std)]
    if "paired_values" in row:
        published = row["kind"] == "published" and table["paired_decimals"] is not None
        paired_decimals = table["paired_decimals"] if published else decimals
        paired_std = row.get("paired_std") or [None] * len(cells)
        cells = [f"{c} ({_format(p, paired_decimals, s, signed)})"
                 for c, p, s in zip(cells, row["paired_values"], paired_std)]
    return cells


def _method_cell(row):
    if row["kind"] == "ours":
        return f"**{row['method']}**"
    if row["kind"] == "difference":
        return f"*Δ {row['method']}*"
    if row["kind"] in ("chance", "counts"):
        return f"*{row['method']}*"
    return f"paper: {row['method']}" if row["kind"] == "published" else row["method"]


def _markdown_grid(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def _column_header(table):
    return [c.replace("_", " ") if c != MEAN else "Mean" for c in table["columns"]]


def _across(table):
    """Classes as columns, one row per method (split every `wrap` columns as printed)."""
    header = _column_header(table)
    wrap = table["wrap"] or len(header)
    grouped = table["group_label"] is not None
    lines = []
    for start in range(0, len(header), wrap):
        head = ([table["group_label"]] if grouped else []) + ["Model"] + header[start:start + wrap]
        body = []
        for group in table["groups"]:
            for i, row in enumerate(group["rows"]):
                first = ([group["label"] if i == 0 else ""] if grouped else [])
                body.append(first + [_method_cell(row)] + _cells(row, table)[start:start + wrap])
        lines += _markdown_grid(head, body) + [""]
    return lines


def _down(table):
    """Classes as rows, one column per method (per group, e.g. per threshold)."""
    series = []
    for group in table["groups"]:
        for row in group["rows"]:
            prefix = f"{table['group_label']} {group['label']}: " if table["group_label"] else ""
            series.append((prefix + _method_cell(row), _cells(row, table)))
    head = ["Class"] + [label for label, _ in series]
    body = [[name] + [cells[i] for _, cells in series]
            for i, name in enumerate(_column_header(table))]
    return _markdown_grid(head, body) + [""]


def table_markdown(table):
    """Markdown lines of a compared table (`compare_table` or `all_metrics_table`)."""
    lines = [f"### {table['reference']}", ""]
    if table["caption"]:
        lines += [f"*{table['caption']}*", ""]
    if table["setting"]:
        lines += [f"Setting: {table['setting']}", ""]
    lines += _across(table) if table["layout"] == "classes_across" else _down(table)
    lines += [f"> {note}" for note in table["notes"]]
    return lines + ([""] if table["notes"] else [])


def jsonable(value):
    """A JSON-ready copy of a config (ml_collections ConfigDict, dict, ...) or of any value."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _figure_links(figures, out_dir):
    """{caption: path relative to out_dir} of existing figure files."""
    if figures is None:
        return {}
    items = figures.items() if isinstance(figures, dict) else (
        (pathlib.Path(p).stem, p) for p in figures)
    links = {}
    for caption, path in items:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"figure {caption!r}: {path} does not exist")
        links[str(caption)] = pathlib.Path(os.path.relpath(path, out_dir)).as_posix()
    return links


def details_markdown(details):
    """Markdown of a task's extra tables ({title: {"columns", "rows"}}, `Task.report_details`)."""
    lines = []
    for title, table in details.items():
        lines += [f"### {title}", "", "| " + " | ".join(table["columns"]) + " |",
                  "|" + "---|" * len(table["columns"])]
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table["rows"]]
        lines.append("")
    return lines


def _cell(value):
    if isinstance(value, float):
        return MISSING if math.isnan(value) else f"{value:.3f}"
    return MISSING if value is None else str(value)


def check_details(details):
    """`details` with every row as long as its columns; raises ValueError naming the table."""
    for title, table in details.items():
        if set(table) != {"columns", "rows"}:
            raise ValueError(f"report details {title!r} must have 'columns' and 'rows'")
        for row in table["rows"]:
            if len(row) != len(table["columns"]):
                raise ValueError(f"report details {title!r}: row {row!r} has {len(row)} "
                                 f"values for {len(table['columns'])} columns")
    return details


def report_markdown(title, header_lines, tables, all_metrics, figure_links, config,
                    details=None):
    """The Markdown of a report: header, the paper's tables, every metric, the task's
    details, figures, config."""
    lines = [f"# {title}", ""] + header_lines + [""]
    if tables:
        lines += ["## The paper's tables", "",
                  "Rows \"paper: ...\" are the paper's, as printed (its method, its "
                  "reference); then **this run** (for a cross-validation, the mean ± std over "
                  "its folds), *Δ*, this run minus the paper's own row, the chance level of a "
                  "localization accuracy (this run's regions placed at random) and *n*, the "
                  "test images behind each of our values (a value from 3 images is a coarse "
                  "one). \"—\": no value (e.g. no test image of the class, or a number the "
                  "paper does not give).", ""]
        for table in tables:
            lines += table_markdown(table)
    lines += ["## Every metric", ""] + table_markdown(all_metrics)
    if details:
        lines += ["## Details of the model", ""] + details_markdown(details)
    if figure_links:
        lines += ["## Figures", ""]
        lines += [f"![{caption}]({urllib.parse.quote(link)})\n"
                  for caption, link in figure_links.items()]
    if config is not None:
        lines += ["## Config", "", "<details><summary>config</summary>", "", "```json",
                  json.dumps(config, indent=2, sort_keys=True), "```", "", "</details>", ""]
    return "\n".join(lines)


def write_json(path, payload):
    """Writes `payload` as indented JSON; NaN is an error (a missing value is null)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, allow_nan=False)
        f.write("\n")


def write_report(out_dir, results, paper, *, config=None, checkpoint=None, figures=None,
                 against="paper", variant="", stage="", details=None):
    """Writes `report.json` and `report.md` of one evaluated run under `out_dir`.

    Args:
        out_dir: directory (created if missing), e.g. `<workdir>/eval`.
        results: the run's metrics (the dict described in `results.py`).
        paper: key of the published file, e.g. "li2018" (`available_papers()`).
        config: the run's config (ConfigDict or dict), stored in both files.
        checkpoint: the checkpoint the run was evaluated from.
        figures: {caption: path} or [paths] of PNGs (e.g. from `figures.py`), linked relative
            to `out_dir`.
        against: the published row our difference is taken to (`compare_table`).
        variant: the map variant evaluated (`Task.map_variants`; "" = the task's map).
        stage: the training stage the checkpoint comes from.
        details: the task's extra tables (`Task.report_details`).

    Returns:
        {"json": path, "markdown": path}.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    published = load_published(paper)
    run = normalize_results(results)
    details = jsonable(check_details(details or {}))
    name = f"this run ({variant})" if variant else "this run"
    tables = compare(published, [run], name=name, against=against)
    all_metrics = all_metrics_table([run])
    links = _figure_links(figures, out_dir)
    config = jsonable(config)
    checkpoint = None if checkpoint is None else str(checkpoint)
    payload = {"paper": paper, "compared_with": against, "variant": variant, "stage": stage,
               "source": published["source"], "checkpoint": checkpoint,
               "config": config, "results": run, "tables": tables, "details": details,
               "figures": links}
    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md"}
    write_json(paths["json"], payload)
    header = [f"Paper: {published['source']['citation']}", "",
              f"- checkpoint: `{checkpoint}`" if checkpoint else "- checkpoint: (not given)"]
    header += [f"- {key}: {value}" for key, value in (("stage", stage), ("map", variant))
               if value]
    header.append(f"- compared with: {against}")
    for key in ("split", "num_images", "experiment"):
        if key in run:
            header.append(f"- {key.replace('_', ' ')}: {run[key]}")
    if "thresholds" in run:
        chosen = run["thresholds"]
        values = ", ".join(f"{k} {v:g}" for k, v in chosen["values"].items() if v is not None)
        header.append(f"- binarisation thresholds: {chosen['selection']}"
                      + (f" ({values})" if chosen["selection"] != "fixed" else
                         f" ({next(iter(chosen['values'].values()), '')})"))
    markdown = report_markdown(f"Evaluation report ({paper})", header, tables, all_metrics,
                               links, config, details)
    paths["markdown"].write_text(markdown, encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}


def headline(results):
    """The few numbers `evaluate` prints at the end: the mean AUC and each localization
    metric's mean (with its chance level and the number of boxed test images)."""
    run = normalize_results(results)
    lines = []
    if "auc" in run:
        lines.append(f"mean AUC {_format(run['auc']['mean'], 3)} over "
                     f"{run.get('num_images', '?')} test images")
    chance = run.get("localization_chance", {})
    op = ">=" if run.get("localization", {}).get("inclusive") else ">"
    for kind in ("iou", "ior"):
        for key, table in run.get("localization", {}).get(kind, {}).items():
            boxes = sum((table.get("counts") or {}).values())
            level = chance.get(kind, {}).get(key, {}).get("mean")
            lines.append(f"localization accuracy {METRIC_NAMES['localization.' + kind][-3:]} "
                         f"{op} {key}: "
                         f"{_format(table['mean'], 3)} (chance {_format(level, 3)}; "
                         f"{boxes} boxes)")
    for metric in ("average_iou", "cdice"):
        if metric in run:
            lines.append(f"{METRIC_NAMES[metric]} {_format(run[metric]['mean'], 3)}")
    for key, table in run.get("afp", {}).items():
        lines.append(f"AFP at T(IoU) {key}: {_format(table['mean'], 3)}")
    return lines
