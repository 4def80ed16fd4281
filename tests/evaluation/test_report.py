"""Tests of chestxray_tf/evaluation/report.py: report.json and report.md with the papers' tables,
our row and the difference."""

import json

import ml_collections
import numpy as np
import pytest

from chestxray_tf.evaluation import paper_tables, report
from chestxray_tf.evaluation.results import threshold_key
from chestxray_tf.labels import BOXED_CLASSES, CLASS_NAMES

LI_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def md_tables(text):
    """[(header cells, [row cells])] of the Markdown tables in text."""
    tables, current = [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = (cells, [])
            elif not set(line.strip()) <= set("|-"):
                current[1].append(cells)
        elif current is not None:
            tables.append(current)
            current = None
    return tables


def section(text, heading):
    """The text under `### heading` up to the next heading."""
    start = text.index(f"### {heading}\n")
    ends = [i for i in (text.find("\n##", start + 1),) if i > 0]
    return text[start:min(ends) if ends else len(text)]


def rows_by_method(table):
    """{method cell: cells after it} of a classes-across table without a group column."""
    header, rows = table
    return {cells[0]: cells[1:] for cells in rows}


def grouped_rows(table):
    """{(group, method cell): value cells} of a classes-across table with a group column."""
    _, rows = table
    out, group = {}, None
    for cells in rows:
        group = cells[0] or group
        out[(group, cells[1])] = cells[2:]
    return out


def per_class_values(seed, names, missing=()):
    rng = np.random.default_rng(seed)
    return {name: (None if name in missing else float(rng.uniform(0.05, 0.95)))
            for name in names}


def accuracy(seed, missing=("Pneumonia",), thresholds=LI_THRESHOLDS):
    """{T: TABLE} with a count of 0 (and a value of 0.0, as a careless caller may write) for
    the missing classes."""
    out = {}
    for i, t in enumerate(thresholds):
        values = per_class_values(seed + i, BOXED_CLASSES)
        counts = {name: 0 if name in missing else 10 + i for name in BOXED_CLASSES}
        values.update({name: 0.0 for name in missing})
        out[t] = {"per_class": values, "mean": 0.5, "counts": counts}
    return out


def full_results(seed=0, **extra):
    """A results dict with every metric of the five papers."""
    return {
        "auc": {"per_class": per_class_values(seed, CLASS_NAMES, missing=("Hernia",)),
                "mean": 0.8},
        "localization": {"iou": accuracy(seed + 10), "ior": accuracy(seed + 20),
                         "inclusive": False},
        "average_iou": {"per_class": per_class_values(seed + 30, BOXED_CLASSES), "mean": 0.3},
        "cdice": {"per_class": per_class_values(seed + 40, BOXED_CLASSES), "mean": 0.4},
        "afp": {t: {"per_class": {n: 2 * v for n, v in per_class_values(seed + 50 + i,
                                                                        BOXED_CLASSES).items()},
                    "mean": 1.0} for i, t in enumerate((0.3, 0.5))},
        "split": "test_fold",
        "num_images": 40,
        **extra,
    }


def write(tmp_path, paper, results, **kwargs):
    paths = report.write_report(tmp_path / "eval", results, paper, **kwargs)
    payload = json.loads(open(paths["json"]).read(), parse_constant=pytest.fail)
    return payload, open(paths["markdown"], encoding="utf-8").read()


def published_row(paper, table_id, method, group=None):
    table = next(t for t in paper_tables.load_published(paper)["tables"] if t["id"] == table_id)
    row = next(r for r in table["rows"] if r["method"] == method and r.get("group") == group)
    return dict(zip(table["columns"], row["values"])), dict(zip(table["columns"],
                                                                  row.get("std") or []))


def test_report_json_keeps_every_metric_config_and_checkpoint(tmp_path):
    config = ml_collections.ConfigDict({"model": {"grid": 16, "widths": (8, 16)}, "lr": 1e-3})
    payload, _ = write(tmp_path, "li2018", full_results(), config=config,
                       checkpoint=tmp_path / "ckpt-7")
    assert set(payload) == {"paper", "compared_with", "variant", "stage", "source",
                            "checkpoint", "config", "results", "tables", "details", "figures"}
    assert payload["config"] == {"model": {"grid": 16, "widths": [8, 16]}, "lr": 1e-3}
    assert payload["checkpoint"] == str(tmp_path / "ckpt-7")
    results = payload["results"]
    assert sorted(results["localization"]["iou"]) == [threshold_key(t) for t in LI_THRESHOLDS]
    expected = full_results()["localization"]["iou"][0.3]["per_class"]["Mass"]
    assert results["localization"]["iou"]["0.3"]["per_class"]["Mass"] == expected
    # A class without a test image is None, whatever value the caller wrote.
    assert results["localization"]["iou"]["0.3"]["per_class"]["Pneumonia"] is None
    assert results["auc"]["per_class"]["Hernia"] is None
    assert [t["id"] for t in payload["tables"]] == ["table1", "table2", "ior"]


def test_li2018_table2_shows_published_ours_and_difference(tmp_path):
    results = full_results()
    _, markdown = write(tmp_path, "li2018", results)
    tables = md_tables(section(markdown, "Table 2"))
    assert len(tables) == 1
    header, _ = tables[0]
    assert header[:2] == ["T(IoU)", "Model"]
    columns = header[2:]
    rows = grouped_rows(tables[0])
    for t in LI_THRESHOLDS:
        group = threshold_key(t)
        paper, paper_std = published_row("li2018", "table2", "ours", group)
        ours = rows[(group, "**this run**")]
        difference = rows[(group, "*Δ this run - paper (ours)*")]
        printed = rows[(group, "paper: ours")]
        for name, ours_cell, diff_cell, paper_cell in zip(columns, ours, difference, printed):
            name = name.replace(" ", "_")
            assert paper_cell == f"{paper[name]:.2f} ± {paper_std[name]:.2f}"
            if name == "Pneumonia":  # no test image in this run
                assert (ours_cell, diff_cell) == ("—", "—")
                continue
            value = results["localization"]["iou"][t]["per_class"][name]
            assert ours_cell == f"{value:.2f}"
            assert diff_cell == f"{value - paper[name]:+.2f}"
        reference, _ = published_row("li2018", "table2", "ref.", group)
        assert rows[(group, "paper: ref.")] == [f"{reference[n.replace(' ', '_')]:.2f}"
                                         for n in columns]


def test_li2018_table1_keeps_the_papers_two_blocks(tmp_path):
    results = full_results()
    _, markdown = write(tmp_path, "li2018", results)
    blocks = md_tables(section(markdown, "Table 1"))
    assert [len(header) for header, _ in blocks] == [8, 8]
    ours = {}
    for block in blocks:
        header, _ = block
        ours.update(zip(header[1:], rows_by_method(block)["**this run**"]))
    assert ours["Hernia"] == "—"
    assert ours["Pleural Thickening"] == f"{results['auc']['per_class']['Pleural_Thickening']:.2f}"


def test_table_mean_column_is_the_mean_over_its_classes(tmp_path):
    results = full_results()
    _, markdown = write(tmp_path, "kim", results)
    rows = grouped_rows(md_tables(section(markdown, "Table 1"))[0])
    values = results["localization"]["iou"][0.5]["per_class"]
    total, count = 0.0, 0
    for name in BOXED_CLASSES:
        if name != "Pneumonia":  # its count is 0
            total += values[name]
            count += 1
    assert rows[("0.5", "**this run**")][-1] == f"{total / count:.2f}"
    delta = rows[("0.5", "*Δ this run - paper (ResNet-50+Alignment+DM)*")][-1]
    assert delta == f"{total / count - 0.27:+.2f}"
    # Table 4's Mean is over its 8 AUC columns, not over the 14 classes.
    auc = results["auc"]["per_class"]
    mean8 = sum(auc[name] for name in BOXED_CLASSES) / 8
    assert rows_by_method(md_tables(section(markdown, "Table 4"))[0])["**this run**"][-1] == \
        f"{mean8:.2f}"


def test_classes_down_layout(tmp_path):
    results = full_results()
    _, markdown = write(tmp_path, "kim", results)
    header, rows = md_tables(section(markdown, "Table 3"))[0]
    assert header == ["Class", "paper: X. Wang et al. [18]", "paper: J. Cai et al. [19]",
                      "paper: *L. Zhe et al. [20]", "paper: *J. Liu et al. [21]", "paper: Ours",
                      "**this run**",
                      "*Δ this run - paper (Ours)*"]
    by_class = {cells[0]: cells[1:] for cells in rows}
    assert list(by_class) == [n.replace("_", " ") for n in CLASS_NAMES] + ["Mean"]
    assert by_class["Mass"][4:] == ["0.85", f"{results['auc']['per_class']['Mass']:.2f}",
                                    f"{results['auc']['per_class']['Mass'] - 0.85:+.2f}"]
    assert by_class["Hernia"][5:] == ["—", "—"]


def test_sedai2018_cells_pair_accuracy_and_afp(tmp_path):
    results = full_results()
    _, markdown = write(tmp_path, "sedai2018", results)
    header, rows = md_tables(section(markdown, "Table 1"))[0]
    ours = header.index("T(IoU) > 0.3: **this run**")
    mass = next(cells for cells in rows if cells[0] == "Mass")
    accuracy_value = results["localization"]["iou"][0.3]["per_class"]["Mass"]
    afp = results["afp"][0.3]["per_class"]["Mass"]
    assert mass[ours] == f"{accuracy_value:.2f} ({afp:.2f})"
    assert mass[ours - 1] == "0.48 (0.5)"  # A-CNN as printed
    assert mass[ours + 1] == f"{accuracy_value - 0.48:+.2f} ({afp - 0.5:+.2f})"


def test_hermoza2020_marks_test_tuned_thresholds(tmp_path):
    tuned = full_results(thresholds={"selection": "test-tuned", "values": {"Mass": 0.8}})
    _, markdown = write(tmp_path / "tuned", "hermoza2020", tuned)
    rows = grouped_rows(md_tables(section(markdown, "Table 3"))[0])
    assert ("0.3", "**this run, test-tuned thresholds**") in rows
    assert ("0.3", "paper: Ours [test-tuned]") in rows
    assert "tuned on the boxed test images" in section(markdown, "Table 3")
    assert "- binarisation thresholds: test-tuned" in markdown
    validated = full_results(thresholds={"selection": "validation", "values": {}})
    _, markdown = write(tmp_path / "validated", "hermoza2020", validated)
    rows = grouped_rows(md_tables(section(markdown, "Table 2"))[0])
    assert ("IoU", "**this run**") in rows and ("cDice", "paper: Mix [test-tuned]") in rows
    value = validated["cdice"]["per_class"]["Mass"]
    cdice = rows[("cDice", "**this run**")]
    assert cdice[4] == f"{value:.3f}"


def test_a_run_of_another_experiment_is_not_compared(tmp_path):
    _, markdown = write(tmp_path, "li2018", full_results(experiment="B"))
    table1 = section(markdown, "Table 1")
    assert "**this run**" not in table1 and "Not compared" in table1
    assert "**this run**" in section(markdown, "Table 2")
    _, markdown = write(tmp_path, "rozenberg2019", full_results(experiment="un20"))
    rows = grouped_rows(md_tables(section(markdown, "Table 1 (IoU accuracy)"))[0])
    assert ("20%", "**this run**") in rows and ("0%", "**this run**") not in rows


def test_a_different_hit_criterion_is_noted(tmp_path):
    results = full_results()
    _, markdown = write(tmp_path / "strict", "rozenberg2019", results)
    assert "overlap >= T; this run counts overlap > T" in markdown
    results["localization"]["inclusive"] = True
    _, markdown = write(tmp_path / "inclusive", "rozenberg2019", results)
    assert "this run counts" not in markdown


def test_every_metric_section(tmp_path):
    results = full_results()
    _, markdown = write(tmp_path, "li2018", results)
    blocks = md_tables(section(markdown, "Per class and mean"))
    rows = {}
    for header, body in blocks:
        for cells in body:
            rows.setdefault(cells[0], {}).update(zip(header[1:], cells[1:]))
    auc = results["auc"]["per_class"]
    defined = [v for v in auc.values() if v is not None]
    assert rows["AUC"]["Mean"] == f"{sum(defined) / len(defined):.3f}"
    assert rows["AUC"]["Edema"] == f"{auc['Edema']:.3f}"
    assert rows["accuracy IoR > 0.7"]["Pneumonia"] == "—"
    assert rows["AFP > 0.5"]["Nodule"] == f"{results['afp'][0.5]['per_class']['Nodule']:.3f}"
    assert "accuracy IoU > 0.1" in rows and "cDice" in rows and "average IoU" in rows


def test_figures_are_linked_relative_to_the_report(tmp_path):
    (tmp_path / "eval" / "figures").mkdir(parents=True)
    roc = tmp_path / "eval" / "figures" / "roc.png"
    gallery = tmp_path / "gallery Mass.png"
    roc.write_bytes(b"png")
    gallery.write_bytes(b"png")
    payload, markdown = write(tmp_path, "li2018", full_results(),
                              figures={"ROC curves": roc, "Mass": gallery})
    assert payload["figures"] == {"ROC curves": "figures/roc.png", "Mass": "../gallery Mass.png"}
    assert "![ROC curves](figures/roc.png)" in markdown
    assert "![Mass](../gallery%20Mass.png)" in markdown
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write(tmp_path, "li2018", full_results(), figures=[tmp_path / "missing.png"])


@pytest.mark.parametrize("paper", paper_tables.available_papers())
def test_every_paper_row_is_reported_with_ours_beside_it(tmp_path, paper):
    payload, markdown = write(tmp_path, paper, full_results())
    published = paper_tables.load_published(paper)
    assert len(payload["tables"]) == len(published["tables"])
    for compared, table in zip(payload["tables"], published["tables"]):
        rows = [r for g in compared["groups"] for r in g["rows"]]
        assert [r["values"] for r in rows if r["kind"] == "published"] == \
            [r["values"] for r in table["rows"]]
        for group in compared["groups"]:
            kinds = [r["kind"] for r in group["rows"] if r["kind"] not in ("chance", "counts")]
            assert kinds[-2:] == ["ours", "difference"]
            extra = [r["kind"] for r in group["rows"]][len(kinds):]
            assert set(extra) <= {"chance", "counts"}
        assert f"### {table['reference']}" in markdown


class Opaque:
    def __str__(self):
        return "<object>"


def test_jsonable():
    value = {"a": np.float32(0.5), "b": (1, np.int64(2)), "c": np.array([[1.0, np.nan]]),
             "d": float("inf"), 3: Opaque()}
    assert report.jsonable(value) == {"a": 0.5, "b": [1, 2], "c": [[1.0, None]], "d": None,
                                      "3": "<object>"}


def test_details_variant_and_a_method_row_as_reference(tmp_path):
    """A task's extra tables land in both files; `against` may name a published row's method
    (Hermoza et al.'s "Sal"): the difference is then taken to that row."""
    details = {"Relevance weights": {"columns": ["class", "block 2", "block 3"],
                                     "rows": [["Nodule", 0.625, 0.375]]}}
    results = {"average_iou": {"per_class": {name: 0.5 for name in BOXED_CLASSES}},
               "auc": {"per_class": {name: 0.5 for name in CLASS_NAMES}}}
    paths = report.write_report(tmp_path, results, "hermoza2020", against="Sal",
                                variant="sal", stage="joint", details=details)
    payload = json.loads(open(paths["json"]).read())
    assert payload["details"] == details and payload["variant"] == "sal"
    table2 = next(t for t in payload["tables"] if t["id"] == "table2")
    iou_group = next(g for g in table2["groups"] if g["label"] == "IoU")
    difference = next(r for r in iou_group["rows"] if r["kind"] == "difference")
    assert difference["method"].endswith("(Sal)")
    markdown = open(paths["markdown"]).read()
    assert "### Relevance weights" in markdown and "| Nodule | 0.625 | 0.375 |" in markdown
    assert "this run (sal)" in markdown
    with pytest.raises(ValueError, match="Relevance weights"):
        report.write_report(tmp_path / "bad", results, "hermoza2020", details={
            "Relevance weights": {"columns": ["class"], "rows": [["Nodule", 1.0]]}})


def test_counts_chance_and_paper_labels_beside_our_row(tmp_path):
    """Each compared group shows the test images behind our values (Cardiomegaly 0.67 from 3
    boxes reads as such), the chance level of a localization accuracy, and labels the
    published rows as the paper's."""
    counts = {name: i + 1 for i, name in enumerate(BOXED_CLASSES)}
    results = full_results()
    for t, table in results["localization"]["iou"].items():
        table["counts"] = counts
    results["localization_chance"] = {
        "iou": {t: {"per_class": {n: 0.01 * (i + 1) for i, n in enumerate(BOXED_CLASSES)}}
                for t in results["localization"]["iou"]},
        "inclusive": False}
    payload, markdown = write(tmp_path, "li2018", results)
    table2 = next(t for t in payload["tables"] if t["id"] == "table2")
    group = next(g for g in table2["groups"] if g["label"] == "0.3")
    rows = {r["kind"]: r for r in group["rows"]}
    columns = table2["columns"]
    assert rows["counts"]["values"] == [counts[c] for c in columns]
    chance = dict(zip(columns, rows["chance"]["values"]))
    assert chance["Mass"] == pytest.approx(0.01 * (BOXED_CLASSES.index("Mass") + 1))
    cardiomegaly = BOXED_CLASSES.index("Cardiomegaly")
    line = next(ln for ln in markdown.splitlines()
                if ln.startswith("|  | *n (test images with a box of the class)*"))
    assert line.split(" | ")[2 + cardiomegaly] == str(counts["Cardiomegaly"])
    assert "| 0.3 | paper: ref. |" in markdown and "|  | paper: ours |" in markdown
    # The AUC table has no chance row and no count unless the results give counts.
    table1 = next(t for t in payload["tables"] if t["id"] == "table1")
    assert {r["kind"] for g in table1["groups"] for r in g["rows"]} <= {
        "published", "ours", "difference"}
