"""Checkpoint conversion (Hugging Face directory <-> orbax) and inspection, for the ``convert`` and
``inspect`` modes of the entry point. Models are read with ``model.loading``."""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from flax import nnx

from robust_r1_jax.model import assets, hf, loading, orbax_io


def default_dtype(src: str) -> str | None:
    """The stored dtype ``convert`` gives ``dst`` when none is asked for: a Hugging Face folder's own (None), and
    for an orbax model or training checkpoint its model's compute dtype (``ModelConfig.dtype``): a run with bf16
    compute and fp32 master weights exports bf16, as the upstream release ships (fp32 would double the files)."""
    if loading.is_hf_dir(src):
        return None
    return loading.read_config(src).dtype


def convert(src: str, dst: str, dtype: str = "") -> str:
    """HF -> orbax, or orbax (a model or training checkpoint) -> HF, decided by what ``src`` holds. ``dtype``
    is the stored dtype of ``dst`` ("": ``default_dtype(src)``; ``float32`` keeps a run's fp32 master weights).
    Either way ``dst`` is a complete model folder:
    the tokenizer, chat template, processor and generation configs are carried over (``loading.asset_sources``),
    and an existing ``dst`` is replaced only once the new folder is complete. Returns the direction taken."""
    if not src or not dst:
        raise ValueError("convert needs both config.convert.src and config.convert.dst")
    model = loading.load_model(src, dtype=dtype or default_dtype(src))
    sources = loading.asset_sources(src)
    if loading.is_hf_dir(src):
        orbax_io.save(model, dst, asset_sources=sources)
        return "hf->orbax"
    hf.save(model, dst, asset_sources=sources)
    return "orbax->hf"


def parameter_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[path[0]] = counts.get(path[0], 0) + int(np.prod(var.value.shape))
    counts["total"] = sum(counts.values())
    return counts


def describe(path: str) -> str:
    """The checkpoint's layout, stored dtype, files by kind, model config and parameter counts, without reading
    its weights."""
    config = loading.read_config(path)
    abstract = nnx.eval_shape(lambda: _build(config))
    counts = parameter_counts(abstract)
    lines = [f"checkpoint: {path}", f"layout: {_layout(path)}", f"stored dtype: {config.param_dtype}", "holds:"]
    lines += [f"  {kind:>10}: {', '.join(names)}" for kind, names in assets.folder_contents(path).items()]
    lines += ["config:", json.dumps(config.to_dict(), indent=2), "parameters:"]
    lines += [f"  {k:>9}: {v:,} ({v / 1e9:.3f}B)" for k, v in counts.items()]
    return "\n".join(lines)


def _layout(path: str) -> str:
    if loading.is_hf_dir(path):
        return "Hugging Face (config.json + safetensors)"
    if loading.is_training_checkpoint(path):
        steps = sorted(int(n) for n in os.listdir(path) if n.isdigit())
        return f"training checkpoint folder (steps {', '.join(map(str, steps))}; the newest is read)"
    return "orbax model (model_config.json + params/)"


def _build(config):
    from robust_r1_jax.model.vlm import Qwen25VL
    return Qwen25VL(config, rngs=nnx.Rngs(0))


def default_config() -> ml_collections.ConfigDict:
    """The ``convert`` mode: ``src`` (HF directory, orbax model or training checkpoint) -> ``dst``, stored in
    ``dtype`` ("": a Hugging Face source's own, e.g. bfloat16 for the released Qwen2.5-VL weights; a training run's
    compute dtype, bfloat16 for the recipes; ``float32`` keeps fp32 master weights)."""
    c = ml_collections.ConfigDict()
    c.mode = "convert"
    c.convert = ml_collections.ConfigDict(dict(src="", dst="", dtype=""))
    return c


def default_inspect_config() -> ml_collections.ConfigDict:
    """The ``inspect`` mode: print the model config and parameter counts of ``inspect.path``, or, for a dataset
    folder synth wrote, its splits, summary and first ``num_examples`` examples of each split (``data.inspection.run_inspect``)."""
    c = ml_collections.ConfigDict()
    c.mode = "inspect"
    c.inspect = ml_collections.ConfigDict(dict(path="", num_examples=3))
    return c


def run_convert(config) -> None:
    c = config.convert
    direction = convert(c.src, c.dst, c.dtype)
    print(f"converted {c.src} -> {c.dst} ({direction})")
    if os.path.isdir(c.dst):  # a local folder (an object store is not listed)
        print("; ".join(f"{kind}: {', '.join(names)}" for kind, names in assets.folder_contents(c.dst).items()))


def run_inspect(config) -> None:
    if not config.inspect.path:
        raise ValueError("set --config.inspect.path=DIR: a Hugging Face directory, an exported model, a training "
                         "checkpoint or a dataset folder synth wrote")
    print(describe(config.inspect.path))
