"""The ``inspect`` mode (``configs/inspect.py``): a dataset folder synth wrote, or a model.

A dataset (``data.tfds_builder.describe_dataset``; the path may be synth's workdir, its data folder or the
versioned dataset folder) prints its splits, synth's summary and the first stored examples;
anything else goes to ``model.convert.run_inspect``. tensorflow-datasets is imported only for a dataset, so a
model-only install still inspects models.
"""
from __future__ import annotations

import glob
import os

from robust_r1_jax.data import records


def _dataset_dir(path: str) -> str | None:
    """The dataset folder (the one holding ``dataset_info.json``) that ``path`` is or lies up to three levels above
    (synth's workdir: ``<workdir>/tfds/robust_r1/1.0.0``), or None for a model folder or when there is none or
    several (``tfds_builder.find_dataset_dir`` then names them)."""
    if not os.path.isdir(path) or any(os.path.isfile(os.path.join(path, n)) for n in ("model_config.json",
                                                                                      "config.json")):
        return None
    for parts in ((), ("*",), ("*", "*"), ("*", "*", "*")):
        found = glob.glob(os.path.join(glob.escape(path), *parts, "dataset_info.json"))
        if found:
            return os.path.dirname(found[0]) if len(found) == 1 else path
    return None


def run_inspect(config) -> None:
    """The ``inspect`` mode: a dataset folder synth wrote (``data.tfds_builder.describe_dataset``: splits, synth's
    summary, the first stored examples of each split) or a model (``model.convert.run_inspect``).
    tensorflow-datasets is imported only for a dataset."""
    path = config.inspect.path
    dataset = _dataset_dir(path) if path else None
    if dataset is not None:
        from robust_r1_jax.data import tfds_builder
        try:
            print(tfds_builder.describe_dataset(dataset, int(config.inspect.num_examples)))
        except (FileNotFoundError, ValueError) as error:  # several datasets below the path: it names them
            raise records.MissingInput(f"inspect.path: {error}") from error
        return
    if path and "://" not in path and not os.path.exists(path):
        raise records.MissingInput(f"inspect.path {path} does not exist")
    from robust_r1_jax.model import convert
    try:
        convert.run_inspect(config)
    except FileNotFoundError as error:
        raise records.MissingInput(f"{error} (inspect reads a model folder, a training checkpoint or a dataset "
                                   f"folder synth wrote)") from error
