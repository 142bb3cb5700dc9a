"""Qwen2.5-VL vision tower: patch embedding, 2-D rotary, window / full attention, patch merger.

Static shapes: ``pixel_values`` is a bucket of N patch rows (all images of the batch, then zero padding) and
``grid_thw`` a fixed number of image slots (unused slots are (0, 0, 0)). Instead of transformers' window
permutation we give every patch the id of its attention window and attend within equal ids (a block-diagonal
mask), so patches stay in processor order, no Python loop runs over windows, and the merger reads them as-is.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax.model import stacking
from robust_r1_jax.model.config import VisionConfig, resolve_dtype
from robust_r1_jax.model.layers import (AttentionMask, Dense, GatedMLP, RMSNorm, apply_rotary, attention,
                                        with_splash_tables)

_WINDOW_STRIDE = 1 << 20  # window ids of different images never collide


def patch_layout(grid_thw: jax.Array, num_patches: int, cfg: VisionConfig) -> dict[str, jax.Array]:
    """Per-patch metadata from the image grids, jittable: row/column, its image's patch grid height/width, window
    and frame ids, validity.

    Patches follow the processor's order: image by image, frame by frame, then 2x2 merge blocks row-major
    over the merged grid, each block's four patches row-major.
    """
    grid_thw = grid_thw.astype(jnp.int32)
    t, h, w = grid_thw[:, 0], grid_thw[:, 1], grid_thw[:, 2]
    counts = t * h * w
    ends = jnp.cumsum(counts)
    starts = ends - counts
    p = jnp.arange(num_patches, dtype=jnp.int32)
    image = jnp.clip(jnp.searchsorted(ends, p, side="right"), 0, grid_thw.shape[0] - 1)
    valid = p < ends[-1]
    m = cfg.spatial_merge_size
    hh, ww = jnp.maximum(h[image], m), jnp.maximum(w[image], m)
    local = p - starts[image]
    frame, rest = local // (hh * ww), local % (hh * ww)
    block, within = rest // (m * m), rest % (m * m)
    merged_w = ww // m
    block_row, block_col = block // merged_w, block % merged_w
    row = block_row * m + within // m
    col = block_col * m + within % m
    ws = max(cfg.window_merged, 1)  # Qwen3-VL has no windows (window_size 0); its tower ignores the ids
    windows_w = (merged_w + ws - 1) // ws
    windows_h = (hh // m + ws - 1) // ws
    window = (frame * windows_h + block_row // ws) * windows_w + block_col // ws
    invalid_id = -1
    return dict(
        row=row, col=col, valid=valid, height=hh, width=ww,
        window_segment=jnp.where(valid, image * _WINDOW_STRIDE + window, invalid_id),
        frame_segment=jnp.where(valid, image * _WINDOW_STRIDE + frame, invalid_id),
    )


def batched_layout(pixel_values: jax.Array, grid_thw: jax.Array, cfg: VisionConfig) -> dict[str, jax.Array]:
    """``patch_layout`` of every row of the batched layout (pixel_values [B, N, D], grid_thw [B, I, 3]): [B, N]
    arrays. ValueError when the bucket N is not a whole number of merge groups."""
    n = pixel_values.shape[1]
    if n % cfg.merge_unit:
        raise ValueError(f"the patch bucket ({n}) must be a multiple of {cfg.merge_unit}")
    return jax.vmap(lambda g: patch_layout(g, n, cfg))(grid_thw)


def vision_rotary(row: jax.Array, col: jax.Array, cfg: VisionConfig) -> tuple[jax.Array, jax.Array]:
    """cos/sin [..., N, head_dim]: half the frequencies rotate with the row, half with the column."""
    quarter = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, quarter, 2, dtype=jnp.float32) / quarter))
    freqs = jnp.concatenate([row[..., None] * inv_freq, col[..., None] * inv_freq], axis=-1).astype(jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs, dtype, param_dtype):
        self.cfg = cfg
        h, d, e = cfg.num_heads, cfg.head_dim, cfg.hidden_size
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=True, std=cfg.initializer_range)
        self.qkv = Dense((e,), (3, h, d), ("vision_embed",), ("qkv", "vision_heads", "head_dim"), **kw)
        self.proj = Dense((h, d), (e,), ("vision_heads", "head_dim"), ("vision_embed",), **kw)

    def __call__(self, x, cos, sin, mask, implementation):
        qkv = self.qkv(x)  # [B, N, 3, H, D]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return self.proj(attention(q, k, v, mask, implementation=implementation))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = RMSNorm(cfg.hidden_size, "vision_embed", eps=cfg.rms_norm_eps, **kw)
        self.attn = VisionAttention(cfg, **kw)
        self.norm2 = RMSNorm(cfg.hidden_size, "vision_embed", eps=cfg.rms_norm_eps, **kw)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, "vision_embed", "vision_mlp",
                            use_bias=True, std=cfg.initializer_range, **kw)

    def __call__(self, x, cos, sin, mask, implementation):
        x = x + self.attn(self.norm1(x), cos, sin, mask, implementation)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """RMSNorm, then each 2x2 group of patches concatenated and mapped to the language model's width."""

    def __init__(self, cfg: VisionConfig, *, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.unit = cfg.merge_unit
        wide = cfg.hidden_size * cfg.merge_unit
        self.norm = RMSNorm(cfg.hidden_size, "vision_embed", eps=cfg.rms_norm_eps, **kw)
        self.fc1 = Dense((wide,), (wide,), ("vision_merge",), ("vision_mlp",), use_bias=True,
                         std=cfg.initializer_range, **kw)
        self.fc2 = Dense((wide,), (cfg.out_hidden_size,), ("vision_mlp",), ("embed",), use_bias=True,
                         std=cfg.initializer_range, **kw)

    def __call__(self, x):
        x = self.norm(x)
        x = x.reshape(*x.shape[:-2], x.shape[-2] // self.unit, -1)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype="float32", param_dtype="float32",
                 attention_impl: str = "xla", scan_layers: bool = False):
        """``scan_layers``: the blocks as one stacked module under ``lax.scan``, each block picking the window or
        the full-attention mask by its index (see ``stacking``)."""
        dtype, param_dtype = resolve_dtype(dtype), resolve_dtype(param_dtype)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.cfg, self.attention_impl, self.scan_layers = cfg, attention_impl, scan_layers
        self.dtype = dtype
        self.patch_embed = Dense((cfg.patch_dim,), (cfg.hidden_size,), ("vision_patch",), ("vision_embed",),
                                 use_bias=False, std=cfg.initializer_range, **kw)
        blocks = [VisionBlock(cfg, **kw) for _ in range(cfg.depth)]
        self.blocks = stacking.stack_modules(blocks) if scan_layers else nnx.List(blocks)
        self.merger = PatchMerger(cfg, **kw)

    def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Features of the merged patches and their validity.

        Flat layout (transformers'): pixel_values [N, patch_dim], grid_thw [I, 3] -> ([N / 4, out], [N / 4]).
        Batched layout (the data pipeline's, shardable over the batch): pixel_values [B, N, patch_dim],
        grid_thw [B, I, 3], each row holding its own images -> ([B, N / 4, out], [B, N / 4]).
        Image-major layout (packed rows, ``data/packing.py``): pixel_values [B, I, N / I, patch_dim], image i of
        row b in slot [b, i] -> the batched layout's result, each row's features in image order at its front.
        The tower then attends within N / I patches per image rather than over the row's whole bucket, so a
        row of five images costs five images' attention, not a 25-times larger one.
        """
        if pixel_values.ndim == 2:
            features, valid = self(pixel_values[None], grid_thw[None])
            return features[0], valid[0]
        if pixel_values.ndim == 4:
            return image_major(self, pixel_values, grid_thw)
        cfg = self.cfg
        layout = batched_layout(pixel_values, grid_thw, cfg)
        cos, sin = vision_rotary(layout["row"], layout["col"], cfg)
        # each mask's splash tables built once, for all the blocks that use it
        window_mask = with_splash_tables(_segment_mask(layout["window_segment"]), self.attention_impl, self.dtype)
        full_mask = with_splash_tables(_segment_mask(layout["frame_segment"]), self.attention_impl, self.dtype)
        x = self.patch_embed(pixel_values)

        def step(block, x, full_attention):
            mask = _choose(full_attention, full_mask, window_mask)
            return block(x, cos, sin, mask, self.attention_impl)

        full_attention = np.isin(np.arange(cfg.depth), cfg.fullatt_block_indexes)
        x = stacking.run_layers(self.blocks, step, x, full_attention, stacked=self.scan_layers)
        return self.merger(x), layout["valid"][:, :: cfg.merge_unit]


def image_major(tower, pixel_values: jax.Array, grid_thw: jax.Array) -> tuple[jax.Array, ...]:
    """A tower's outputs for the image-major layout of packed rows, computed image by image (both families).

    pixel_values [B, I, P, patch_dim] (image i of row b in slot [b, i], P = bucket / I) and grid_thw [B, I, 3]
    run through ``tower``'s batched layout as B * I rows of one image each, so attention spans one image's P
    patches. The tower returns (features, valid, *more): valid bool [B * I, P / 4] and every other output
    [B * I, *lead, P / 4, E] (features: no lead axis; Qwen3-VL's DeepStack levels: [B * I, D, P / 4, E]). They
    come back in the batched layout's form, valid [B, I * P / 4] and the others [B, *lead, I * P / 4, E]: each
    row's valid merged patches at its front in image order, the padding after them, as
    ``vlm.scatter_image_features`` reads a row. ValueError when grid_thw is not [B, I, 3].
    """
    b, slots, per_image, d = pixel_values.shape
    if grid_thw.shape != (b, slots, 3):
        raise ValueError(f"image-major pixel_values {pixel_values.shape} need image_grid_thw [{b}, {slots}, 3], "
                         f"got {grid_thw.shape}")
    features, valid, *more = tower(pixel_values.reshape(b * slots, per_image, d), grid_thw.reshape(b * slots, 1, 3))
    valid = valid.reshape(b, -1)
    # each row's valid features to its front, in order (a stable sort on the validity)
    order = jnp.argsort(~valid, axis=1, stable=True)
    gather = lambda x: _row_major(x, b, order)
    return (gather(features), jnp.take_along_axis(valid, order, axis=1), *map(gather, more))


def _row_major(x: jax.Array, b: int, order: jax.Array) -> jax.Array:
    """[B * I, *lead, M, E] -> [B, *lead, I * M, E], the patch axis gathered by ``order`` [B, I * M]."""
    x = x.reshape(b, -1, *x.shape[1:])
    x = jnp.moveaxis(x, 1, -3)   # the slot axis next to the patch axis: [B, *lead, I, M, E]
    x = x.reshape(*x.shape[:-3], -1, x.shape[-1])
    index = order.reshape(b, *([1] * (x.ndim - 3)), -1, 1)
    return jnp.take_along_axis(x, index, axis=-2)


def _choose(full_attention, full, window):
    """The full-attention or the window mask (any pytree of arrays): by a Python bool when the blocks are
    unrolled, by a traced one, selected elementwise, when they are scanned."""
    if isinstance(full_attention, (bool, np.bool_)):
        return full if full_attention else window
    return jax.tree.map(lambda f, w: jnp.where(full_attention, f, w), full, window)


def _segment_mask(segment: jax.Array) -> AttentionMask:
    """[B, N] segment ids -> attention within a segment: dense [B, 1, N, N] and the ids themselves (splash).

    Padding patches share the id -1 and attend among themselves, in both forms alike."""
    return AttentionMask(dense=(segment[:, :, None] == segment[:, None, :])[:, None], segment_ids=segment)
