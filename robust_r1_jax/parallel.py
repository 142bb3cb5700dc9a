"""The device mesh and the one table that maps logical axis names onto it.

Every parameter and activation in the package is annotated with logical axis names
(``"embed"``, ``"mlp"``, ...). Only this file knows how those names land on the physical
``(data, fsdp, tensor)`` mesh, so re-sharding a run is a change of one table or one config.
"""
from __future__ import annotations

import contextlib
import contextvars
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

# The GRPO sampler's "tensor" layout (rl/rollout_weights.py) on ``rollout_mesh``: Megatron-style tensor
# parallelism (Shoeybi et al. 2019, arXiv:1909.08053) for a decode step that reads every weight once per token.
# q/k/v/gate/up split over their output heads or MLP columns, o/down over their input ones (two all-reduces of
# [rows, hidden] per layer), the hidden size whole, rows over "data". The vocabulary is split too: a decode step
# reads the whole [vocab, hidden] head once per token (Qwen2.5-VL-3B's tied 151,936 x 2,048 table is 622 MB in
# bf16, 10% of the model), so halving it saves more HBM time than the all-gather of [rows, vocab] logits and the
# embedding lookup's all-reduce of [rows, hidden] cost in ICI time (WORKSPACE.md "Rollout at its roofline").
ROLLOUT_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", "data"),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("vision_embed", None),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("vision_patch", None),
    ("vision_merge", None),
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


def rollout_mesh(mesh: Mesh, tensor: int) -> Mesh:
    """The same devices as ``mesh``, in the same order, as a (data = n / tensor, fsdp = 1, tensor) mesh: the GRPO
    sampler's "tensor" layout. ValueError when ``tensor`` does not divide the device count."""
    n = mesh.devices.size
    if tensor < 1 or n % tensor:
        raise ValueError(f"rollout.tensor_parallel={tensor} must be a positive divisor of the {n} devices")
    return Mesh(mesh.devices.reshape(n // tensor, 1, tensor), MESH_AXES)


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


def named_sharding(mesh: Mesh, axes: Iterable[str | None], shape: Sequence[int] | None = None,
                   rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading axis over (data, fsdp), the rest replicated: how input batches are laid out."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1))


def param_shardings(module: nnx.Module, mesh: Mesh):
    """An ``nnx.State`` of NamedShardings mirroring the module's parameters, from their logical axes."""
    return state_shardings(nnx.state(module, nnx.Param), mesh)


def state_shardings(state, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """``state`` (an ``nnx.State``) with each Variable replaced by the NamedSharding of its logical axes under
    ``rules`` (none: replicated)."""
    return jax.tree.map(lambda v: named_sharding(mesh, v.get_metadata().get("logical_axes") or
                                                 (None,) * v.value.ndim, v.value.shape, rules),
                        state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places every parameter of ``module`` (in place) onto the mesh according to the rules table."""
    for _, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        axes = var.get_metadata().get("logical_axes") or (None,) * var.value.ndim
        var.value = jax.device_put(var.value, named_sharding(mesh, axes, var.value.shape))
    return module


_ACTIVE_RULES = contextvars.ContextVar("logical_axis_rules", default=LOGICAL_AXIS_RULES)


@contextlib.contextmanager
def axis_rules(rules):
    """``constrain`` maps logical axes by ``rules`` inside this context (the GRPO sampler traces its "tensor"
    layout under ``ROLLOUT_AXIS_RULES``); the training table outside it. Read while tracing only."""
    token = _ACTIVE_RULES.set(rules)
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """``x`` pinned to the sharding of its logical ``axes`` on the mesh in context (``jax.set_mesh``) by the rules
    in context (``axis_rules``); unchanged when no mesh is set. Needed where propagation cannot see the batch
    layout, e.g. a ``lax.scan`` carry."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, x.shape, mesh, _ACTIVE_RULES.get()))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every dimension on every device: the GRPO sampler's "replicated" weight layout (rl/rollout_weights.py)."""
    return NamedSharding(mesh, PartitionSpec())
