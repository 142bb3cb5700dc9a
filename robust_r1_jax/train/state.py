"""The train state: the model split into trained and frozen parameters, optimizer state and step.

Frozen parameters never enter the gradient or the optimizer, so they stay bitwise unchanged and cost no
optimizer memory; the GRPO learner reuses the same split.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from robust_r1_jax import parallel
from robust_r1_jax.train.optim import frozen_filter


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    trainable: nnx.State
    frozen: nnx.State
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What stays static across steps: the module graph and the non-parameter state."""
    graphdef: Any
    rest: nnx.State

    def merge(self, trainable: nnx.State, frozen: nnx.State) -> nnx.Module:
        return nnx.merge(self.graphdef, frozen, trainable, self.rest)


def split_model(model: nnx.Module, freeze: Sequence[str]) -> tuple[ModelParts, nnx.State, nnx.State]:
    graphdef, frozen, trainable, rest = nnx.split(model, frozen_filter(freeze), nnx.Param, ...)
    return ModelParts(graphdef, rest), trainable, frozen


def count(state: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state))


def init_state(model: nnx.Module, tx: optax.GradientTransformation, freeze: Sequence[str],
               mesh: jax.sharding.Mesh | None = None) -> tuple[ModelParts, TrainState]:
    """Splits (and, with a mesh, shards) the model and builds the optimizer state beside the parameters."""
    if mesh is not None:
        parallel.shard_module(model, mesh)
    parts, trainable, frozen = split_model(model, freeze)
    if not jax.tree.leaves(trainable):
        raise ValueError(f"every parameter is frozen by {list(freeze)}: nothing to train")
    opt_state = jax.jit(tx.init)(trainable)
    state = TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen, opt_state=opt_state)
    return parts, on_mesh(state, mesh) if mesh is not None else state


def on_mesh(tree, mesh: jax.sharding.Mesh):
    """Leaves not yet spread over the mesh (step counters, scalars) become replicated on it."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    devices = set(mesh.devices.flat)

    def place(x):
        if isinstance(x, jax.Array) and set(x.sharding.device_set) == devices:
            return x
        return jax.device_put(x, replicated)
    return jax.tree.map(place, tree)


def shardings_of(tree):
    return jax.tree.map(lambda x: x.sharding, tree)
