"""Repeated layers kept either as a list of modules (unrolled) or as one module whose parameters carry a leading
``layers`` axis (stacked), run under ``jax.lax.scan`` so that a compile no longer grows with depth.

The two layouts hold the same numbers: a stacked module is built from the same per-layer modules (so a seed
initialises both alike), and the converters here move parameters between them, for checkpoints written in one
layout and read in the other. Parameter paths: unrolled ``language.layers.3.attn.q.kernel`` [E, H, D], stacked
``language.layers.attn.q.kernel`` [L, E, H, D].
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from robust_r1_jax import parallel

LAYER_AXIS = "layers"
# The attributes that hold repeated layers, as parameter-path prefixes.
REPEATED = ("language.layers", "visual.blocks")
_UNROLLED = re.compile(r"^(" + "|".join(map(re.escape, REPEATED)) + r")\.(\d+)\.(.+)$")
_STACKED = re.compile(r"^(" + "|".join(map(re.escape, REPEATED)) + r")\.(\D.*)$")


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
    """One module of ``modules[0]``'s structure whose every parameter is the per-module parameters stacked on a
    new leading axis named ``layers`` (logical axes keep their names behind it). The modules must agree in
    structure and shapes."""
    graphdef, _ = nnx.split(modules[0])
    flats = [dict(nnx.to_flat_state(nnx.split(m)[1])) for m in modules]
    stacked = {path: _stacked_variable([flat[path] for flat in flats]) for path in flats[0]}
    return nnx.merge(graphdef, nnx.from_flat_state(stacked))


def _stacked_variable(variables: list[nnx.Variable]) -> nnx.Variable:
    first = variables[0]
    axes = first.get_metadata().get("logical_axes") or (None,) * first.value.ndim
    return type(first)(jnp.stack([v.value for v in variables]), logical_axes=(LAYER_AXIS, *axes))


def run_layers(layers, step: Callable[[nnx.Module, Any, Any], Any], carry, xs, *, stacked: bool,
               policy: Callable | None = None):
    """``carry = step(layer_i, carry, xs[i])`` for every layer in order; returns the final carry.

    ``layers``: an ``nnx.List`` (unrolled: a Python loop, one traced copy per layer) or a stacked module (one
    ``lax.scan`` whose body is one layer). ``xs``: a pytree of per-layer inputs with a leading layer axis.
    ``policy``: a ``jax.checkpoint`` policy applied to each layer (remat), inside the scan body when stacked.
    ``step`` must not change the layer's state (the layers are read, not written).
    """
    def body_for(graphdef):
        def body(layer_state, carry, x):
            if not stacked:  # unrolled, propagation sees the batch layout from the inputs
                return step(nnx.merge(graphdef, layer_state), carry, x)
            carry = _batch_major(carry)
            return _batch_major(step(nnx.merge(graphdef, layer_state), carry, x))
        if policy is None:
            return body
        # Inside a scan the loop boundary already keeps XLA from merging the recomputation with the forward pass.
        return jax.checkpoint(body, policy=policy, prevent_cse=not stacked)

    if stacked:
        graphdef, state = nnx.split(layers)
        body = body_for(graphdef)
        carry, _ = jax.lax.scan(lambda c, inputs: (body(inputs[0], c, inputs[1]), None), carry, (state, xs))
        return carry
    for i, layer in enumerate(layers):
        graphdef, state = nnx.split(layer)
        carry = body_for(graphdef)(state, carry, jax.tree.map(lambda a: a[i], xs))
    return carry


def _batch_major(carry):
    """The carry's activations [batch, length, ...] kept split over the batch: inside a while loop the
    partitioner cannot see the batch layout and would split the hidden dimension like the weights instead."""
    x = carry[0] if isinstance(carry, tuple) else carry
    x = parallel.constrain(x, ("batch", "length") + (None,) * (x.ndim - 2))
    return (x, *carry[1:]) if isinstance(carry, tuple) else x


# ---- layout conversion of flat parameter dicts ("a.b.c" -> array) ---------------------------------------------
def stacked_name(path: str) -> tuple[str, int] | None:
    """``language.layers.3.attn.q.kernel`` -> (``language.layers.attn.q.kernel``, 3); None for other paths."""
    m = _UNROLLED.match(path)
    return (f"{m.group(1)}.{m.group(3)}", int(m.group(2))) if m else None


def unrolled_name(path: str, index: int) -> str | None:
    """``language.layers.attn.q.kernel``, 3 -> ``language.layers.3.attn.q.kernel``; None for other paths."""
    m = _STACKED.match(path)
    return f"{m.group(1)}.{index}.{m.group(2)}" if m else None


def is_stacked(path: str) -> bool:
    return _STACKED.match(path) is not None


def unstack_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """Stacked paths split into one entry per layer (views of the leading axis); other entries as they are."""
    out = {}
    for path, value in flat.items():
        if is_stacked(path):
            out.update({unrolled_name(path, i): value[i] for i in range(value.shape[0])})
        else:
            out[path] = value
    return out


def stack_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """Per-layer entries stacked in layer order (the indices must run 0..L-1); other entries as they are."""
    groups: dict[str, dict[int, Any]] = {}
    out = {}
    for path, value in flat.items():
        hit = stacked_name(path)
        if hit is None:
            out[path] = value
        else:
            groups.setdefault(hit[0], {})[hit[1]] = value
    for path, layers in groups.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"{path}: layers {sorted(layers)} are not 0..{len(layers) - 1}")
        out[path] = jnp.stack([layers[i] for i in range(len(layers))])
    return out


def to_layout(flat: dict[str, Any], stacked: bool) -> dict[str, Any]:
    """Flat parameters in either layout -> the wanted one (a no-op when already there)."""
    if stacked:
        return stack_flat(flat) if any(stacked_name(p) for p in flat) else flat
    return unstack_flat(flat) if any(is_stacked(p) for p in flat) else flat


def flat_params(module: nnx.Module) -> dict[str, Any]:
    """``"a.b.c"`` -> array for every parameter of ``module``."""
    return {".".join(map(str, p)): v.value for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def load_flat(abstract: nnx.Module, flat: dict[str, Any], mesh: jax.sharding.Mesh | None = None) -> nnx.Module:
    """``abstract`` (from ``nnx.eval_shape``) with its parameters set from ``flat`` (either layout; converted to
    the module's), each placed by its logical axes when a mesh is given. KeyError naming missing parameters."""
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    wanted = dict(nnx.to_flat_state(params))
    stacked = any(is_stacked(".".join(map(str, p))) for p in wanted)
    flat = to_layout(flat, stacked)
    missing = sorted(".".join(map(str, p)) for p in wanted if ".".join(map(str, p)) not in flat)
    if missing:
        raise KeyError(f"parameters missing: {', '.join(missing[:10])}")
    for path, var in wanted.items():
        value = jnp.asarray(flat[".".join(map(str, path))], var.value.dtype)
        if mesh is not None:
            axes = var.get_metadata().get("logical_axes") or (None,) * value.ndim
            value = jax.device_put(value, parallel.named_sharding(mesh, axes, value.shape))
        var.value = value
    return nnx.merge(graphdef, nnx.from_flat_state(wanted), rest)
