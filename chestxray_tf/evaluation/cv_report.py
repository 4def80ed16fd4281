"""The cross-validation report: mean ± standard deviation over folds (SPEC §1, §6).

Li et al. 2018 (Sec. 4.1-4.2) run a 5-fold cross-validation and print each value of Tables 1
and 2 as "mean ± spread over the folds" (e.g. `0.80 ± 0.01`), which the text calls "standard
errors" without a formula; Rozenberg et al. follow the same protocol. The spread here is the
sample standard deviation over folds, `numpy.std(values, ddof=1)` (`ddof` is an argument; the
standard error of the mean would be this / sqrt(folds)). A fold without a value for a cell
(e.g. no test image of a class) is left out of that cell's mean and std, and "n" says how many
folds it has.

`write_cv_report(out_dir, fold_reports)` reads the per-fold `report.json` files written by
`report.write_report` and writes

* `cv_report.json`: every metric of `results` (see `results.py`) as
  {"mean", "std", "n", "folds": [per-fold values]}, and the paper's tables with our mean ± std;
* `cv_report.md`: the paper's tables in the paper's layout with `mean ± std` in our row.
"""

import json
import math
import os
import pathlib

from chestxray_tf.evaluation.paper_tables import load_published
from chestxray_tf.evaluation.report import (all_metrics_table, compare, fold_statistics,
                                            report_markdown, write_json)
from chestxray_tf.evaluation.results import normalize_results

SAMPLE_STD_DDOF = 1


def load_fold_reports(paths):
    """[(path, report dict with normalised results)] of per-fold report.json files, which must
    all report on the same paper."""
    if not paths:
        raise ValueError("no fold report to aggregate")
    reports = []
    for path in paths:
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"fold report {path} does not exist (has the fold been "
                                    "evaluated?)")
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"fold report {path} is not valid JSON: {err}") from err
        if not isinstance(report, dict) or {"paper", "results"} - set(report):
            raise ValueError(f"fold report {path} is not a report.json of write_report (it "
                             "needs 'paper' and 'results')")
        try:
            report["results"] = normalize_results(report["results"])
        except ValueError as err:
            raise ValueError(f"fold report {path}: {err}") from err
        reports.append((path, report))
    papers = {report["paper"] for _, report in reports}
    if len(papers) > 1:
        raise ValueError(f"the fold reports are about different papers: {sorted(papers)}")
    return reports


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def aggregate(values, ddof=SAMPLE_STD_DDOF, path="results"):
    """Mean ± std over folds of one entry of `results`, recursively.

    Args:
        values: the entry in every fold (None where a fold lacks it).
        ddof: delta degrees of freedom of the std.
        path: the entry's name, for errors.

    Returns:
        dicts recurse; a number becomes {"mean", "std", "sem", "n", "folds"} (sem = std /
        sqrt(n), the standard error of the mean: Li et al. report "standard errors"); any
        other value (e.g. "inclusive", the threshold selection) must agree over the folds and
        is kept.
    """
    present = [v for v in values if v is not None]
    if any(isinstance(v, dict) for v in present):
        if not all(isinstance(v, dict) for v in present):
            raise ValueError(f"{path} is a dict in some folds and not in others")
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {k: aggregate([None if v is None else v.get(k) for v in values], ddof,
                             f"{path}.{k}") for k in keys}
    if all(_is_number(v) for v in present):
        mean, std, n = fold_statistics(values, ddof)
        sem = None if std is None else std / math.sqrt(n)
        return {"mean": mean, "std": std, "sem": sem, "n": n, "folds": list(values)}
    distinct = sorted({json.dumps(v) for v in present})
    if len(distinct) > 1:
        raise ValueError(f"{path} differs between folds: {', '.join(distinct)}")
    return present[0]


def _folds(count):
    return f"{count} fold{'' if count == 1 else 's'}"


def write_cv_report(out_dir, fold_reports, *, ddof=SAMPLE_STD_DDOF):
    """Writes `cv_report.json` and `cv_report.md` under `out_dir`.

    Args:
        out_dir: directory (created if missing), e.g. the cross-validation's workdir.
        fold_reports: paths of the folds' report.json files, in fold order.
        ddof: 1 = sample standard deviation over folds (default), 0 = population.

    Returns:
        {"json": path, "markdown": path}.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = load_fold_reports(fold_reports)
    tested = [((report.get("config") or {}).get("data") or {}).get("test_fold")
              for _, report in reports]
    repeated = sorted({f for f in tested if f is not None and tested.count(f) > 1})
    if repeated:
        raise ValueError(f"fold(s) {repeated} are tested by more than one report "
                         f"({', '.join(str(p) for p, _ in reports)}): a cross-validation "
                         "averages distinct folds")
    paper = reports[0][1]["paper"]
    against = reports[0][1].get("compared_with", "paper")
    published = load_published(paper)
    runs = [report["results"] for _, report in reports]
    folds = [{"report": pathlib.Path(os.path.relpath(path, out_dir)).as_posix(),
              "checkpoint": report.get("checkpoint")} for path, report in reports]
    std_name = f"standard deviation over folds, numpy.std(ddof={ddof})"
    payload = {"paper": paper, "source": published["source"], "folds": folds,
               "std": std_name, "ddof": ddof, "results": aggregate(runs, ddof),
               "tables": compare(published, runs, ddof, name=f"this CV ({_folds(len(runs))})",
                                 against=against)}
    paths = {"json": out_dir / "cv_report.json", "markdown": out_dir / "cv_report.md"}
    write_json(paths["json"], payload)
    header = [f"Paper: {published['source']['citation']}", "",
              f"Mean ± {std_name}, over {_folds(len(runs))}:", ""]
    header += [f"- [{fold['report']}]({fold['report']}), checkpoint `{fold['checkpoint']}`"
               for fold in folds]
    markdown = report_markdown(f"Cross-validation report ({paper})", header,
                               payload["tables"], all_metrics_table(runs, ddof), {}, None)
    paths["markdown"].write_text(markdown, encoding="utf-8")
    return {k: str(v) for k, v in paths.items()}
