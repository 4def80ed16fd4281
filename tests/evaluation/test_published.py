"""Tests of chestxray_tf/evaluation/published/*.json: every published number is re-read from the
papers' text in ../shared/papers by regex."""

import fnmatch
import json
import pathlib
import re

import pytest

from chestxray_tf.evaluation import paper_tables
from chestxray_tf.labels import CLASS_INDEX, canonical_name

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PAPERS = REPO_ROOT / ".." / "shared" / "papers"

# (rows, columns) of every table, counted in the papers.
TABLE_SIZES = {
    "li2018": {"table1": (2, 14), "table2": (14, 8), "ior": (14, 8)},
    "rozenberg2019": {"table1_iou": (4, 8), "table1_ior": (4, 8)},
    "kim": {"table1": (18, 9), "table2": (6, 9), "table3": (5, 15), "table4": (3, 9)},
    "sedai2018": {"table1": (6, 8)},
    "hermoza2020": {"table1": (5, 15), "table2": (7, 9), "table3": (6, 9)},
}

# The papers' column headers that are not class names.
HEADER_NAMES = {
    "Ate.": "Atelectasis", "Car.": "Cardiomegaly", "Eff.": "Effusion", "Inf.": "Infiltration",
    "Mas.": "Mass", "Nod.": "Nodule", "Pn1.": "Pneumonia", "Pn2.": "Pneumothorax",
    "Atel": "Atelectasis", "Card": "Cardiomegaly", "Effu": "Effusion", "Infi": "Infiltration",
    "Nodu": "Nodule", "Pne1": "Pneumonia", "Pne2": "Pneumothorax", "Mean": "mean",
    "Pleural Thickening": "Pleural_Thickening", "Pleural thickening": "Pleural_Thickening",
}

NUMBER = r"\d+(?:\.\d+)?"


def load(paper):
    return paper_tables.load_published(paper)


def paper_rows(table_spec):
    """The rows printed in the paper (rows with an "origin", e.g. Hermoza et al.'s released
    code re-run, are shown beside them but are not in the paper's text)."""
    return [r for r in table_spec["rows"] if "origin" not in r]


def table(paper, table_id):
    spec = next(t for t in load(paper)["tables"] if t["id"] == table_id)
    return {**spec, "rows": paper_rows(spec)}


def paper_text(paper):
    assert PAPERS.is_dir(), f"{PAPERS} is missing: the tests need ../shared beside the repo"
    return (PAPERS / load(paper)["source"]["file"]).read_text(encoding="utf-8")


def plain(cell):
    """A cell without the extraction's markup: <b>, <i>, $, {\\it ...}, braces."""
    cell = re.sub(r"</?[bi]>", "", cell)
    cell = cell.replace("\\it", "").replace("\\pm", "±").replace("\\ ", " ")
    return re.sub(r"[${}]", "", cell).strip()


def mean_and_std(cell):
    """(value, std or None) of a cell such as '0.71 ± 0.05' or '0.69'."""
    match = re.fullmatch(rf"({NUMBER})\s*(?:±\s*({NUMBER}))?", plain(cell))
    assert match, f"unreadable cell {cell!r}"
    return float(match[1]), None if match[2] is None else float(match[2])


def tab_block(text, header_prefix, occurrence=0):
    """(header cells, row cells) of the tab-separated table whose header line starts with
    header_prefix (the occurrence-th such table), up to the next blank line."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header_prefix)]
    start = starts[occurrence]
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append(line.split("\t"))
    return lines[start].split("\t"), rows


def assert_across(spec, header, rows, grouped):
    """Compare a classes-across table of the JSON with the parsed paper table."""
    width = len(spec["columns"])
    assert [plain(h) for h in header[-width:]] == spec["column_labels"]
    assert len(rows) == len(spec["rows"])
    group = None
    for cells, row in zip(rows, spec["rows"]):
        if grouped:
            group = plain(cells[0]) or group
            assert row["group"] == group
        assert row["method"].startswith(plain(cells[-width - 1])), (row["method"], cells)
        parsed = [mean_and_std(c) for c in cells[-width:]]
        assert row["values"] == [v for v, _ in parsed], row["method"]
        stds = [s for _, s in parsed]
        assert row.get("std", [None] * width) == stds, row["method"]


def assert_down(spec, header, rows):
    """Compare a classes-down table (one paper column per method) with the JSON rows."""
    assert [plain(h) for h in header[1:]] == [plain(r["method"]) for r in spec["rows"]]
    assert [plain(cells[0]) for cells in rows] == spec["column_labels"]
    for j, row in enumerate(spec["rows"]):
        assert row["values"] == [mean_and_std(cells[1 + j])[0] for cells in rows], row["method"]


@pytest.mark.parametrize("paper", sorted(TABLE_SIZES))
def test_file_parses_and_names_its_paper(paper):
    spec = load(paper)
    assert spec["source"]["key"] == paper
    assert (PAPERS / spec["source"]["file"]).is_file()
    assert spec["source"]["citation"]


@pytest.mark.parametrize("paper", sorted(TABLE_SIZES))
def test_table_sizes_match_the_papers(paper):
    spec = load(paper)
    sizes = {t["id"]: (len(paper_rows(t)), len(t["columns"])) for t in spec["tables"]}
    assert sizes == TABLE_SIZES[paper]
    for t in spec["tables"]:
        for row in t["rows"]:
            for key in ("values", "std", "paired_values"):
                assert key not in row or len(row[key]) == len(t["columns"])


@pytest.mark.parametrize("paper", sorted(TABLE_SIZES))
def test_columns_are_canonical_and_match_the_headers(paper):
    for t in load(paper)["tables"]:
        for column, label in zip(t["columns"], t["column_labels"]):
            assert column == "mean" or column in CLASS_INDEX
            expected = HEADER_NAMES.get(label) or canonical_name(label)
            assert column == expected, (t["id"], label)


@pytest.mark.parametrize("paper", sorted(TABLE_SIZES))
def test_mean_columns_are_the_mean_of_the_classes(paper):
    """The papers' Mean column agrees with its row to rounding, except one printed value."""
    mismatches = set()
    for t in load(paper)["tables"]:
        if t["columns"][-1] != "mean":
            continue
        for row in t["rows"]:
            values = row["values"][:-1]
            total = 0.0
            for v in values:
                total += v
            if abs(total / len(values) - row["values"][-1]) > 10 ** -t["decimals"] + 1e-9:
                mismatches.add((t["id"], row["method"]))
    expected = {("table1", "Li et al. [13]")} if paper == "hermoza2020" else set()
    assert mismatches == expected


def test_li2018_table1_reread_from_the_text():
    text = paper_text("li2018")
    spec = table("li2018", "table1")
    header_a, rows_a = tab_block(text, "Disease\t", 0)
    header_b, rows_b = tab_block(text, "Disease\t", 1)
    labels = header_a[1:] + header_b[1:]
    assert labels == spec["column_labels"]
    for row, name in zip(spec["rows"], ("baseline", "ours")):
        cells = [c for r in (rows_a, rows_b) for c in next(x for x in r if x[0] == name)[1:]]
        parsed = [mean_and_std(c) for c in cells]
        assert row["values"] == [v for v, _ in parsed]
        assert row.get("std", [None] * 14) == [s for _, s in parsed]


def test_li2018_table2_reread_from_the_text():
    header, rows = tab_block(paper_text("li2018"), "T(IoU)\tModel\t")
    assert_across(table("li2018", "table2"), header, rows, grouped=True)


def test_li2018_text_quotes_agree_with_table2():
    """Sec. 4.2: our Cardiomegaly at T(IoU)=0.6 is 73.42% (Table 2: 0.73)."""
    text = paper_text("li2018")
    quoted = float(re.search(r"our \"Cardiomegaly\" accuracy is still (\d+\.\d+)%", text)[1])
    t = table("li2018", "table2")
    ours = next(r for r in t["rows"] if r["group"] == "0.6" and r["method"] == "ours")
    assert ours["values"][t["columns"].index("Cardiomegaly")] == round(quoted / 100, 2)


def test_li2018_ior_table_has_no_values():
    """The T(IoR) comparison is only in the supplementary material, which we do not have."""
    text = paper_text("li2018")
    assert "supplementary material for the comparison" in text
    t = table("li2018", "ior")
    assert all(v is None for row in t["rows"] for v in row["values"])
    assert [r["threshold"] for r in t["rows"] if r["role"] == "paper"] == [
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


@pytest.mark.parametrize("table_id, title, end", [
    ("table1_iou", "IoU accuracy", "IoR accuracy"),
    ("table1_ior", "IoR accuracy", "Evaluation Metrics"),
])
def test_rozenberg2019_table1_reread_from_the_text(table_id, title, end):
    text = paper_text("rozenberg2019")
    section = text[text.index(f"\n{title}\n"):text.index(end, text.index(f"\n{title}\n") + 1)]
    rows = re.findall(rf"^(?:(\d+%) )?(ours|ref\.) ((?:{NUMBER} ?)+)$", section, re.M)
    spec = table("rozenberg2019", table_id)
    assert len(rows) == len(spec["rows"])
    group = None
    for (g, method, numbers), row in zip(rows, spec["rows"]):
        group = g or group
        assert (row["group"], row["method"].split(" ")[0]) == (group, method)
        assert row["values"] == [float(x) for x in numbers.split()]
    atelectasis, effusion = re.search(r"\((\d\.\d+) and (\d\.\d+), respectively\)", text).groups()
    first = table("rozenberg2019", "table1_iou")["rows"][0]
    assert (first["values"][0], first["values"][2]) == (float(atelectasis), float(effusion))


@pytest.mark.parametrize("table_id, prefix, occurrence, layout", [
    ("table1", "T(IoU)\tModel\tAte.", 0, "across"),
    ("table2", "T(IoU)\tModel\tAte.", 1, "across"),
    ("table3", "Pathology\t", 0, "down"),
    ("table4", "Model\tAte.", 0, "across"),
])
def test_kim_tables_reread_from_the_text(table_id, prefix, occurrence, layout):
    header, rows = tab_block(paper_text("kim"), prefix, occurrence)
    spec = table("kim", table_id)
    if layout == "down":
        assert_down(spec, header, rows)
    else:
        assert_across(spec, header, rows, grouped=spec["group_label"] is not None)


def test_sedai2018_table1_reread_from_the_text():
    text = paper_text("sedai2018")
    spec = table("sedai2018", "table1")
    methods = [(r["group"], r["method"]) for r in spec["rows"]]
    assert methods == [(g, m) for g in ("0.3", "0.5") for m in ("RN-CAM", "DN-CAM", "A-CNN")]
    for i, name in enumerate(spec["column_labels"]):
        line = re.search(rf"^\|\s*{name}\s*\|(.*)$", text, re.M)[1]
        cells = [plain(c) for c in line.split("|")[:-1]]
        pairs = [re.fullmatch(rf"({NUMBER})\s*\(({NUMBER})\)?", c).groups() for c in cells]
        assert [r["values"][i] for r in spec["rows"]] == [float(a) for a, _ in pairs], name
        assert [r["paired_values"][i] for r in spec["rows"]] == [float(b) for _, b in pairs]
    mass, nodule = re.search(r"mass (\d\.\d+) and nodule (\d\.\d+)", text).groups()
    a_cnn = spec["rows"][2]["values"]
    assert (a_cnn[4], a_cnn[5]) == (float(mass), float(nodule))


@pytest.mark.parametrize("table_id, prefix, layout", [
    ("table1", "Label\t", "down"),
    ("table2", "Metric\tMethod\t", "across"),
    ("table3", "T(IoU)\tModel\t", "across"),
])
def test_hermoza2020_tables_reread_from_the_text(table_id, prefix, layout):
    header, rows = tab_block(paper_text("hermoza2020"), prefix)
    spec = table("hermoza2020", table_id)
    if layout == "down":
        assert_down(spec, header, rows)
    else:
        assert_across(spec, header, rows, grouped=True)


def test_hermoza2020_localization_is_marked_test_tuned():
    text = paper_text("hermoza2020")
    assert "selected for each class using the ground truth annotations" in text
    for table_id in ("table2", "table3"):
        assert table("hermoza2020", table_id)["threshold_selection"] == "test-tuned"


def test_setup_ships_the_published_files():
    setup = (REPO_ROOT / "setup.py").read_text(encoding="utf-8")
    patterns = json.loads(re.search(r'package_data=\{"chestxray_tf": (\[[^\]]*\])\}', setup)[1])
    package = REPO_ROOT / "chestxray_tf"
    shipped = {p.name for p in package.rglob("*.json")
               if any(fnmatch.fnmatch(p.relative_to(package).as_posix(), pat) for pat in patterns)}
    assert {f"{paper}.json" for paper in TABLE_SIZES} <= shipped
