"""Qwen2.5-VL and Qwen3-VL for conditional generation: vision tower + decoder, image features scattered into the
``<|image_pad|>`` positions (Qwen3-VL: DeepStack features too, added after the first decoder layers), M-RoPE
positions computed on the device. ``config.model_type`` picks the family's tower (``vision.VisionTower`` or
``qwen3_vl.VisionTower``); everything else is one code path.

Stable API::

    model = Qwen25VL(config, rngs=nnx.Rngs(0))
    logits = model(input_ids, pixel_values=..., image_grid_thw=..., attention_mask=...)  # [B, S, vocab]
    logits, cache = model.prefill(input_ids, attention_mask, pixel_values, image_grid_thw, max_len=...)
    logits, cache = model.decode(next_tokens, cache)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax.model import qwen3_vl
from robust_r1_jax.model.config import ModelConfig, resolve_dtype
from robust_r1_jax.model.language import KVCache, LanguageModel
from robust_r1_jax.model.layers import AttentionMask
from robust_r1_jax.model.rope_index import mrope_position_ids, text_position_ids
from robust_r1_jax.model.vision import VisionTower


class Qwen25VL(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype, param_dtype = resolve_dtype(config.dtype), resolve_dtype(config.param_dtype)
        tower = qwen3_vl.VisionTower if config.model_type == qwen3_vl.MODEL_TYPE else VisionTower
        self.visual = tower(config.vision, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                  attention_impl=config.attention_impl, scan_layers=config.scan_layers)
        self.language = LanguageModel(config.text, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                                      attention_impl=config.attention_impl, remat=config.remat,
                                      scan_layers=config.scan_layers)

    # ---- public entry points ------------------------------------------------------------------------------
    def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
                 position_ids=None) -> jax.Array:
        """Logits [B, S, vocab] in float32 (jitted; checks the image-token count when inputs are concrete)."""
        check_image_tokens(self.config, input_ids, image_grid_thw, pixel_values)
        return _jit_logits(self, *_as_arrays(input_ids, pixel_values, image_grid_thw, attention_mask,
                                             position_ids))

    def prefill(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
                max_len: int) -> tuple[jax.Array, KVCache]:
        """Runs the prompt (left-padded) and returns the last position's logits [B, vocab] and the cache."""
        check_image_tokens(self.config, input_ids, image_grid_thw, pixel_values)
        ids, pix, grid, mask, _ = _as_arrays(input_ids, pixel_values, image_grid_thw, attention_mask, None)
        return _jit_prefill(self, ids, pix, grid, mask, max_len)

    def decode(self, tokens, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One token per row [B] -> logits [B, vocab] and the updated cache (donated)."""
        return _jit_decode(self, jnp.asarray(tokens, jnp.int32), cache)

    # ---- traceable building blocks (used inside the SFT / RL steps) -------------------------------------------
    def image_features(self, pixel_values, image_grid_thw):
        """The tower's output the decoder reads: Qwen2.5-VL features [..., M, E]; Qwen3-VL (features, deepstack
        [..., D, M, E]). Flat, batched or packed rows' image-major layout as ``self.visual`` takes it; the last two
        give the batched result, every leaf batch-major, so G samples of a prompt share it by repeating each leaf
        along axis 0."""
        features, _, *deepstack = self.visual(pixel_values, image_grid_thw)
        return (features, deepstack[0]) if deepstack else features

    def embed(self, input_ids, pixel_values=None, image_grid_thw=None, image_features=None,
              slot_ids=None) -> tuple[jax.Array, jax.Array | None]:
        """Token embeddings [B, S, E] with image features in the image-token slots, and the DeepStack additions
        [B, D, S, E] (zero off the image tokens; None for Qwen2.5-VL or without images). ``image_features`` (from
        ``self.image_features``) skips the vision tower, e.g. when G samples of one prompt share its image.
        ``slot_ids`` (default ``input_ids``) say where the slots are: GRPO's learner passes ids whose completion
        part holds no image token, since an ``<|image_pad|>`` the sampler wrote is text."""
        x = self.language.embed_tokens(input_ids)
        if image_features is None and pixel_values is not None:
            image_features = self.image_features(pixel_values, image_grid_thw)
        if image_features is None:
            return x, None
        slots = input_ids if slot_ids is None else slot_ids
        deepstack = None
        if isinstance(image_features, tuple):
            image_features, levels = image_features
            deepstack = scatter_deepstack(slots, levels.astype(x.dtype), self.config.image_token_id)
        x = scatter_image_features(x, slots, image_features.astype(x.dtype), self.config.image_token_id)
        return x, deepstack

    def positions(self, input_ids, attention_mask, image_grid_thw=None) -> tuple[jax.Array, jax.Array]:
        """M-RoPE positions [3, B, S] and each row's next position [B]."""
        if image_grid_thw is None:
            pos = text_position_ids(attention_mask)
            return pos, jnp.max(pos[0], axis=-1) + 1
        if image_grid_thw.ndim == 3:  # batched layout: the rows' images in order, zero rows ignored
            image_grid_thw = image_grid_thw.reshape(-1, 3)
        return mrope_position_ids(input_ids, image_grid_thw, attention_mask,
                                  image_token_id=self.config.image_token_id,
                                  spatial_merge_size=self.config.vision.spatial_merge_size)

    def hidden_states(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
                      position_ids=None, image_features=None, slot_ids=None) -> jax.Array:
        """Final normalised hidden states [B, S, E] (the SFT loss projects them to logits in chunks).

        ``attention_mask`` int [B, S]: 1 on real tokens, or the segment ids of packed rows (0 padding, k on the
        row's k-th example; see ``causal_mask``), which need their own ``position_ids`` (restarting per example;
        ``data/rows.py`` builds them). ``slot_ids``: see ``embed``; they also decide the M-RoPE positions."""
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        x, deepstack = self.embed(input_ids, pixel_values, image_grid_thw, image_features, slot_ids)
        if position_ids is None:
            slots = input_ids if slot_ids is None else slot_ids
            position_ids, _ = self.positions(slots, attention_mask, image_grid_thw)
        hidden, _ = self.language(x, position_ids, causal_mask(attention_mask), deepstack=deepstack)
        return hidden

    def logits(self, *args, **kw) -> jax.Array:
        return self.language.logits(self.hidden_states(*args, **kw))

    def prefill_traced(self, input_ids, pixel_values, image_grid_thw, attention_mask, max_len: int):
        b, s = input_ids.shape
        if s > max_len:
            raise ValueError(f"prompt length {s} exceeds the cache length {max_len}")
        x, deepstack = self.embed(input_ids, pixel_values, image_grid_thw)
        positions, next_position = self.positions(input_ids, attention_mask, image_grid_thw)
        cache = KVCache.empty(self.config.text, b, max_len, x.dtype)
        valid = jnp.zeros((b, max_len), bool).at[:, :s].set(attention_mask.astype(bool))
        # the prompt attends over its own s slots: the empty rest of the cache is never read
        mask = _with_self(valid[:, None, None, :s] & _causal(s, s)[None, None], s, s)
        cache = dataclasses.replace(cache, valid=valid)
        hidden, cache = self.language(x, positions, mask, cache, attend=s, deepstack=deepstack)
        cache = dataclasses.replace(cache, index=jnp.asarray(s, jnp.int32), next_position=next_position)
        return self.language.logits(hidden[:, -1:])[:, 0], cache

    def decode_traced(self, tokens, cache: KVCache, attend: int | None = None):
        """One token per row [B] -> logits [B, vocab] float32 and the cache. ``attend`` (static): the token
        attends over the first ``attend`` cache slots only (default all), which must include slot
        ``cache.index``; the rollout passes the end of its current length bucket."""
        x = self.language.embed_tokens(tokens[:, None])
        positions = jnp.broadcast_to(cache.next_position[None, :, None], (3, tokens.shape[0], 1))
        attend = cache.max_len if attend is None else attend
        # the slots written before this step; the token sees itself through its own new key
        hidden, cache = self.language(x, positions, cache.valid[:, None, None, :attend], cache, attend=attend)
        valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, jnp.ones((tokens.shape[0], 1), bool),
                                                    cache.index, axis=1)
        cache = dataclasses.replace(cache, valid=valid)
        cache = dataclasses.replace(cache, index=cache.index + 1, next_position=cache.next_position + 1)
        return self.language.logits(hidden)[:, 0], cache


# ---- pure helpers -------------------------------------------------------------------------------------------
def _causal(q_len: int, k_len: int) -> jax.Array:
    return jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None]


def _with_self(mask: jax.Array, q_len: int, k_len: int) -> jax.Array:
    """Lets every query see its own slot, so padding rows stay finite (their outputs are never used)."""
    return mask | (jnp.arange(k_len)[None, :] == jnp.arange(q_len)[:, None])[None, None]


def causal_mask(segment_ids: jax.Array) -> AttentionMask:
    """Causal attention within a segment: dense [B, 1, S, S] and, for splash, the segment ids [B, S] themselves.

    ``segment_ids`` int [B, S]: 0 on padding, k >= 1 on the tokens of the row's k-th example. An unpacked
    row's 0/1 ``attention_mask`` is the one-example case. A real query sees the keys of its own example up to
    itself, in both forms, so examples packed into one row never attend to each other. A padding query sees
    itself (and, in the segment form, the padding before it): finite, and never used."""
    s = segment_ids.shape[1]
    segment_ids = segment_ids.astype(jnp.int32)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids > 0)[:, None, :]
    dense = _with_self(same[:, None] & _causal(s, s)[None, None], s, s)
    return AttentionMask(dense=dense, segment_ids=segment_ids, causal=True, padding_segment=0)


def scatter_image_features(x: jax.Array, input_ids: jax.Array, features: jax.Array, image_token_id: int):
    """Image tokens take feature rows in order.

    Flat features [M, E]: the k-th image token of the whole batch (row-major) takes row k.
    Batched features [B, M, E]: the k-th image token of row b takes features[b, k].
    """
    is_image = input_ids == image_token_id
    if features.ndim == 2:
        flat = is_image.reshape(-1)
        rank = jnp.clip(jnp.cumsum(flat) - 1, 0, features.shape[0] - 1)
        merged = jnp.where(flat[:, None], features[rank], x.reshape(-1, x.shape[-1]))
        return merged.reshape(x.shape)
    rank = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
    picked = jnp.take_along_axis(features, rank[..., None], axis=1)
    return jnp.where(is_image[..., None], picked, x)


def scatter_deepstack(input_ids: jax.Array, levels: jax.Array, image_token_id: int) -> jax.Array:
    """DeepStack features placed at the image tokens, zeros elsewhere: [B, D, S, E].

    ``levels`` flat [D, M, E] (the k-th image token of the batch, row-major, takes row k of each level) or batched
    [B, D, M, E] (the k-th image token of row b takes levels[b, :, k]); see ``scatter_image_features``.
    """
    zeros = jnp.zeros((*input_ids.shape, levels.shape[-1]), levels.dtype)
    level = (lambda d: levels[d]) if levels.ndim == 3 else (lambda d: levels[:, d])
    count = levels.shape[0] if levels.ndim == 3 else levels.shape[1]
    return jnp.stack([scatter_image_features(zeros, input_ids, level(d), image_token_id) for d in range(count)],
                     axis=1)


def check_image_tokens(config: ModelConfig, input_ids, image_grid_thw, pixel_values) -> None:
    """Host-side check (skipped under tracing): image tokens must match the image features one to one."""
    if any(isinstance(a, jax.core.Tracer) for a in (input_ids, image_grid_thw, pixel_values)):
        return
    n_tokens = int(np.sum(np.asarray(input_ids) == config.image_token_id))
    if pixel_values is None:
        if n_tokens:
            raise ValueError(f"input_ids hold {n_tokens} image tokens but no pixel_values were given")
        return
    if image_grid_thw is None:
        raise ValueError("pixel_values given without image_grid_thw")
    grid = np.asarray(image_grid_thw)
    n_patches = int(np.prod(grid, axis=-1).sum())
    if np.ndim(pixel_values) == 4:   # image-major: one sub-bucket per image slot
        per_row, room = np.prod(grid, axis=-1).max(), np.shape(pixel_values)[-2]
    else:
        per_row = np.prod(grid, axis=-1).sum(axis=-1).max() if grid.ndim == 3 else n_patches
        room = np.shape(pixel_values)[-2]
    if per_row > room:
        raise ValueError(f"image_grid_thw describes {per_row} patches but pixel_values has room for {room}")
    n_features = n_patches // config.vision.merge_unit
    if n_tokens != n_features:
        raise ValueError(f"image features and image tokens do not match: input_ids hold {n_tokens} "
                         f"<|image_pad|> tokens (id {config.image_token_id}) but image_grid_thw gives "
                         f"{n_features} image features")


def _as_arrays(input_ids, pixel_values, image_grid_thw, attention_mask, position_ids):
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones(ids.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    pix = None if pixel_values is None else jnp.asarray(pixel_values)
    grid = None if image_grid_thw is None else jnp.asarray(image_grid_thw, jnp.int32)
    if grid is not None and grid.ndim == 1:
        grid = grid.reshape(-1, 3)
    pos = None if position_ids is None else jnp.asarray(position_ids, jnp.int32)
    return ids, pix, grid, mask, pos


@nnx.jit
def _jit_logits(model: Qwen25VL, ids, pix, grid, mask, pos):
    return model.logits(ids, pix, grid, mask, pos)


@nnx.jit(static_argnums=(5,))
def _jit_prefill(model: Qwen25VL, ids, pix, grid, mask, max_len):
    return model.prefill_traced(ids, pix, grid, mask, max_len)


@nnx.jit(donate_argnums=(2,))
def _jit_decode(model: Qwen25VL, tokens, cache):
    return model.decode_traced(tokens, cache)
