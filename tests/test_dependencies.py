"""Every dependency pinned in setup.py is used: imported by the library or its binaries
(tensorboard excepted: it is the viewer of the logs the trainer writes)."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"absl-py": "absl", "ml-collections": "ml_collections", "pillow": "PIL"}
NOT_IMPORTED = {"tensorboard": "the `tensorboard --logdir` viewer the binaries point to"}


def _pinned(names):
    return [re.split(r"[=<>\[]", requirement)[0] for requirement in names]


def _imported_top_level():
    found = set()
    for folder in ("chestxray_tf", "tfrecords_tools"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    found.add(node.module.split(".")[0])
    return found


def test_every_pinned_dependency_is_imported():
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    requires = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES")
    pinned = _pinned(ast.literal_eval(requires))
    assert pinned, "no INSTALL_REQUIRES in setup.py"
    imported = _imported_top_level()
    unused = [name for name in pinned if name not in NOT_IMPORTED
              and IMPORT_NAMES.get(name, name).replace("-", "_") not in imported]
    assert not unused, f"pinned in setup.py but imported nowhere: {unused}"
    assert all(re.search(r"==\d", r) for r in ast.literal_eval(requires)), "pin every version"
