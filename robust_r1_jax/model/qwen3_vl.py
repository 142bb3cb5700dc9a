"""What Qwen3-VL (dense) does differently from Qwen2.5-VL: its vision tower, its ``config.json`` and its weight names.

The rest is shared: the decoder (``language.py``: q/k RMSNorm, interleaved M-RoPE and the DeepStack additions are
``TextConfig`` flags there), the image-token positions (``rope_index.py``: for still images Qwen3-VL's
``get_rope_index`` gives the same positions as Qwen2.5-VL's), the KV cache, generation, loading and sharding.

The tower (transformers' ``Qwen3VLVisionModel``): 16-px patches embedded by a 3-D convolution with bias, plus a
learned ``num_position_embeddings`` (a square, 48 x 48 when released) position table resampled bilinearly
(align_corners) to each image's patch grid; ViT blocks with LayerNorm, 2-D rotary attention over each whole frame
(no windows) and a GELU(tanh) MLP; a patch merger (LayerNorm, then 2 x 2 patches concatenated, fc, exact GELU,
fc). After each block listed in ``deepstack_visual_indexes`` a DeepStack merger (2 x 2 concatenated first, then
LayerNorm) turns the block's output into one more set of image features; the decoder adds set i to the output of
its layer i at the image tokens (DeepStack, arXiv 2406.04334).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax.model import stacking
from robust_r1_jax.model.config import HFFields, ModelConfig, VisionConfig, read_hf_config, resolve_dtype
from robust_r1_jax.model.layers import MLP, Dense, LayerNorm, param, with_splash_tables
from robust_r1_jax.model.vision import VisionAttention, _segment_mask, batched_layout, image_major, vision_rotary

MODEL_TYPE = "qwen3_vl"
LAYER_NORM_EPS = 1e-6  # the tower's nn.LayerNorm(eps=1e-6) everywhere (not a config field)


# ---- config.json --------------------------------------------------------------------------------------------------
def _text_fields(t: dict, rope: dict) -> dict:
    """Qwen3's own ``TextConfig`` fields from ``text_config`` and its rope dict; ValueError for what the model here
    does not implement."""
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"config.json: Qwen3-VL text rope_type {rope.get('rope_type')!r} is not supported "
                         f"(only 'default')")
    if t.get("attention_bias"):
        raise ValueError("config.json: Qwen3-VL with attention_bias=true is not supported (released models have "
                         "none)")
    if t.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json: Qwen3-VL text hidden_act={t['hidden_act']!r} is not supported (only 'silu')")
    heads = t["num_attention_heads"]
    head_dim = t.get("head_dim") or t["hidden_size"] // heads
    return dict(explicit_head_dim=int(head_dim), attention_bias=False, qk_norm=True,
                mrope_interleaved=bool(rope.get("mrope_interleaved", True)))


def _check_vision(vision: VisionConfig) -> None:
    side = int(round(vision.num_position_embeddings ** 0.5))
    if side * side != vision.num_position_embeddings:
        raise ValueError(f"config.json: vision num_position_embeddings={vision.num_position_embeddings} is not a "
                         f"square")


# transformers' Qwen3VLConfig defaults (Qwen3-VL-8B's tower); the tower has no windows.
HF_FIELDS = HFFields(
    model_type=MODEL_TYPE, text_at_top_level=False, rope_theta=500000.0, mrope_section=(24, 20, 20),
    vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, in_channels=3, patch_size=16,
                temporal_patch_size=2, spatial_merge_size=2, initializer_range=0.02, num_position_embeddings=2304,
                deepstack_visual_indexes=(8, 16, 24), hidden_act="gelu_pytorch_tanh"),
    vision_fixed=dict(window_size=0, fullatt_block_indexes=()),
    text_fields=_text_fields, check_vision=_check_vision,
)


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """A ``ModelConfig`` from a Qwen3-VL ``config.json`` dict (transformers 4.57 ``rope_scaling`` + top-level
    ``rope_theta``, or 5.x ``rope_parameters``). ValueError for what the model here does not implement."""
    return read_hf_config(hf, HF_FIELDS, **overrides)


def config_to_hf(cfg: ModelConfig) -> dict:
    """A ``config.json`` dict that transformers' ``Qwen3VLConfig`` reads back into the same model."""
    t, v = cfg.text, cfg.vision
    text = dict(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps,
        hidden_act="silu", attention_bias=False, max_position_embeddings=t.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section),
                         "mrope_interleaved": t.mrope_interleaved},
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, model_type="qwen3_vl_text",
    )
    vision = dict(
        depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
        out_hidden_size=v.out_hidden_size, in_channels=v.in_channels, patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size,
        num_position_embeddings=v.num_position_embeddings,
        deepstack_visual_indexes=list(v.deepstack_visual_indexes), hidden_act=v.hidden_act,
        initializer_range=v.initializer_range, model_type="qwen3_vl_vision",
    )
    return dict(model_type=MODEL_TYPE, architectures=["Qwen3VLForConditionalGeneration"], text_config=text,
                vision_config=vision, tie_word_embeddings=t.tie_word_embeddings,
                image_token_id=cfg.image_token_id, video_token_id=cfg.video_token_id,
                vision_start_token_id=cfg.vision_start_token_id, vision_end_token_id=cfg.vision_end_token_id)


# ---- the vision tower ---------------------------------------------------------------------------------------------
def interpolation_taps(index: jax.Array, size: jax.Array, side: int) -> tuple[jax.Array, jax.Array]:
    """Bilinear, align_corners=True taps along one axis: target ``index`` on an axis of ``size`` (both int, any
    shape) read source rows (int [..., 2]) of a ``side``-long table with weights (float32 [..., 2]).

    The arithmetic and its float32 order are transformers' ``_interpolation_axis_taps_weights`` (vision_utils):
    src = index * (side - 1) / max(size - 1, 1); taps floor(src) and floor(src) + 1 clamped to the table; weights
    the hat kernel 1 - |src - tap| (before clamping), at least 0.
    """
    src = index.astype(jnp.float32) * (side - 1) / jnp.maximum(size - 1, 1).astype(jnp.float32)
    floor = jnp.floor(src)
    offsets = jnp.arange(2, dtype=jnp.float32)
    taps = jnp.clip(floor.astype(jnp.int32)[..., None] + jnp.arange(2, dtype=jnp.int32), 0, side - 1)
    weights = jnp.maximum(1 - jnp.abs(src[..., None] - floor[..., None] - offsets), 0.0)
    return taps, weights


def interpolated_positions(table: jax.Array, row, col, height, width) -> jax.Array:
    """The learned position table [side * side, E] resampled to each patch: [..., E] for patches at (``row``,
    ``col``) of a ``height`` x ``width`` patch grid (int arrays of one shape), as ``Qwen3VLVisionModel`` does with
    ``F.interpolate(mode="bilinear", align_corners=True)``'s weights (the four taps row-major, summed)."""
    side = int(round(table.shape[0] ** 0.5))
    row_taps, row_weights = interpolation_taps(row, height, side)
    col_taps, col_weights = interpolation_taps(col, width, side)
    index = (row_taps[..., :, None] * side + col_taps[..., None, :]).reshape(*row.shape, 4)
    weight = (row_weights[..., :, None] * col_weights[..., None, :]).reshape(*row.shape, 4)
    return jnp.sum(table[index].astype(jnp.float32) * weight[..., None], axis=-2)


class VisionBlock(nnx.Module):
    """Pre-norm ViT block: x + attn(LayerNorm(x)), then x + MLP(LayerNorm(x))."""

    def __init__(self, cfg: VisionConfig, *, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = LayerNorm(cfg.hidden_size, "vision_embed", eps=LAYER_NORM_EPS, **kw)
        self.attn = VisionAttention(cfg, **kw)
        self.norm2 = LayerNorm(cfg.hidden_size, "vision_embed", eps=LAYER_NORM_EPS, **kw)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size, "vision_embed", "vision_mlp",
                       "vision_embed", act=cfg.hidden_act, std=cfg.initializer_range, **kw)

    def __call__(self, x, cos, sin, mask, implementation):
        x = x + self.attn(self.norm1(x), cos, sin, mask, implementation)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """Each 2 x 2 group of patches to one feature of the language model's width. ``postshuffle``: the LayerNorm
    runs on the concatenated group (DeepStack mergers), else on each patch before concatenating (the main one)."""

    def __init__(self, cfg: VisionConfig, *, postshuffle: bool, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.unit, self.postshuffle = cfg.merge_unit, postshuffle
        wide = cfg.hidden_size * cfg.merge_unit
        self.norm = LayerNorm(wide if postshuffle else cfg.hidden_size,
                              "vision_merge" if postshuffle else "vision_embed", eps=LAYER_NORM_EPS, **kw)
        self.mlp = MLP(wide, wide, cfg.out_hidden_size, "vision_merge", "vision_mlp", "embed", act="gelu",
                       std=cfg.initializer_range, **kw)

    def __call__(self, x):
        group = lambda a: a.reshape(*a.shape[:-2], a.shape[-2] // self.unit, -1)
        x = self.norm(group(x)) if self.postshuffle else group(self.norm(x))
        return self.mlp(x)


class VisionTower(nnx.Module):
    """Qwen3-VL's tower on the same static layout as Qwen2.5-VL's (``model.vision``): a bucket of patch rows and a
    fixed number of image slots, padding patches attending among themselves and marked invalid."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype="float32", param_dtype="float32",
                 attention_impl: str = "xla", scan_layers: bool = False):
        dtype, param_dtype = resolve_dtype(dtype), resolve_dtype(param_dtype)
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.cfg, self.attention_impl, self.scan_layers = cfg, attention_impl, scan_layers
        if not cfg.deepstack_visual_indexes or max(cfg.deepstack_visual_indexes) >= cfg.depth:
            raise ValueError(f"deepstack_visual_indexes {cfg.deepstack_visual_indexes} must be non-empty block "
                             f"indexes below depth {cfg.depth}")
        self.patch_embed = Dense((cfg.patch_dim,), (cfg.hidden_size,), ("vision_patch",), ("vision_embed",),
                                 use_bias=True, std=cfg.initializer_range, **kw)
        self.pos_embed = param(rngs, (cfg.num_position_embeddings, cfg.hidden_size),
                               ("vision_positions", "vision_embed"), std=cfg.initializer_range, dtype=param_dtype)
        blocks = [VisionBlock(cfg, **kw) for _ in range(cfg.depth)]
        self.blocks = stacking.stack_modules(blocks) if scan_layers else nnx.List(blocks)
        self.merger = PatchMerger(cfg, postshuffle=False, **kw)
        self.deepstack_mergers = nnx.List([PatchMerger(cfg, postshuffle=True, **kw)
                                           for _ in cfg.deepstack_visual_indexes])
        self.dtype = dtype

    def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array):
        """(features, valid, deepstack) of the merged patches.

        Flat layout (transformers'): pixel_values [N, patch_dim], grid_thw [I, 3] -> ([N / 4, out], [N / 4],
        [D, N / 4, out]). Batched layout: [B, N, patch_dim], [B, I, 3] -> ([B, N / 4, out], [B, N / 4],
        [B, D, N / 4, out]), D = len(deepstack_visual_indexes), level d from block deepstack_visual_indexes[d].
        Image-major layout (packed rows): [B, I, N / I, patch_dim], [B, I, 3] -> the batched layout's result,
        each row's features and DeepStack features in image order at its front; the tower runs image by image
        (``vision.image_major``, as Qwen2.5-VL's does).
        """
        if pixel_values.ndim == 2:
            return tuple(out[0] for out in self(pixel_values[None], grid_thw[None]))
        if pixel_values.ndim == 4:
            return image_major(self, pixel_values, grid_thw)
        cfg = self.cfg
        layout = batched_layout(pixel_values, grid_thw, cfg)
        cos, sin = vision_rotary(layout["row"], layout["col"], cfg)
        # full attention within each frame of each image; splash's tables built once, for all the blocks
        mask = with_splash_tables(_segment_mask(layout["frame_segment"]), self.attention_impl, self.dtype)
        positions = interpolated_positions(self.pos_embed.value, layout["row"], layout["col"], layout["height"],
                                           layout["width"])
        x = self.patch_embed(pixel_values)
        x = x + positions.astype(x.dtype)
        levels = len(cfg.deepstack_visual_indexes)
        # One spare slot past the last level takes the blocks that feed none, so a scanned block always writes.
        taps = jnp.zeros((x.shape[0], levels + 1, *x.shape[1:]), x.dtype)

        def step(block, carry, level):
            x, taps = carry
            x = block(x, cos, sin, mask, self.attention_impl)
            return x, _keep_tap(taps, x, level)

        # level_of[i]: the DeepStack level block i feeds, ``levels`` (the spare slot) for none
        level_of = np.full(cfg.depth, levels, np.int32)
        level_of[list(cfg.deepstack_visual_indexes)] = np.arange(levels)
        x, taps = stacking.run_layers(self.blocks, step, (x, taps), level_of, stacked=self.scan_layers)
        deepstack = jnp.stack([merger(taps[:, d]) for d, merger in enumerate(self.deepstack_mergers)], axis=1)
        return self.merger(x), layout["valid"][:, :: cfg.merge_unit], deepstack


def _keep_tap(taps: jax.Array, x: jax.Array, level) -> jax.Array:
    """taps [B, D + 1, N, E] with x stored at ``level`` (D: the spare slot, skipped when unrolled); ``level`` is a
    Python / NumPy int when the blocks are unrolled, traced under scan."""
    if isinstance(level, (int, np.integer)):
        return taps if level == taps.shape[1] - 1 else taps.at[:, int(level)].set(x)
    return jax.lax.dynamic_update_index_in_dim(taps, x, level, axis=1)


# ---- Hugging Face weight names ------------------------------------------------------------------------------------
def checkpoint_name(name: str) -> str:
    """A normalised tensor name (``hf.normalise_name``: ``visual.*``, ``model.*``, ``lm_head.*``) -> the name
    Qwen3-VL checkpoints use (``model.visual.*``, ``model.language_model.*``, ``lm_head.*``)."""
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model."):
        return "model.language_model." + name[len("model."):]
    return name
