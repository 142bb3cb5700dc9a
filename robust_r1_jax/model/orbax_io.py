"""Orbax save/restore of a bare model (parameters + config), for conversion and inference.

Training checkpoints (optimizer, step, data iterator) live in ``robust_r1_jax.train``; this is the model alone.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from robust_r1_jax import atomic, parallel
from robust_r1_jax.model import assets, stacking
from robust_r1_jax.model.config import ModelConfig
from robust_r1_jax.model.vlm import Qwen25VL

CONFIG_FILE = "model_config.json"


def _path(path: str) -> epath.Path:
    """Local paths made absolute; bucket URLs (gs://...) kept as they are."""
    return epath.Path(path if "://" in str(path) else os.path.abspath(path))


def save(model: Qwen25VL, path: str, *, asset_sources: Sequence[str] = (), image_processor=None, dtype=None,
         processor_source: str = "") -> None:
    """Writes the model folder ``path``: ``params/`` (orbax, every process takes part), ``model_config.json`` and
    the tokenizer, processor and generation configs carried over from ``asset_sources``
    (``model.assets.carry_over``, which takes the processor files from ``processor_source`` first; process 0
    writes the small files). ``dtype`` (None: the model's ``param_dtype``) is the stored dtype of the parameters,
    and ``model_config.json``'s ``param_dtype`` names it.

    A local folder is filled under a staging name beside ``path`` and renamed into place when complete, so an
    existing model there stays whole and loadable until then (a kill mid-export leaves the old one). An object
    store (gs://...) has no rename: there orbax replaces ``params/`` and the small files follow.
    """
    root = _path(path)
    if "://" in str(root):
        _fill(root, model, asset_sources, image_processor, dtype, processor_source)
        return
    staging = root.parent / f".{root.name}.staging"  # one name every process agrees on
    if jax.process_index() == 0:
        root.parent.mkdir(parents=True, exist_ok=True)
        if staging.exists():  # left by an export that was killed
            staging.rmtree()
        staging.mkdir()
    _sync(f"orbax_io.save staging {path}")
    try:
        _fill(staging, model, asset_sources, image_processor, dtype, processor_source)
    except BaseException:
        if jax.process_count() == 1:  # alone, nobody else is still writing into it
            staging.rmtree(missing_ok=True)
        raise
    _sync(f"orbax_io.save filled {path}")
    if jax.process_index() == 0:
        atomic.share_tree(str(staging))
        atomic.swap_dir(str(staging), str(root))
    _sync(f"orbax_io.save {path}")  # no process reads the model before it is in place


def _fill(root: epath.Path, model: Qwen25VL, asset_sources: Sequence[str], image_processor, dtype,
          processor_source: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    _, state = nnx.split(model, nnx.Param)
    params, config = nnx.to_pure_dict(state), model.config
    if dtype is not None and jnp.dtype(dtype) != jnp.dtype(config.param_dtype):
        params = jax.tree.map(lambda x: x.astype(dtype), params)  # sharded arrays stay sharded
        config = config.replace(param_dtype=jnp.dtype(dtype).name)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(root / "params", params, force=True)
    if jax.process_index() == 0:  # one writer: the others would only write the same bytes again
        _write_config(root, json.dumps(config.to_dict(), indent=2))
        if "://" not in str(root):
            assets.carry_over(str(root), asset_sources, config, image_processor, processor_source)


def _sync(tag: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(tag)


def _write_config(root: epath.Path, text: str) -> None:
    if "://" in str(root):  # an object store publishes an object whole, when its upload completes
        (root / CONFIG_FILE).write_text(text)
    else:
        atomic.write_text(root / CONFIG_FILE, text)


def read_config(path: str) -> ModelConfig:
    cfg_file = _path(path) / CONFIG_FILE
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path} is not a model checkpoint written by orbax_io.save: no {CONFIG_FILE}")
    return ModelConfig.from_dict(json.loads(cfg_file.read_text()))


def restore(path: str, *, mesh: jax.sharding.Mesh | None = None, **config_overrides) -> Qwen25VL:
    """The model saved at ``path``; with a mesh, every parameter is restored straight into its sharding
    (``parallel.param_shardings``), without one onto this process's first device. An override of
    ``scan_layers`` reads the parameters in the saved layout and restacks them (one transient extra copy)."""
    saved = read_config(path)
    config = saved.replace(**config_overrides) if config_overrides else saved
    as_saved = config.replace(scan_layers=saved.scan_layers)
    abstract = nnx.eval_shape(lambda: Qwen25VL(as_saved, rngs=nnx.Rngs(0)))
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    if mesh is None:
        first = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: first, nnx.to_pure_dict(state))
    else:
        shardings = nnx.to_pure_dict(parallel.param_shardings(abstract, mesh))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nnx.to_pure_dict(state), shardings)
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(_path(path) / "params", target)
    nnx.replace_by_pure_dict(state, restored)
    model = nnx.merge(graphdef, state, rest)
    if config.scan_layers == saved.scan_layers:
        return model
    other = nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0)))
    return stacking.load_flat(other, stacking.flat_params(model), mesh)
