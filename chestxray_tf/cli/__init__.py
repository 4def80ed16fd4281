"""Thin absl binaries: train, evaluate, cv, export, predict, demo.

What every binary shares lives here:

* a quiet start: TensorFlow's start-up lines (oneDNN, CUDA stubs, CPU features, the `cuInit`
  error of a machine without a GPU) are filtered out while TensorFlow loads; any other line
  it prints then is kept. `--debug` (or CHESTXRAY_TF_DEBUG=1) keeps everything.
* `run(main)`: a user error (a bad flag value, a missing file, a locked workdir: `ValueError`,
  `OSError`, `KeyError`) ends in one line `<binary>: <message>` and exit code 2; `--debug`
  shows its traceback. Anything else is a bug and keeps its traceback.
* `define_config(...)`: the `--config` flag (`ml_collections` config file), with
  `--config.a.b=None` for a None-able field (one declared with `config_dict.placeholder`),
  a missing config file named in one line, and `--print_config`: print the resolved config
  (paths made absolute, as config.json stores it) and exit without running.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile

DEBUG = os.environ.get("CHESTXRAY_TF_DEBUG") == "1" or "--debug" in sys.argv

# Lines TensorFlow prints while it loads that say nothing to a user of these binaries.
_START_UP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:. ]+\d+ \S+\] "
    r"|E\d{4} [\d:. ]+\d+ \S+\] failed call to cuInit"
    r"|To enable the following instructions:")


@contextlib.contextmanager
def _filtered_stderr():
    """Runs the block with file descriptor 2 captured, then writes back every captured line
    that is not start-up noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if not _START_UP_NOISE.match(line):
                    print(line, file=sys.stderr)


def _load_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    tf.config.list_physical_devices()  # the CUDA probe (and its cuInit line) happens here


if DEBUG:
    _load_tensorflow()
else:
    with _filtered_stderr():
        _load_tensorflow()

# pylint: disable=wrong-import-position
from absl import app, flags  # noqa: E402
from ml_collections import config_dict, config_flags  # noqa: E402

_DEBUG_FLAG = flags.DEFINE_bool("debug", False, "Show tracebacks of user errors and every "
                                "line TensorFlow prints at start-up.")
USER_ERRORS = (ValueError, OSError, KeyError)
_NONE_OVERRIDE = re.compile(r"--config\.([\w.]+)=(None|none|null)")


class UserError(ValueError):
    """A problem with what the user gave (a flag, a file): reported in one line."""


_LIBRARY_PATH = re.compile(r"[/\\](tensorflow|keras)[/\\]")


def _not_tensorflow_info(record):
    """False for an INFO (or DEBUG) record of TensorFlow's or Keras' own code."""
    return record.levelno >= logging.WARNING or not _LIBRARY_PATH.search(record.pathname)


def quiet_tensorflow():
    """Keeps TensorFlow's and Keras' own INFO lines (one per checkpoint write, per exported
    signature) out of the binaries' logs, whether they log through the "tensorflow" logger or
    through absl; our INFO lines and every warning stay."""
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    handler = absl_logging.get_absl_handler()
    if _not_tensorflow_info not in handler.filters:
        handler.addFilter(_not_tensorflow_info)


class ConfigFlag:
    """The `--config` flag of a binary (see the module docstring); `.value` is the resolved
    config with the `=None` overrides applied and paths absolute, `.path` the config file."""

    def __init__(self, holder, print_flag):
        self._holder = holder
        self._print = print_flag
        self._value = None

    @property
    def path(self):
        return config_flags.get_config_filename(flags.FLAGS[self._holder.name])

    @property
    def value(self):
        if self._value is None:
            file_name = self.path.split(":", 1)[0]  # "configs/x.py:tiny" -> the file
            if not os.path.isfile(file_name):
                raise UserError(f"--config={self.path}: no such file (looked for "
                                f"{os.path.abspath(file_name)})")
            try:
                config = self._holder.value
                config.keys()  # a config that failed to load raises here
            except OSError as e:
                raise UserError(f"--config={self.path}: cannot load it "
                                f"({_config_load_error(e)})") from None
            apply_none_overrides(config, none_overrides(sys.argv[1:]))
            from chestxray_tf.training import defaults  # pylint: disable=import-outside-toplevel
            defaults.resolve_paths(config)
            self._value = config
        return self._value

    @property
    def print_only(self):
        return self._print.value


def _config_load_error(error):
    """The first line of the cause ml_collections wraps ("No such file or directory: ...")."""
    text = str(error)
    found = re.search(r"\[Errno \d+\] ([^\n]+)", text)
    return found.group(1) if found else text.strip().splitlines()[-1]


def define_config(default=None, help_text="Path of a config file in configs/."):
    """Defines `--config` (and `--print_config`); returns its `ConfigFlag`."""
    holder = config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
    print_flag = flags.DEFINE_bool("print_config", False, "Print the resolved config (as the "
                                   "run's config.json stores it) and exit.")
    return ConfigFlag(holder, print_flag)


def local_path(path):
    """`path` made absolute unless it is a URL (`gs://...`): a workdir given on the command
    line means the same in every message and file."""
    return path if path is None or "://" in path else os.path.abspath(path)


def none_overrides(argv):
    """The field paths of the `--config.a.b=None` arguments of `argv`."""
    return [m.group(1) for m in map(_NONE_OVERRIDE.fullmatch, argv) if m]


def apply_none_overrides(config, paths):
    """Sets each field of `paths` ("model.weights") to None; a field that is not None-able
    (not a `config_dict.placeholder`) or does not exist is a `UserError` naming it."""
    for path in paths:
        *parents, key = path.split(".")
        node = config
        for name in parents:
            if name not in node or not isinstance(node[name], config_dict.ConfigDict):
                raise UserError(f"--config.{path}=None: config has no section {name!r}")
            node = node[name]
        if key not in node:
            raise UserError(f"--config.{path}=None: config has no field {key!r}")
        field = node._fields[key]  # pylint: disable=protected-access
        if not isinstance(field, config_dict.FieldReference) and node[key] is not None:
            raise UserError(f"--config.{path}=None: {path} cannot be None (a "
                            f"{type(node[key]).__name__} field)")
        node[key] = None


def _parse_flags(argv):
    """absl's parser, with the `--config.X=None` arguments taken out (ml_collections would
    parse "None" as the field's type; `ConfigFlag.value` applies them)."""
    rest = [a for a in argv if not _NONE_OVERRIDE.fullmatch(a)]
    try:
        return flags.FLAGS(rest)
    except flags.Error as e:
        message = f"{e}\nPass --helpshort for the flags."
    except (AttributeError, KeyError) as e:  # ml_collections: a --config.X naming no field
        field = str(e).strip("\"'")
        message = (f"config has no field {field!r} (a --config.X flag names it; "
                   "--print_config shows every field)")
    print(f"{_binary_name()}: {message}", file=sys.stderr)
    sys.exit(2)


def run(main):
    """`app.run(main)` with the user-error handling of the module docstring."""
    def guarded(argv):
        name = _binary_name()
        try:
            return main(argv)
        except USER_ERRORS as e:
            if _DEBUG_FLAG.value:
                raise
            message = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"{name}: {message}\n(--debug shows the traceback)", file=sys.stderr)
            return 2
    app.run(guarded, flags_parser=_parse_flags)


def _binary_name():
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    return spec.name.rsplit(".", 1)[-1] if spec is not None else os.path.basename(sys.argv[0])
