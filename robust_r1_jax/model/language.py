"""The decoder of both families: grouped-query attention, M-RoPE, SwiGLU, RMSNorm. Qwen2 (Qwen2.5-VL) has qkv
biases and blocked M-RoPE sections; Qwen3 (Qwen3-VL) has q/k RMSNorm, no biases, interleaved M-RoPE and DeepStack
visual features added to the first layers' outputs (``TextConfig`` flags, no second copy of the layers).

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
from robust_r1_jax.model.layers import (Dense, GatedMLP, RMSNorm, apply_rotary, attention, cached_attention, param,
                                        with_splash_tables)


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


def mrope_axes(cfg: TextConfig) -> np.ndarray:
    """Which position row (0 t, 1 h, 2 w) rotates each of the head_dim / 2 frequencies; int [head_dim / 2].

    Blocked (Qwen2.5-VL, ``Qwen2_5_VLRotaryEmbedding``): the first mrope_section[0] frequencies with t, the next
    mrope_section[1] with h, the last with w. Interleaved (Qwen3-VL, ``Qwen3VLTextRotaryEmbedding.
    recomposition_frequencies``): frequency j goes to h when j % 3 == 1 and j < 3 * mrope_section[1], to w when
    j % 3 == 2 and j < 3 * mrope_section[2], to t otherwise. ValueError when the sections do not sum to half.
    """
    half = cfg.head_dim // 2
    if sum(cfg.mrope_section) != half:
        raise ValueError(f"mrope_section {cfg.mrope_section} must sum to head_dim/2 = {half}")
    if not cfg.mrope_interleaved:
        return np.repeat(np.arange(3), cfg.mrope_section)
    j = np.arange(half)
    axes = np.zeros(half, np.int32)
    axes[(j % 3 == 1) & (j < 3 * cfg.mrope_section[1])] = 1
    axes[(j % 3 == 2) & (j < 3 * cfg.mrope_section[2])] = 2
    return axes


def mrope_cos_sin(positions: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
    """positions [3, B, S] (t, h, w) -> cos/sin [B, S, head_dim], float32.

    Frequency j of the rotary half rotates with the position row ``mrope_axes(cfg)[j]``.
    """
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim))
    pos = positions.astype(jnp.float32)[mrope_axes(cfg)]  # [half, B, S]
    freqs = jnp.moveaxis(pos, 0, -1) * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, rngs, dtype, param_dtype):
        h, kv, d, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        bias = cfg.attention_bias
        self.q = Dense((e,), (h, d), ("embed",), ("heads", "head_dim"), use_bias=bias, **kw)
        self.k = Dense((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), use_bias=bias, **kw)
        self.v = Dense((e,), (kv, d), ("embed",), ("kv_heads", "head_dim"), use_bias=bias, **kw)
        self.o = Dense((h, d), (e,), ("heads", "head_dim"), ("embed",), use_bias=False, **kw)
        # Qwen3: one RMSNorm over head_dim shared by all query heads, one by all key heads.
        self.q_norm = RMSNorm(d, "head_dim", eps=cfg.rms_norm_eps, **kw) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, "head_dim", eps=cfg.rms_norm_eps, **kw) if cfg.qk_norm else None

    def __call__(self, x, cos, sin, mask, implementation, kv_state=None):
        """kv_state: None (attend within x, no cache), or (this layer's cached keys, values [B, KV, attend, D] or
        None, and a prompt flag).

        Returns the output and this call's new keys/values [B, S, KV, D] (the caller writes them into the cache).
        One new token per row (decode) attends over the cached slots ``mask`` [B, 1, 1, attend] allows and over
        itself, reading the cache in its dtype through ``cached_attention``; a prompt (S > 1 tokens into an empty
        cache) attends within itself by ``mask`` through the configured implementation.
        """
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv_state is None:
            return self.o(attention(q, k, v, mask, implementation=implementation)), None
        cached_k, cached_v = kv_state
        if cached_k is None:
            out = attention(q, k, v, mask, implementation=implementation)
        else:
            out = cached_attention(q, cached_k, cached_v, mask, new=(k, v), implementation=implementation)
        return self.o(out), (k, v)


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


def _deepstack_level(deepstack: jax.Array, layer) -> jax.Array:
    """What layer ``layer`` adds: level ``layer`` of deepstack [B, D, S, E]; from layer D on nothing (None) when the
    layers are unrolled (``layer`` a Python / NumPy int), zeros under scan (``layer`` traced)."""
    levels = deepstack.shape[1]
    if isinstance(layer, (int, np.integer)):
        return deepstack[:, int(layer)] if layer < levels else None
    picked = jax.lax.dynamic_index_in_dim(deepstack, jnp.minimum(layer, levels - 1), axis=1, keepdims=False)
    return jnp.where(layer < levels, picked, jnp.zeros_like(picked))


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
                 cache: KVCache | None = None, attend: int | None = None,
                 deepstack: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
        """x [B, S, E] input embeddings, positions [3, B, S], mask bool -> final hidden states (and the cache).

        Without a cache, ``mask`` is [B, 1, S, S]. With a cache the S new tokens' keys and values are written at
        ``cache.index`` after the last layer (one in-place write per step: inside the layer loop the cache is
        only read, so XLA keeps it in the layout its reads want):
        - S == 1 (decode): the token attends over the first ``attend`` cache slots (static, default ``max_len``)
          as ``mask`` [B, 1, 1, attend] allows, plus itself; ``mask`` must leave out the slot being written.
        - S > 1 (a prompt into an empty cache, the prefill): the tokens attend within themselves by ``mask``
          [B, 1, S, S]; the cache is not read.
        ``deepstack`` [B, D, S, E] (Qwen3-VL; zero off the image tokens): level i is added to the output of
        decoder layer i, for i < D (``Qwen3VLTextModel._deepstack_process``).
        Raises ValueError for an ``attend`` outside [1, max_len].
        """
        cos, sin = mrope_cos_sin(positions, self.cfg)
        mask = with_splash_tables(mask, self.attention_impl, self.dtype)   # once, for every layer
        layers = np.arange(self.cfg.num_hidden_layers)

        def with_deepstack(x, index):
            added = None if deepstack is None else _deepstack_level(deepstack, index)
            return x if added is None else x + added.astype(x.dtype)

        if cache is None:
            def step(layer, carry, index):
                return with_deepstack(layer(carry, cos, sin, mask, self.attention_impl)[0], index)
            policy = _REMAT_POLICIES[self.remat] if self.remat != "none" else None
            x = stacking.run_layers(self.layers, step, x, layers, stacked=self.scan_layers, policy=policy)
            return self.norm(x), None

        attend = cache.max_len if attend is None else attend
        if not 1 <= attend <= cache.max_len:
            raise ValueError(f"attend={attend} must be in [1, {cache.max_len}] (the cache length)")
        decoding = x.shape[1] == 1
        b, s = x.shape[:2]
        t = self.cfg
        new_shape = (t.num_hidden_layers, b, t.num_key_value_heads, s, t.head_dim)

        def read(stacked, index):
            # one slice of exactly the slots read, so XLA fuses it into the products
            return jax.lax.dynamic_slice(stacked, (index, 0, 0, 0, 0),
                                         (1, *stacked.shape[1:3], attend, stacked.shape[4]))[0]

        def step(layer, carry, index):
            # scanned, ``index`` is the loop counter; unrolled, a Python int
            x, new_k, new_v = carry
            state = (read(cache.keys, index), read(cache.values, index)) if decoding else (None, None)
            x, (k, v) = layer(x, cos, sin, mask, self.attention_impl, state)
            x = with_deepstack(x, index)
            heads_major = lambda a: jnp.swapaxes(a, 1, 2)[None].astype(cache.keys.dtype)   # [1, B, KV, S, D]
            new_k = jax.lax.dynamic_update_slice(new_k, heads_major(k), (index, 0, 0, 0, 0))
            new_v = jax.lax.dynamic_update_slice(new_v, heads_major(v), (index, 0, 0, 0, 0))
            return x, new_k, new_v

        empty = jnp.zeros(new_shape, cache.keys.dtype)
        x, new_k, new_v = stacking.run_layers(self.layers, step, (x, empty, empty), layers,
                                              stacked=self.scan_layers)
        start = (0, 0, 0, cache.index, 0)
        cache = dataclasses.replace(cache, keys=jax.lax.dynamic_update_slice(cache.keys, new_k, start),
                                    values=jax.lax.dynamic_update_slice(cache.values, new_v, start))
        return self.norm(x), cache
