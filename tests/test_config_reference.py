"""docs/configs.md is the generated config reference (`chestxray_tf.config_reference`): it
matches the schema of every task, and every field has a meaning."""

import pathlib

from chestxray_tf import config_reference
from chestxray_tf.training import defaults

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "configs.md"


def test_docs_configs_md_is_the_generated_reference():
    assert DOC.read_text(encoding="utf-8") == config_reference.reference(), (
        "docs/configs.md is stale: python -m chestxray_tf.config_reference > docs/configs.md")


def test_every_field_of_every_task_is_documented_with_a_meaning():
    text = DOC.read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `") and line.count(" | ") >= 2:
            field, _, meaning = line[2:-2].split(" | ", 2)
            rows.setdefault(field.strip("`"), []).append(meaning.strip())
    assert {"li2018", "sedai2018", "rozenberg2019", "hermoza2020", "kim"} <= set(
        config_reference.library_tasks())
    for name in config_reference.library_tasks():
        for path, _, _ in config_reference.flatten(defaults.base_config(name)):
            assert path in rows, f"{name}: {path} missing from docs/configs.md"
            assert all(rows[path]), f"{path} has no meaning: comment the line that sets it"


def _sample():
    config = {}
    config.a = 1                    # the first
    config.b.c = "x"                # a meaning that goes
                                    # on here
    config.d = 2
    # a comment of its own
    config.e = (1, 2)               # e
    return config


def test_field_comments_reads_the_line_and_its_continuation():
    assert config_reference.field_comments(_sample) == {
        "a": "the first", "b.c": "a meaning that goes on here", "e": "e"}


def test_a_task_registered_outside_the_package_is_left_out(monkeypatch):
    from chestxray_tf import tasks as tasks_lib  # pylint: disable=import-outside-toplevel
    toy = type("Toy", (tasks_lib.get_task("li2018"),), {"name": "toy", "__module__": "toy"})
    monkeypatch.setitem(tasks_lib.TASKS, "toy", toy)
    assert "toy" not in config_reference.library_tasks()
    assert DOC.read_text(encoding="utf-8") == config_reference.reference()


def test_none_able_fields_are_marked():
    rows = {p: n for p, _, n in config_reference.flatten(defaults.base_config("li2018"))}
    assert rows["model.weights"] and rows["model.smoothing"] and not rows["model.grid"]
