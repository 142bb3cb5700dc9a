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

from robust_r1_jax.model.config import ModelConfig
from robust_r1_jax.model.loading import DATA, META, STATE  # the layout the model loader reads back


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
    if saved.scan_layers != model_config.scan_layers:  # parameters and optimizer moments are laid out by it
        raise ValueError(f"checkpoint {where} holds {'stacked' if saved.scan_layers else 'per-layer'} parameters "
                         f"(scan_layers={saved.scan_layers}): resume it with "
                         f"--config.model.scan_layers={saved.scan_layers}")
    if saved.text != model_config.text or saved.vision != model_config.vision:
        diffs = [f"{part}.{k}: checkpoint {a!r} != config {b!r}"
                 for part in ("text", "vision")
                 for k, a in vars(getattr(saved, part)).items()
                 if a != getattr(getattr(model_config, part), k)
                 for b in [getattr(getattr(model_config, part), k)]]
        raise ValueError(f"checkpoint {where} was written for a different model: " + "; ".join(diffs))
