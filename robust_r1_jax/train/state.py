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
from robust_r1_jax.model.config import resolve_dtype
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
    """What stays static across steps: the module graph and the non-parameter state, the layers' compute dtype
    and (on a mesh) where the trained and frozen parameters live."""
    graphdef: Any
    rest: nnx.State
    compute_dtype: Any = None
    shardings: tuple[Any, Any] | None = None   # (trainable, frozen) trees of NamedShardings

    def merge(self, trainable: nnx.State, frozen: nnx.State) -> nnx.Module:
        return nnx.merge(self.graphdef, frozen, trainable, self.rest)

    def merge_for_compute(self, trainable: nnx.State, frozen: nnx.State) -> nnx.Module:
        """The model with every parameter cast to the compute dtype where it is stored (still sharded).

        Every layer casts its parameters to the compute dtype on use, so no number changes; what changes is the
        traffic: FSDP all-gathers move bf16 instead of fp32 bytes, and the gradient returns through the sharded
        cast as a reduce-scatter rather than a full-size all-reduce (issue 13; checked in tests/test_aot.py).
        """
        if self.compute_dtype is None or jnp.dtype(self.compute_dtype) == jnp.float32:
            return self.merge(trainable, frozen)
        shardings = self.shardings or (None, None)
        return self.merge(_cast(trainable, self.compute_dtype, shardings[0]),
                          _cast(frozen, self.compute_dtype, shardings[1]))


    def sharded_like_trainable(self, grads):
        """Gradients laid out as the trained parameters (and so the optimizer state) are: the partitioner then
        reduces them with a reduce-scatter onto each chip's shard instead of an all-reduce of the full tensor."""
        if self.shardings is None:
            return grads
        return jax.tree.map(jax.lax.with_sharding_constraint, grads, self.shardings[0])


def _cast(params, dtype, shardings):
    if shardings is None:
        return jax.tree.map(lambda p: p.astype(dtype), params)
    return jax.tree.map(lambda p, s: jax.lax.with_sharding_constraint(p.astype(dtype), s), params, shardings)


def split_model(model: nnx.Module, freeze: Sequence[str]) -> tuple[ModelParts, nnx.State, nnx.State]:
    graphdef, frozen, trainable, rest = nnx.split(model, frozen_filter(freeze), nnx.Param, ...)
    compute_dtype = resolve_dtype(model.config.dtype) if hasattr(model, "config") else None
    return ModelParts(graphdef, rest, compute_dtype), trainable, frozen


def placed(parts: ModelParts, trainable, frozen) -> ModelParts:
    """``parts`` that know where the parameters live (their ``.sharding``: arrays or ShapeDtypeStructs)."""
    sharding = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
    return dataclasses.replace(parts, shardings=(sharding(trainable), sharding(frozen)))


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
    if mesh is None:
        return parts, TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
                                 opt_state=jax.jit(tx.init)(trainable))
    state = TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen, opt_state=None)
    shardings = state_shardings(tx, state, mesh)
    # tx.init reads only the parameters' shapes, so without out_shardings its zeros land on one device.
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable)
    step = jax.device_put(state.step, shardings.step)
    return placed(parts, trainable, frozen), on_mesh(TrainState(step=step, trainable=trainable, frozen=frozen,
                                                                opt_state=opt_state), mesh)


def state_shardings(tx: optax.GradientTransformation, state: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
    """Where each leaf of the train state lives: every optimizer leaf that mirrors a parameter (Adam's moments)
    is sharded like that parameter, the rest (step, Adam's counts) is replicated.

    ``state.trainable`` / ``state.frozen`` may hold arrays or ``jax.ShapeDtypeStruct``s with a sharding (the
    AOT compile never allocates them); ``state.opt_state`` is ignored and derived with ``jax.eval_shape``.
    """
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    param_sh = jax.tree.map(lambda x: x.sharding, state.trainable)
    abstract_opt = jax.eval_shape(tx.init, state.trainable)
    opt_sh = optax.tree_map_params(tx, lambda _, sharding: sharding, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, trainable=param_sh, frozen=jax.tree.map(lambda x: x.sharding, state.frozen),
                      opt_state=opt_sh)


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
