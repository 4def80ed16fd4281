"""Tests of chestxray_tf/evaluation/paper_tables.py: loading and checking the published files."""

import pytest

from chestxray_tf.evaluation import paper_tables


def load(paper):
    return paper_tables.load_published(paper)


def test_the_five_papers_are_available():
    assert paper_tables.available_papers() == ("hermoza2020", "kim", "li2018", "rozenberg2019",
                                               "sedai2018")


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["tables"][0]["columns"].__setitem__(0, "Atelectasys"), "canonical"),
    (lambda s: s["tables"][0]["rows"][0]["values"].pop(), "one per column"),
    (lambda s: s["tables"][0]["rows"][1].__setitem__("role", "baseline"), "exactly one"),
    (lambda s: s["tables"][1]["rows"][0].pop("threshold"), "needs a threshold"),
    (lambda s: s["tables"][0].__setitem__("metric", "accuracy"), "metric"),
])
def test_check_published_names_the_problem(mutate, message):
    spec = load("li2018")
    mutate(spec)
    with pytest.raises(ValueError, match=message):
        paper_tables.check_published(spec, "li2018.json")


def test_unknown_paper_is_a_clear_error():
    with pytest.raises(ValueError, match="li2018"):
        paper_tables.load_published("li2017")
