"""Checkpoint conversion (Hugging Face directory <-> orbax) and inspection, for the ``convert`` and
``inspect`` modes of the entry point."""
from __future__ import annotations

import json
import os

import numpy as np
from flax import nnx

from robust_r1_jax.model import hf, orbax_io
from robust_r1_jax.model.config import ModelConfig


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def load_any(path: str, dtype="float32", mesh=None):
    """A model from a Hugging Face directory or an orbax model checkpoint, whichever ``path`` holds."""
    if is_hf_dir(path):
        return hf.load(path, dtype=dtype, mesh=mesh)
    if os.path.isfile(os.path.join(path, orbax_io.CONFIG_FILE)):
        return orbax_io.restore(path, mesh=mesh, param_dtype=dtype, dtype=dtype)
    raise FileNotFoundError(f"{path} holds neither a Hugging Face checkpoint (config.json) nor an orbax model "
                            f"checkpoint ({orbax_io.CONFIG_FILE})")


def convert(src: str, dst: str, dtype: str = "float32") -> str:
    """HF -> orbax or orbax -> HF, decided by what ``src`` holds. Returns the direction taken."""
    if not src or not dst:
        raise ValueError("convert needs both config.convert.src and config.convert.dst")
    model = load_any(src, dtype=dtype)
    if is_hf_dir(src):
        orbax_io.save(model, dst)
        return "hf->orbax"
    hf.save(model, dst)
    return "orbax->hf"


def parameter_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[path[0]] = counts.get(path[0], 0) + int(np.prod(var.value.shape))
    counts["total"] = sum(counts.values())
    return counts


def describe(path: str) -> str:
    """The checkpoint's model config and parameter counts, without reading its weights."""
    if is_hf_dir(path):
        config = ModelConfig.from_hf(hf.read_config(path))
    else:
        config = orbax_io.read_config(path)
    abstract = nnx.eval_shape(lambda: _build(config))
    counts = parameter_counts(abstract)
    lines = [f"checkpoint: {path}", "config:", json.dumps(config.to_dict(), indent=2), "parameters:"]
    lines += [f"  {k:>9}: {v:,} ({v / 1e9:.3f}B)" for k, v in counts.items()]
    return "\n".join(lines)


def _build(config):
    from robust_r1_jax.model.vlm import Qwen25VL
    return Qwen25VL(config, rngs=nnx.Rngs(0))


def run_convert(config) -> None:
    c = config.convert
    direction = convert(c.src, c.dst, c.get("dtype", "float32"))
    print(f"converted {c.src} -> {c.dst} ({direction})")


def run_inspect(config) -> None:
    print(describe(config.inspect.path))
