"""docs/configs.md: every config field with its default and meaning, generated from the schema.

The fields and defaults come from `training.defaults.base_config(task)` for every task of the
registry; the meaning of a field is the comment on the line that sets it (and the comment-only
lines under it) in `training/defaults.py` or in the task's `default_config`, so the reference
and the code cannot drift (`tests/test_config_reference.py` compares the file with this
output), and so are the study's (`study.config.study_config`). The config files of `configs/`
are listed with the first paragraph of their docstrings. Regenerate with `python -m chestxray_tf.config_reference > docs/configs.md`.
"""

import ast
import inspect
import io
import os
import re
import tokenize

from ml_collections import config_dict

from chestxray_tf import tasks as tasks_lib
from chestxray_tf.study import config as study_config
from chestxray_tf.training import defaults

_ASSIGNMENT = re.compile(r"\s*(\w+)\.([\w.]+)\s*=")
_ALIAS = re.compile(r"\s*(\w+)\s*=\s*config\.([\w.]+)\s*=")  # m = config.model = ...
SHARED_SECTIONS = ("task", "name", "seed", "data", "train", "eval")
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


def field_comments(function):
    """{"data.manifest": "path of manifest.json (or its folder)", ...}: the comment of each
    `config.a.b = ...` line of `function`'s source (or `m.b = ...` after `m = config.a =
    ...`), continued by the comment-only lines right under it."""
    source = inspect.getsource(function)
    comments, code_lines = {}, {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.setdefault(token.start[0], True)
    out, current, aliases = {}, None, {"config": ""}
    for number, line in enumerate(source.splitlines(), start=1):
        alias = _ALIAS.match(line)
        if alias:
            aliases[alias.group(1)] = alias.group(2) + "."
        found = _ASSIGNMENT.match(line)
        if found and number in code_lines and found.group(1) in aliases:
            current = aliases[found.group(1)] + found.group(2)
            if number in comments:
                out[current] = comments[number]
            else:
                current = None
        elif current and number in comments and number not in code_lines:
            out[current] += " " + comments[number]
        else:
            current = None
    return out


def flatten(config, prefix=""):
    """[(dotted path, value, None-able)] of every leaf field of a ConfigDict (sorted, as
    ConfigDict keeps them); None-able: declared with `config_dict.placeholder`."""
    rows = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, config_dict.ConfigDict):
            rows += flatten(value, path + ".")
        else:
            field = config._fields[key]  # pylint: disable=protected-access
            rows.append((path, value, isinstance(field, config_dict.FieldReference)))
    return rows


PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _value(value):
    """The default as code; a file of the package is shown relative to it (the reference is
    the same wherever the package is installed)."""
    if isinstance(value, str) and value.startswith(PACKAGE_DIR + os.sep):
        value = "chestxray_tf/" + os.path.relpath(value, PACKAGE_DIR)
    return "`" + repr(value).replace("|", "\\|") + "`"


def _meaning(path, comments):
    """The comment of `path`, else of its nearest section set with one (a section given as
    a dict, `config.stages.crf = ConfigDict({"num_steps": 1000})  # ...`)."""
    parts = path.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in comments:
            return comments[".".join(parts[:end])]
    return ""


def _table(rows, comments):
    lines = ["| field | default | meaning |", "|---|---|---|"]
    for path, value, none_able in rows:
        meaning = _meaning(path, comments).replace("|", "\\|")
        default = _value(value) + (" (or None)" if none_able and value is not None else "")
        lines.append(f"| `{path}` | {default} | {meaning} |")
    return lines


def library_tasks():
    """The names of the registry's tasks defined in this package (not a test's toy task)."""
    return sorted(name for name, task in tasks_lib.TASKS.items()
                  if task.__module__.startswith("chestxray_tf."))


def config_files():
    """[(file name, first paragraph of its docstring)] of configs/*.py."""
    out = []
    for name in sorted(os.listdir(CONFIGS_DIR)):
        if name.endswith(".py") and not name.startswith("_"):
            with open(os.path.join(CONFIGS_DIR, name), encoding="utf-8") as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
            out.append((name, " ".join(doc.split("\n\n")[0].split())))
    return out


def reference():
    """The Markdown of docs/configs.md."""
    shared = field_comments(defaults.shared_config)
    lines = [
        "# Config reference",
        "",
        "Generated by `python -m chestxray_tf.config_reference > docs/configs.md` from the",
        "schema (`chestxray_tf/training/defaults.py` and each task's `default_config`); a",
        "test fails when this file and the code differ. Set any field from the command line",
        "(`--config.train.batch_size=10`; a None-able field with `--config.model.weights=None`)",
        "and see the resolved config of a command, without running it, with `--print_config`",
        "(`python -m chestxray_tf.cli.train --config=configs/li2018_table2.py --print_config`).",
        "Relative paths are stored absolute in the run's `config.json`. A stage of a task",
        "(`## Task` sections) trains with `config.train` as below, except for the fields its",
        "`config.stages.<stage>` section sets (`--config.stages.<stage>.num_steps=...`).",
        "",
        "## Config files",
        "",
        "`--config=configs/FILE.py[:ARGS]`. Every file takes `:tiny`, the smoke mode: the same",
        "experiment and every stage at test sizes (64 px, tiny backbones, a few steps, no",
        "weights to download), a few minutes on a laptop CPU: the way to try a paper's config",
        "before a GPU run (`--config=configs/li2018_table2.py:tiny`, or with other arguments,",
        "`:tiny,grid=12`).",
        "",
        "| file | what it runs |",
        "|---|---|",
    ]
    lines += [f"| `configs/{name}` | {doc.replace('|', '/')} |" for name, doc in config_files()]
    base = defaults.shared_config()
    lines += ["", "## Shared fields (every task)", ""]
    lines += _table(flatten(base), shared)
    for name in library_tasks():
        task = tasks_lib.get_task(name)
        own = flatten(task.default_config())
        lines += ["", f"## Task `{name}`", "",
                  " ".join((inspect.getdoc(task) or "").split("\n\n")[0].split()), ""]
        lines += _table(own, field_comments(task.default_config)) if own else ["(no fields)"]
    lines += ["", "## Study (`cli.study`, `configs/study.py`)", "",
              " ".join((inspect.getdoc(study_config.study_config) or "").split()), ""]
    lines += _table(flatten(study_config.study_config()),
                    field_comments(study_config.study_config))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
