"""Entry point: ``python -m robust_r1_jax.main --config=configs/<name>.py [--config.key=value ...]``.

The config's ``mode`` picks the job. Each job's module is imported only when chosen, so a model-only
install (no grain / tensorflow-datasets) can still convert, inspect and generate.

What ends a run on purpose is printed as plain lines on stderr, without a traceback: a misspelt config key (with
ml_collections' suggestion; exit 2), a config file's refusal of its argument (an unknown ``FILE.py:VARIANT``; exit 2), the problems of a training config (one line each; exit 2), and a training run
stopped by SIGTERM / SIGINT (exit 128 + the signal's number) or by divergence (exit 3), and bad input that ends a run
(``data.records.SourceError``: a source with no usable row, a ``generate`` image that cannot be used; exit 1). orbax's INFO lines (dozens
per checkpoint load) are dropped; its warnings stay.
"""
from __future__ import annotations

import importlib
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file under configs/.",
                                          lock_config=True)

# mode -> "module:function"; the function takes the (locked) ConfigDict.
MODES = {
    "synth": "robust_r1_jax.data.synth:run",
    "sft": "robust_r1_jax.train.sft:run",
    "demo": "robust_r1_jax.demo:run",
    "rl": "robust_r1_jax.rl.grpo:run",
    "eval": "robust_r1_jax.eval.robust:run",
    "generate": "robust_r1_jax.eval.generate:run",
    "convert": "robust_r1_jax.model.convert:run_convert",
    "inspect": "robust_r1_jax.data.inspection:run_inspect",
    "aot": "robust_r1_jax.aot:run",
    "web": "robust_r1_jax.web.app:run",
}


def resolve(mode: str):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
    module_name, fn = MODES[mode].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("robust_r1_jax"):
            raise ValueError(f"mode {mode!r} is not available in this build ({e.name} is missing)") from e
        raise
    return getattr(module, fn)


class DropLibraryInfo(std_logging.Filter):
    """Drops records below WARNING logged from inside the named packages (orbax logs through absl's logger, so
    only the record's source file tells it apart)."""

    def __init__(self, packages=("orbax",)):
        super().__init__()
        self.markers = tuple(f"/{p}/" for p in packages)

    def filter(self, record: std_logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        return record.levelno >= std_logging.WARNING or not any(m in path for m in self.markers)


def quiet_library_info() -> None:
    """Keeps orbax's INFO lines out of the console (on the absl handler, where absl prints them)."""
    for handler in std_logging.getLogger().handlers:
        if not any(isinstance(f, DropLibraryInfo) for f in handler.filters):
            handler.addFilter(DropLibraryInfo())


def _fields_named(config, key: str, prefix: str = "") -> list[str]:
    """Dotted paths of the fields called ``key`` anywhere in ``config`` (a ConfigDict or a plain mapping)."""
    found = []
    for name, value in (config.items() if hasattr(config, "items") else ()):
        path = f"{prefix}{name}"
        if name == key:
            found.append(path)
        if hasattr(value, "items"):
            found += _fields_named(value, key, path + ".")
    return found


def unknown_key_message(error: BaseException, argv, config=None) -> str:
    """The useful line of ml_collections' error for a misspelt ``--config.`` key: the flag and its suggestion; a
    field of that name in a section of ``config`` (``max_new_tokens`` -> ``sampling.max_new_tokens``) is named."""
    while isinstance(error, (AttributeError, KeyError)) and error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    key, _, suggestion = text.partition("\n")
    key = key.strip("'\"")
    flag = next((a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")
                 and key in a.split("=", 1)[0].split(".")), f"--config.{key}")
    elsewhere = [p for p in (_fields_named(config, key) if config is not None else ())
                 if f"--config.{p}" != flag]
    if elsewhere:
        suggestion = (suggestion + " " if suggestion else "") + "The config has it as " + " or ".join(
            f"--config.{p}" for p in elsewhere) + "."
    return f"{flag}: the config has no field {key!r}. {suggestion}".strip()


def parse_flags(argv):
    """absl's flag parsing, with a misspelt config key reported as one line (exit 2) instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        print(f"error: {unknown_key_message(e, argv, _config_file_defaults(argv))}", file=sys.stderr)
        sys.exit(2)
    except flags.IllegalFlagValueError as e:
        refused = _config_file_refusal(e)
        if refused is None:
            raise
        spec = next((a for a in argv[1:] if a.startswith("--config=")), "--config")
        print(f"error: {spec}: {refused}", file=sys.stderr)
        sys.exit(2)


def _config_file_refusal(error: BaseException) -> str | None:
    """The message of the ValueError a config file's ``get_config`` raised (an unknown variant after the colon,
    ``configs/grpo_tiny.py:drgrpo``), which absl wraps in a flag error over two tracebacks; None for anything else."""
    seen, found = set(), None
    while error is not None and id(error) not in seen:   # the innermost: ml_collections re-raises it wrapped
        seen.add(id(error))
        if isinstance(error, ValueError) and not isinstance(error, flags.Error):
            found = str(error)
        error = error.__cause__ or error.__context__
    return found


def _config_file_defaults(argv):
    """The config ``--config=FILE[:ARG]`` names, loaded again without overrides (None when that fails): only the
    message about a misspelt key uses it."""
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    try:
        import runpy
        get_config = runpy.run_path(path)["get_config"]
        return get_config(arg) if arg else get_config()
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return None


def run_mode(config) -> None:
    """Runs the config's mode; a config problem or an early stop becomes its message on stderr and an exit code."""
    from robust_r1_jax.data import records
    from robust_r1_jax.model import config as model_config
    from robust_r1_jax.train import stops, validate
    try:
        resolve(config.mode)(config)
    except validate.ConfigError as e:
        print("invalid config:\n" + "\n".join(f"error: {p}" for p in e.problems), file=sys.stderr)
        sys.exit(2)
    except model_config.ModelFolderError as e:  # a folder named by the config that no mode can use
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (records.SourceError, records.MissingInput) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except stops.RunStopped as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    if "mode" not in config:
        raise app.UsageError("the config has no 'mode' field")
    quiet_library_info()
    logging.info("mode %s", config.mode)
    run_mode(config)


if __name__ == "__main__":
    app.run(main, argv=sys.argv, flags_parser=parse_flags)
