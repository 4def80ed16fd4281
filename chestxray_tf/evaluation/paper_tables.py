"""The papers' published numbers: one JSON file per paper in `published/` (SPEC §6).

Each file holds a "source" (key, citation, file name in ../shared/papers, notes) and the
paper's "tables", copied from the paper's text. A table:

    {"id", "reference": "Table 2", "caption", "setting" (the experiment it reports),
     "experiment" (optional id, matched against results["experiment"]),
     "metric": one of results.METRICS, "criterion": ">" | ">=" (localization tables),
     "threshold_selection": "test-tuned" (optional), "paired_metric" (optional: printed in
     parentheses, Sedai et al.'s "accuracy (AFP)"), "layout": "classes_across" | "classes_down"
     (as the paper prints it), "wrap" (optional: columns per printed block), "decimals",
     "group_label" (the paper's first column, e.g. "T(IoU)", or null), "column_labels" (the
     paper's headers), "columns" (canonical class names in the paper's order, "mean" for a Mean
     column), "rows": [{"method", "role": "paper" | "baseline" | "ablation", "group",
     "threshold", "metric" (overrides the table's), "experiment", "values", "std",
     "paired_values", "note", "origin" (a row not printed in the paper, e.g. "released code":
     the authors' code re-run, shown beside the paper's rows)}]}

"values" are aligned with "columns"; null is a number the paper does not give.
"""

import json
import pathlib

from chestxray_tf.evaluation.results import METRICS, THRESHOLDED_METRICS, number_or_none
from chestxray_tf.labels import CLASS_INDEX

PUBLISHED_DIR = pathlib.Path(__file__).resolve().parent / "published"

# The pseudo-class of a paper's "Mean" column.
MEAN = "mean"
LAYOUTS = ("classes_across", "classes_down")
ROLES = ("paper", "baseline", "ablation")
CRITERIA = (">", ">=")


def available_papers():
    """The keys of the published files, e.g. ('hermoza2020', 'kim', 'li2018', ...)."""
    return tuple(sorted(p.stem for p in PUBLISHED_DIR.glob("*.json")))


def load_published(paper):
    """The published tables of `paper` (a key of `available_papers()`), checked."""
    path = PUBLISHED_DIR / f"{paper}.json"
    if not path.is_file():
        raise ValueError(f"no published numbers for paper {paper!r}; expected one of "
                         f"{', '.join(available_papers())}")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    check_published(spec, str(path))
    return spec


def _require(mapping, keys, where):
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")


def _check_series(values, size, where):
    if not isinstance(values, list) or len(values) != size:
        raise ValueError(f"{where}: expected a list of {size} values (one per column)")
    for i, v in enumerate(values):
        number_or_none(v, f"{where}[{i}]")


def check_published(spec, source):
    """Raises ValueError naming `source`, the table and the row of anything malformed."""
    _require(spec, ("source", "tables"), source)
    _require(spec["source"], ("key", "citation", "file"), f"{source}: source")
    if not spec["tables"] or not all(t.get("rows") for t in spec["tables"]):
        raise ValueError(f"{source}: no tables, or a table without rows")
    for table in spec["tables"]:
        where = f"{source}: table {table.get('id', '?')}"
        _require(table, ("id", "reference", "caption", "setting", "metric", "layout", "decimals",
                         "group_label", "columns", "column_labels", "rows"), where)
        if table["metric"] not in METRICS or table["layout"] not in LAYOUTS:
            raise ValueError(f"{where}: metric {table['metric']!r} / layout {table['layout']!r} "
                             f"not in {METRICS} / {LAYOUTS}")
        if table.get("criterion", ">") not in CRITERIA:
            raise ValueError(f"{where}: criterion {table['criterion']!r} not in {CRITERIA}")
        columns = table["columns"]
        bad = [c for c in columns if c != MEAN and c not in CLASS_INDEX]
        if bad or len(set(columns)) != len(columns):
            raise ValueError(f"{where}: columns must be distinct canonical class names or "
                             f"{MEAN!r}; bad: {bad}")
        if len(table["column_labels"]) != len(columns):
            raise ValueError(f"{where}: {len(table['column_labels'])} column labels for "
                             f"{len(columns)} columns")
        papers_per_group = {}
        for i, row in enumerate(table["rows"]):
            _check_row(table, row, f"{where} row {i} ({row.get('method', '?')})")
            papers = papers_per_group.setdefault(row.get("group"), [])
            papers += [i] if row["role"] == "paper" else []
        for group, papers in papers_per_group.items():
            if len(papers) != 1:
                raise ValueError(f"{where}: group {group!r} needs exactly one row with role "
                                 f"'paper' (the row ours is compared with), has {len(papers)}")


def _check_row(table, row, where):
    _require(row, ("method", "role", "values"), where)
    if row["role"] not in ROLES:
        raise ValueError(f"{where}: role {row['role']!r} not in {ROLES}")
    size = len(table["columns"])
    for key in ("values", "std", "paired_values"):
        if key in row:
            _check_series(row[key], size, f"{where} {key}")
    if ("paired_values" in row) != ("paired_metric" in table):
        raise ValueError(f"{where}: a row has paired_values exactly when the table has a "
                         "paired_metric")
    metric = row.get("metric", table["metric"])
    if metric not in METRICS:
        raise ValueError(f"{where}: metric {metric!r} not in {METRICS}")
    if metric in THRESHOLDED_METRICS and "threshold" not in row:
        raise ValueError(f"{where}: metric {metric} needs a threshold")
    if (table["group_label"] is None) != ("group" not in row):
        raise ValueError(f"{where}: a row has a 'group' exactly when the table has a "
                         "group_label")
