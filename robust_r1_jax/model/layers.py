"""Building blocks shared by the vision tower and the language model.

Every parameter is an ``nnx.Param`` carrying ``logical_axes`` metadata; ``robust_r1_jax.parallel`` maps those
names onto the mesh. Parameters live in ``param_dtype``; each layer casts them to the compute dtype on use.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from robust_r1_jax.model import splash


def param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], *, std: float = 0.02,
          dtype=jnp.float32, value: float | None = None) -> nnx.Param:
    """A parameter initialised N(0, std) (or to a constant ``value``), annotated with logical axes."""
    if len(shape) != len(axes):
        raise ValueError(f"shape {tuple(shape)} and axes {tuple(axes)} differ in rank")
    if value is not None:
        data = jnp.full(shape, value, dtype)
    else:
        data = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(data, logical_axes=tuple(axes))


class Dense(nnx.Module):
    """y = x · W (+ b), with W of shape in_shape + out_shape so that heads stay a named axis.

    ``in_axes`` / ``out_axes`` name the dimensions; the contraction runs over all ``in_shape`` dims.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], in_axes: Sequence[str | None],
                 out_axes: Sequence[str | None], *, use_bias: bool, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, std: float = 0.02):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.dtype = dtype
        self.kernel = param(rngs, self.in_shape + self.out_shape, tuple(in_axes) + tuple(out_axes),
                            std=std, dtype=param_dtype)
        self.bias = param(rngs, self.out_shape, out_axes, value=0.0, dtype=param_dtype) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_shape)
        lhs = "".join(chr(ord("a") + i) for i in range(x.ndim - n_in))
        contract = "".join(chr(ord("m") + i) for i in range(n_in))
        out = "".join(chr(ord("s") + i) for i in range(len(self.out_shape)))
        y = jnp.einsum(f"{lhs}{contract},{contract}{out}->{lhs}{out}", x.astype(self.dtype),
                       self.kernel.value.astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias.value.astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """Qwen2 RMSNorm: normalise in float32, cast back, then scale (the order matters in bf16)."""

    def __init__(self, dim: int, axis_name: str, *, eps: float, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        del rngs
        self.eps, self.dtype = eps, dtype
        self.scale = param(None, (dim,), (axis_name,), value=1.0, dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return self.scale.value.astype(self.dtype) * xf.astype(self.dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis (scale and bias), statistics in float32; the Qwen3-VL tower's norm."""

    def __init__(self, dim: int, axis_name: str, *, eps: float, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        del rngs
        self.eps, self.dtype = eps, dtype
        self.scale = param(None, (dim,), (axis_name,), value=1.0, dtype=param_dtype)
        self.bias = param(None, (dim,), (axis_name,), value=0.0, dtype=param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale.value.astype(jnp.float32) + self.bias.value.astype(jnp.float32)).astype(self.dtype)


# transformers' ACT2FN names -> functions ("gelu" is the exact erf form, "gelu_pytorch_tanh" the tanh one).
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str):
    """The activation transformers calls ``name``; ValueError naming the known ones otherwise."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nnx.Module):
    """fc2(act(fc1(x))) with biases: the plain two-layer MLP of ViT-style blocks and patch mergers."""

    def __init__(self, dim: int, hidden: int, out: int, in_axis: str, mlp_axis: str, out_axis: str, *,
                 act: str, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, std: float = 0.02):
        kw = dict(use_bias=True, rngs=rngs, dtype=dtype, param_dtype=param_dtype, std=std)
        self.act = act
        self.fc1 = Dense((dim,), (hidden,), (in_axis,), (mlp_axis,), **kw)
        self.fc2 = Dense((hidden,), (out,), (mlp_axis,), (out_axis,), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(activation(self.act)(self.fc1(x)))


class GatedMLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int, embed_axis: str, mlp_axis: str, *, use_bias: bool,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, std: float = 0.02):
        kw = dict(use_bias=use_bias, rngs=rngs, dtype=dtype, param_dtype=param_dtype, std=std)
        self.gate = Dense((dim,), (hidden,), (embed_axis,), (mlp_axis,), **kw)
        self.up = Dense((dim,), (hidden,), (embed_axis,), (mlp_axis,), **kw)
        self.down = Dense((hidden,), (dim,), (mlp_axis,), (embed_axis,), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., seq, heads, head_dim]; cos/sin [..., seq, head_dim], applied in float32."""
    xf = x.astype(jnp.float32)
    out = xf * cos[..., None, :] + rotate_half(xf) * sin[..., None, :]
    return out.astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """Who may attend to whom, in the two forms the kernels take.

    ``dense`` bool [B, 1, Q, K] (True where a query may attend) drives the xla and cudnn paths.
    ``segment_ids`` int [B, S] (self-attention: Q = K = S) with ``causal`` says the same to splash: a query
    attends to keys of its own segment (not after it when causal). Padding is a segment of its own, so real
    tokens never see it; where a padding query's dense row allows other keys the two forms may give that row
    different (finite) outputs, never used. ``padding_segment``: that segment's id, whose queries splash computes
    over their own diagonal tile only. ``splash_tables``: splash's block tables of these segment ids
    (``with_splash_tables``: built once for all the layers that share the mask); None: each splash call builds
    its own.
    """
    dense: jax.Array
    segment_ids: jax.Array | None = None
    causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
    padding_segment: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    splash_tables: splash.BlockTables | None = None


IMPLEMENTATIONS = ("xla", "cudnn", "splash", "auto")


def resolve_implementation(implementation: str, dtype, mask) -> str:
    """"auto" -> cudnn on GPU for 16-bit inputs; splash on TPU when the mask has segment ids and the kernel can
    be placed (one device, or a mesh in context when traced: ``jax.set_mesh`` or
    ``jax.sharding.use_abstract_mesh``); else xla. "splash" without segment ids (a plain mask, e.g. decode over
    a KV cache) runs xla. Raises ValueError for an unknown name."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
    has_segments = isinstance(mask, AttentionMask) and mask.segment_ids is not None
    if implementation == "auto":
        backend = jax.default_backend()
        if backend == "gpu" and dtype in (jnp.bfloat16, jnp.float16):
            return "cudnn"
        placeable = jax.device_count() == 1 or not jax.sharding.get_abstract_mesh().empty
        return "splash" if backend == "tpu" and has_segments and placeable else "xla"
    if implementation == "splash" and not has_segments:
        return "xla"
    return implementation


def with_splash_tables(mask, implementation: str, dtype):
    """``mask`` with its splash block tables built (``splash.block_tables``) when ``attention`` would run it on
    splash for queries of ``dtype``, else ``mask`` as it is (a plain array, tables already built, or another
    implementation). A model calls it once per forward, before its layers, so the layers share one set of tables
    (an S x S comparison per row) instead of each building its own. Trace it under the mesh the attention is
    traced under: the choice and the tables' row split follow that mesh."""
    if resolve_implementation(implementation, dtype, mask) != "splash" or mask.splash_tables is not None:
        return mask
    tables = splash.block_tables(mask.segment_ids, causal=mask.causal, padding_segment=mask.padding_segment)
    return dataclasses.replace(mask, splash_tables=tables)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                     new: tuple[jax.Array, jax.Array] | None = None, implementation: str = "xla") -> jax.Array:
    """Attention of a few new queries over KV-cache slots (and, with ``new``, over the new tokens' own keys),
    reading the cache in its own dtype.

    q [B, Q, H, D]; k, v [B, KV, K, D] (heads-major, the cache's layout and dtype, e.g. bfloat16); mask bool
    broadcastable to [B, 1, Q, K] over the cached slots; ``new`` = (keys, values) [B, Q, KV, D] of the Q new
    tokens, each of which every query sees (decode: Q = 1, the token itself). Both products accumulate in float32
    (``preferred_element_type``) and the softmax runs in float32, so no float32 copy of the cache is made; the
    probabilities enter the second product in the cache's dtype, as flash-attention kernels do (FlashAttention-2,
    Dao 2023). In float32 it is the softmax attention of ``attention(..., implementation="xla")`` over the
    cached and new keys. Returns [B, Q, H, D] in q's dtype.

    XLA:CPU cannot run a 16-bit batched product into float32, so on a CPU backend (unless the model is traced for
    TPU, ``implementation="splash"``, as the aot mode does) the operands are widened first: a CPU has no
    bandwidth to save.
    """
    b, nq, h, d = q.shape
    kv = k.shape[1]
    if k.dtype != jnp.float32 and jax.default_backend() == "cpu" and implementation != "splash":
        k, v = k.astype(jnp.float32), v.astype(jnp.float32)
    qg = q.reshape(b, nq, kv, h // kv, d).astype(k.dtype)
    product = lambda spec, x, y: jnp.einsum(spec, x, y, preferred_element_type=jnp.float32)
    logits = product("bqkgd,bksd->bkgqs", qg, k) / math.sqrt(d)
    m = jnp.broadcast_to(mask, (b, 1, nq, k.shape[2]))[:, :, None]
    logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
    if new is None:
        probs = jax.nn.softmax(logits, axis=-1)
        out = product("bkgqs,bksd->bqkgd", probs.astype(v.dtype), v)
        return out.reshape(b, nq, h, d).astype(q.dtype)
    # the new tokens' scores join the softmax without concatenating them to the cache's (a concatenation made
    # XLA re-lay out the score arrays): one shared maximum and denominator
    new_k, new_v = (a.astype(k.dtype) for a in new)
    fresh = product("bqkgd,bskd->bkgqs", qg, new_k) / math.sqrt(d)
    top = jnp.maximum(logits.max(axis=-1, keepdims=True), fresh.max(axis=-1, keepdims=True))
    weights, fresh_weights = jnp.exp(logits - top), jnp.exp(fresh - top)
    total = weights.sum(axis=-1) + fresh_weights.sum(axis=-1)   # [b, k, g, q]
    out = product("bkgqs,bksd->bqkgd", weights.astype(v.dtype), v) \
        + product("bkgqs,bskd->bqkgd", fresh_weights.astype(v.dtype), new_v)
    out = out / jnp.moveaxis(total, -1, 1)[..., None]
    return out.reshape(b, nq, h, d).astype(q.dtype)


# Causal self-attention on the xla path runs in query chunks of this many tokens, each against the keys up to its
# last query, so the masked upper triangle is never computed: 56% of the scores at 4,096 tokens. Forward and
# backward of one 3B layer's attention on this project's 2-core CPU, float32 (benchmarks/attention_xla.py):
# 11.0 s (the former grouped einsum) -> 2.9 s at 4 x 2,048 tokens, 23.2 s -> 5.3 s at 2 x 4,096.
XLA_QUERY_CHUNK = 512


def _xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Softmax attention in float32 as batched matmuls over [B, KV, G x Q, D] (the G query heads of a KV head
    stacked along the queries; a 5-D grouped einsum runs ~2x slower on a CPU). Shapes as ``attention``'s, ``mask``
    a bool array broadcastable to [B, H, Q, K] or None."""
    b, nq, h, d = q.shape
    nk, kv = k.shape[1], k.shape[2]
    g = h // kv
    qg = q.astype(jnp.float32).reshape(b, nq, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * nq, d)
    kt, vt = (x.astype(jnp.float32).transpose(0, 2, 1, 3) for x in (k, v))
    logits = jnp.einsum("bkqd,bksd->bkqs", qg, kt) / math.sqrt(d)
    if mask is not None:
        m = jnp.broadcast_to(mask, (b, mask.shape[1], nq, nk))
        m = m.reshape(b, kv, g * nq, nk) if m.shape[1] == h else jnp.broadcast_to(
            m[:, :, None], (b, m.shape[1], g, nq, nk)).reshape(b, m.shape[1], g * nq, nk)
        logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
    out = jnp.einsum("bkqs,bksd->bkqd", jax.nn.softmax(logits, axis=-1), vt)
    return out.reshape(b, kv, g, nq, d).transpose(0, 3, 1, 2, 4).reshape(b, nq, h, d).astype(q.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask | jax.Array | None, *,
              implementation: str = "xla") -> jax.Array:
    """Scaled dot-product attention, the one place a fused kernel plugs in.

    q [B, Q, H, D]; k, v [B, K, KV, D] with H a multiple of KV (grouped-query attention); ``mask`` an
    ``AttentionMask``, or a bool array broadcastable to [B, H, Q, K] (True where a query may attend), or None.
    Softmax runs in float32. ``implementation``: "xla" (portable, exact reference), "cudnn" (fused flash
    kernel on NVIDIA GPUs), "splash" (the Pallas flash kernel on TPU, ``model/splash.py``; needs segment ids)
    or "auto" (see ``resolve_implementation``). On the xla path a causal ``AttentionMask`` over self-attention
    (Q = K) runs in query chunks of ``XLA_QUERY_CHUNK`` that read the keys up to their last query only (its dense
    form is causal, as ``vlm.causal_mask`` builds it).
    """
    implementation = resolve_implementation(implementation, q.dtype, mask)
    if implementation == "splash":
        return splash.splash_attention(q, k, v, mask.segment_ids, causal=mask.causal,
                                       padding_segment=mask.padding_segment, tables=mask.splash_tables)
    causal_self = isinstance(mask, AttentionMask) and mask.causal and q.shape[1] == k.shape[1]
    if isinstance(mask, AttentionMask):
        mask = mask.dense
    if implementation == "xla":
        if not causal_self or q.shape[1] <= XLA_QUERY_CHUNK:
            return _xla_attention(q, k, v, mask)
        chunks = []
        for start in range(0, q.shape[1], XLA_QUERY_CHUNK):
            end = min(start + XLA_QUERY_CHUNK, q.shape[1])
            chunks.append(_xla_attention(q[:, start:end], k[:, :end], v[:, :end], mask[..., start:end, :end]))
        return jnp.concatenate(chunks, axis=1)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
