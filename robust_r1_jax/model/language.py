"""The Qwen2 decoder of Qwen2.5-VL: grouped-query attention with qkv biases, M-RoPE, SwiGLU, RMSNorm.

The KV cache is a pytree of fixed-size arrays (one slot per position up to ``max_len``), so prefill and
single-token decode are each one compiled program and the cache can be donated between steps.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax.model import stacking
from robust_r1_jax.model.config import TextConfig
from robust_r1_jax.model.layers import Dense, GatedMLP, RMSNorm, apply_rotary, attention, cached_attention, param


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys/values for every layer, [layers, batch, kv_heads, max_len, head_dim]: heads-major, so a layer's
    [max_len, head_dim] slab per head is what TPU's (8, 128) tiles hold and the decode's products read the cache
    as it lies (length-major with 2 KV heads, XLA relaid the whole cache out at every step).

    ``valid`` marks written, non-padding slots; ``index`` is the next slot to write (shared by the batch,
    prompts are left-padded to a common length); ``next_position`` is each row's next rotary position.
    """
    keys: jax.Array
    values: jax.Array
    valid: jax.Array
    index: jax.Array
    next_position: jax.Array

    @classmethod
    def empty(cls, cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        return cls(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype),
                   valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32),
                   next_position=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def repeat(self, times: int) -> "KVCache":
        """Each row ``times`` times in a row: G samples share one prefill."""
        rep = lambda a, axis: jnp.repeat(a, times, axis=axis)
        return KVCache(rep(self.keys, 1), rep(self.values, 1), rep(self.valid, 0),
                       jnp.array(self.index, copy=True), rep(self.next_position, 0))


def mrope_cos_sin(positions: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, S] (t, h, w) -> cos/sin [B, S, head_dim].

    Frequency j of the rotary half rotates with axis a(j): the first mrope_section[0] with t, the next
    mrope_section[1] with h, the last with w.
    """
    half = cfg.head_dim // 2
    if sum(cfg.mrope_section) != half:
        raise ValueError(f"mrope_section {cfg.mrope_section} must sum to head_dim/2 = {half}")
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
    axis_of = jnp.repeat(jnp.arange(3), jnp.asarray(cfg.mrope_section), total_repeat_length=half)
    pos = positions.astype(jnp.float32)[axis_of]  # [half, B, S]
    freqs = jnp.moveaxis(pos, 0, -1) * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs, dtype, param_dtype):
        h, kv, d, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.q = Dense((e,), (h, d), ("embed",), ("heads", "head_dim"), use_bias=True, **kw)
        self.k = Dense((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), use_bias=True, **kw)
        self.v = Dense((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), use_bias=True, **kw)
        self.o = Dense((h, d), (e,), ("heads", "head_dim"), ("embed",), use_bias=False, **kw)

    def __call__(self, x, cos, sin, mask, implementation, kv_state=None):
        """kv_state: None (attend within x) or (all layers' keys, values, this layer, write index, attend).

        The new keys/values are written into the whole-cache buffers with one dynamic_update_slice each, so
        XLA updates the cache in place instead of re-stacking every layer at every decode step. The queries
        attend over the first ``attend`` slots only (a static count; ``mask`` covers exactly those), so a step
        reads the filled part of the cache, not its whole length. One new token per row (decode) reads the
        cache in its dtype through ``cached_attention``.
        """
        q, k, v = self.q(x), self.k(x), self.v(x)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_state is None:
            return self.o(attention(q, k, v, mask, implementation=implementation)), None
        keys, values, layer, index, attend = kv_state
        start = (layer, 0, 0, index, 0)
        heads_major = lambda a, cache: jnp.swapaxes(a, 1, 2)[None].astype(cache.dtype)   # [1, B, KV, S, D]
        keys = jax.lax.dynamic_update_slice(keys, heads_major(k, keys), start)
        values = jax.lax.dynamic_update_slice(values, heads_major(v, values), start)
        k = jax.lax.dynamic_index_in_dim(keys, layer, 0, keepdims=False)[:, :, :attend]
        v = jax.lax.dynamic_index_in_dim(values, layer, 0, keepdims=False)[:, :, :attend]
        if q.shape[1] == 1:
            out = cached_attention(q, k, v, mask, implementation=implementation)
        else:   # a prompt: once per rollout, through the configured implementation
            length_major = lambda a: jnp.swapaxes(a, 1, 2).astype(q.dtype)
            out = attention(q, length_major(k), length_major(v), mask, implementation=implementation)
        return self.o(out), (keys, values)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.input_norm = RMSNorm(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, **kw)
        self.attn = Attention(cfg, **kw)
        self.post_attention_norm = RMSNorm(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, **kw)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, "embed", "mlp", use_bias=False, **kw)

    def __call__(self, x, cos, sin, mask, implementation, kv_state=None):
        h, kv_state = self.attn(self.input_norm(x), cos, sin, mask, implementation, kv_state)
        x = x + h
        return x + self.mlp(self.post_attention_norm(x)), kv_state


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LanguageModel(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs: nnx.Rngs, dtype, param_dtype, attention_impl="xla",
                 remat="none", scan_layers: bool = False):
        """``scan_layers``: the decoder layers as one stacked module run under ``lax.scan`` (parameters
        [layers, ...]) instead of a list of modules unrolled into the program; the same numbers either way."""
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        if remat not in ("none", *_REMAT_POLICIES):
            raise ValueError(f"unknown remat policy {remat!r}; expected 'none', 'full' or 'dots'")
        self.cfg, self.dtype, self.attention_impl, self.remat = cfg, dtype, attention_impl, remat
        self.scan_layers = scan_layers
        self.embed = param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), dtype=param_dtype)
        layers = [DecoderLayer(cfg, **kw) for _ in range(cfg.num_hidden_layers)]
        self.layers = stacking.stack_modules(layers) if scan_layers else nnx.List(layers)
        self.norm = RMSNorm(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, **kw)
        self.lm_head = None if cfg.tie_word_embeddings else Dense(
            (cfg.hidden_size,), (cfg.vocab_size,), ("embed",), ("vocab",), use_bias=False, **kw)

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed.value, ids, axis=0, mode="clip").astype(self.dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is not None:
            return self.lm_head(hidden).astype(jnp.float32)
        return jnp.einsum("bse,ve->bsv", hidden, self.embed.value.astype(self.dtype)).astype(jnp.float32)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
                 cache: KVCache | None = None, attend: int | None = None) -> tuple[jax.Array, KVCache | None]:
        """x [B, S, E] input embeddings, positions [3, B, S], mask bool [B, 1, S, K] -> final hidden states.

        With a cache, the S new tokens are written at ``cache.index`` and attend over the first K = ``attend``
        slots (a static int, default all ``max_len``; every written slot must lie below it); ``mask`` is over
        those K slots. Raises ValueError for an ``attend`` outside [1, max_len].
        """
        if cache is not None:
            attend = cache.max_len if attend is None else attend
            if not 1 <= attend <= cache.max_len:
                raise ValueError(f"attend={attend} must be in [1, {cache.max_len}] (the cache length)")
        cos, sin = mrope_cos_sin(positions, self.cfg)
        keys, values = (None, None) if cache is None else (cache.keys, cache.values)

        def step(layer, carry, index):
            x, keys, values = carry
            # The whole cache travels as the carry and each layer writes its slot in place: scanned, ``index``
            # is the loop counter; unrolled, a Python int.
            kv_state = None if keys is None else (keys, values, index, cache.index, attend)
            x, kv_state = layer(x, cos, sin, mask, self.attention_impl, kv_state)
            return (x, None, None) if kv_state is None else (x, *kv_state)

        policy = _REMAT_POLICIES[self.remat] if self.remat != "none" and cache is None else None
        x, keys, values = stacking.run_layers(self.layers, step, (x, keys, values),
                                              np.arange(self.cfg.num_hidden_layers), stacked=self.scan_layers,
                                              policy=policy)
        x = self.norm(x)
        if cache is not None:
            cache = dataclasses.replace(cache, keys=keys, values=values)
        return x, cache
