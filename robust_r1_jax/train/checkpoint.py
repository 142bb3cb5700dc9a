"""Training checkpoints with orbax ``CheckpointManager``: model (trained and frozen parameters), optimizer
state and step as one sharded item, the data-iterator state and run metadata (configs) as JSON.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames on commit), so a
crash mid-save leaves the previous checkpoint intact. ``restore`` reads onto whatever mesh the target
state lives on, which may differ from the one that saved it.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from robust_r1_jax.model.config import ModelConfig

STATE, DATA, META = "state", "data", "meta"


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, DATA, META))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict | None, meta: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                     DATA: ocp.args.JsonSave(data_state or {}),
                                     META: ocp.args.JsonSave(meta)})
        return self.manager.save(step, args=args, force=force)

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self.manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]

    def restore(self, target_state, step: int | None = None) -> tuple[Any, dict, dict, int]:
        """(state, data_state, meta, step) of ``step`` (default: newest), laid out like ``target_state``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                target_state)
        args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract), DATA: ocp.args.JsonRestore(),
                                     META: ocp.args.JsonRestore()})
        try:
            out = self.manager.restore(step, args=args)
        except (ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {self.directory} step {step} does not fit this run's model and "
                             f"optimizer (a different config?): {e}") from e
        return out[STATE], out[DATA], out[META], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def check_compatible(saved_meta: dict, model_config: ModelConfig, where: str) -> None:
    """A checkpoint must come from the same model architecture (dtypes and kernels may differ)."""
    saved = ModelConfig.from_dict(saved_meta["model_config"])
    if saved.text != model_config.text or saved.vision != model_config.vision:
        diffs = [f"{part}.{k}: checkpoint {a!r} != config {b!r}"
                 for part in ("text", "vision")
                 for k, a in vars(getattr(saved, part)).items()
                 if a != getattr(getattr(model_config, part), k)
                 for b in [getattr(getattr(model_config, part), k)]]
        raise ValueError(f"checkpoint {where} was written for a different model: " + "; ".join(diffs))


def is_checkpoint_dir(path: str) -> bool:
    """True for a training workdir's checkpoint folder (numbered step directories written by orbax)."""
    if not os.path.isdir(path):
        return False
    return any(name.isdigit() and os.path.isdir(os.path.join(path, name, META)) for name in os.listdir(path))


def restore_model(path: str, step: int | None = None, mesh=None):
    """The model of a training checkpoint (trained + frozen parameters), without the optimizer."""
    from robust_r1_jax import parallel
    from robust_r1_jax.model.vlm import Qwen25VL
    manager = ocp.CheckpointManager(os.path.abspath(path), item_names=(STATE, DATA, META))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {path}")
    meta = manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    model = nnx.eval_shape(lambda: Qwen25VL(ModelConfig.from_dict(meta["model_config"]), rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    flat = {tuple(map(str, p)): v for p, v in nnx.to_flat_state(params)}
    # Written on other devices (a pod slice, several processes): read onto this process's first device instead.
    fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    saved = manager.restore(step, args=ocp.args.Composite(
        **{STATE: ocp.args.StandardRestore(fallback_sharding=fallback)}))[STATE]
    found = {}
    for part in ("trainable", "frozen"):
        for p, leaf in jax.tree_util.tree_flatten_with_path(saved[part])[0]:
            key = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in p)
            key = key[:-1] if key and key[-1] == "value" else key
            found[key] = leaf
    missing = sorted(".".join(k) for k in flat if k not in found)
    if missing:
        raise ValueError(f"checkpoint {path} step {step} lacks parameters: {', '.join(missing[:10])}")
    for key, var in flat.items():
        value = found[key]
        if mesh is not None:
            value = jax.device_put(value, parallel.named_sharding(mesh, var.get_metadata().get("logical_axes"),
                                                                  value.shape))
        var.value = jax.numpy.asarray(value)
    manager.close()
    return nnx.merge(graphdef, params, rest)
