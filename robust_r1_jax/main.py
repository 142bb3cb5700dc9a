"""Entry point: ``python -m robust_r1_jax.main --config=configs/<name>.py [--config.key=value ...]``.

The config's ``mode`` picks the job. Each job's module is imported only when chosen, so a model-only
install (no grain / tensorflow-datasets) can still convert, inspect and generate.
"""
from __future__ import annotations

import importlib
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
    "inspect": "robust_r1_jax.model.convert:run_inspect",
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


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=configs/<name>.py is required")
    if "mode" not in config:
        raise app.UsageError("the config has no 'mode' field")
    logging.info("mode %s", config.mode)
    resolve(config.mode)(config)


if __name__ == "__main__":
    app.run(main, argv=sys.argv)
