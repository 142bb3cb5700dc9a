"""The device mesh and the one table that maps logical axis names onto it.

Every parameter and activation in the package is annotated with logical axis names
(``"embed"``, ``"mlp"``, ...). Only this file knows how those names land on the physical
``(data, fsdp, tensor)`` mesh, so re-sharding a run is a change of one table or one config.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of mesh axes); names absent here are replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_patch", None),
    ("vision_merge", "fsdp"),
    ("vision_positions", None),
    ("layers", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over ``devices`` (default: all); one size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = [data, fsdp, tensor]
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh size may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into fsdp*tensor*data={known}*k")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {int(np.prod(shape))} devices, "
                         f"have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_spec(axes: Iterable[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for logical ``axes``; a dimension that the mesh axes do not divide is replicated."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used)
        if mesh is not None:
            targets = tuple(t for t in targets if mesh.shape[t] > 1)
            size = int(np.prod([mesh.shape[t] for t in targets])) if targets else 1
            if shape is not None and shape[i] % size:
                targets = ()
        used.update(targets)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, axes: Iterable[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading axis over (data, fsdp), the rest replicated: how input batches are laid out."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1))


def param_shardings(module: nnx.Module, mesh: Mesh):
    """An ``nnx.State`` of NamedShardings mirroring the module's parameters, from their logical axes."""
    state = nnx.state(module, nnx.Param)
    return jax.tree.map(lambda v: named_sharding(mesh, v.get_metadata().get("logical_axes") or
                                                 (None,) * v.value.ndim, v.value.shape),
                        state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places every parameter of ``module`` (in place) onto the mesh according to the rules table."""
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        axes = var.get_metadata().get("logical_axes") or (None,) * var.value.ndim
        var.value = jax.device_put(var.value, named_sharding(mesh, axes, var.value.shape))
    return module


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``x`` pinned to the sharding of its logical ``axes`` on the mesh in context (``jax.set_mesh``); unchanged
    when no mesh is set. Needed where propagation cannot see the batch layout, e.g. a ``lax.scan`` carry."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every dimension on every device: the GRPO sampler's "replicated" weight layout (rl/rollout_weights.py)."""
    return NamedSharding(mesh, PartitionSpec())
