"""Splash attention (Pallas, interpret mode on the CPU) against the XLA path: forward and gradients in float32,
for the language model's causal attention with left / right padding and grouped-query heads, the vision tower's
window and full-attention blocks, and a whole tiny model."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from robust_r1_jax.model import config as model_config
from robust_r1_jax.model import layers, splash
from robust_r1_jax.model.vision import _segment_mask, patch_layout
from robust_r1_jax.model.vlm import Qwen25VL, causal_mask

RTOL = 1e-5


@pytest.fixture
def interpreted(monkeypatch):
    """layers.attention's splash path in Pallas interpret mode (no TPU here)."""
    monkeypatch.setattr(splash, "splash_attention", functools.partial(splash.splash_attention, interpret=True))


def _qkv(b, s, heads, kv_heads, d, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (b, s, heads, d)), jax.random.normal(kk, (b, s, kv_heads, d)),
            jax.random.normal(kv, (b, s, kv_heads, d)))


def _close(actual, expected):
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=RTOL * scale)


def _compare(q, k, v, mask, query_weight):
    """Outputs where query_weight [B, S] > 0, and the gradients of a loss over those queries only."""
    xla = functools.partial(layers.attention, mask=mask, implementation="xla")
    spl = functools.partial(layers.attention, mask=mask, implementation="splash")
    out = spl(q, k, v)
    assert np.isfinite(np.asarray(out)).all()
    w = query_weight[:, :, None, None] * jax.random.normal(jax.random.key(9), out.shape)
    _close(out * (query_weight[:, :, None, None] > 0), xla(q, k, v) * (query_weight[:, :, None, None] > 0))
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * w)
    for got, want in zip(jax.grad(loss(spl), argnums=(0, 1, 2))(q, k, v),
                         jax.grad(loss(xla), argnums=(0, 1, 2))(q, k, v)):
        _close(got, want)


def test_causal_with_right_and_left_padding_and_grouped_query_heads(interpreted):
    """Row 0 right-padded (SFT), row 1 left-padded prompt then a completion right-padded (GRPO); 4 query heads
    over 2 KV heads; 40 tokens (the kernel pads to 128 inside)."""
    real = np.ones((2, 40), np.int32)
    real[0, 29:] = 0
    real[1, :6], real[1, 35:] = 0, 0
    q, k, v = _qkv(2, 40, 4, 2, 8)
    _compare(q, k, v, causal_mask(jnp.asarray(real)), jnp.asarray(real, jnp.float32))


def test_causal_at_a_block_multiple_and_a_fully_padded_row(interpreted):
    """256 tokens (a block multiple: nothing padded inside); a row of padding only stays finite."""
    real = np.ones((2, 256), np.int32)
    real[0, 200:] = 0
    real[1] = 0
    q, k, v = _qkv(2, 256, 2, 1, 16, seed=1)
    _compare(q, k, v, causal_mask(jnp.asarray(real)), jnp.asarray(real, jnp.float32))


@pytest.fixture(scope="module")
def vision_layout():
    """Two rows of the batched layout: row 0 a 16x12-patch image (2x2 windows of 8x8 patches, the last ones
    partial) and a two-frame 4x4 image; row 1 one 8x8 image; 256-patch bucket, the rest padding (id -1)."""
    cfg = model_config.tiny().vision
    grids = jnp.asarray([[[1, 16, 12], [2, 4, 4]], [[1, 8, 8], [0, 0, 0]]], jnp.int32)
    return jax.vmap(lambda g: patch_layout(g, 256, cfg))(grids)


@pytest.mark.parametrize("kind", ["window_segment", "frame_segment"])
def test_vision_windows_and_full_blocks_via_segment_ids(interpreted, vision_layout, kind):
    segments = vision_layout[kind]
    assert len(np.unique(np.asarray(segments[0]))) > (4 if kind == "window_segment" else 2)
    q, k, v = _qkv(2, 256, 2, 2, 8, seed=2)
    _compare(q, k, v, _segment_mask(segments), jnp.ones((2, 256)))


def test_implementation_choice():
    dense = jnp.ones((1, 1, 4, 4), bool)
    with_segments = layers.AttentionMask(dense, jnp.ones((1, 4), jnp.int32), causal=True)
    assert layers.resolve_implementation("auto", jnp.float32, with_segments) == "xla"   # CPU backend
    assert layers.resolve_implementation("splash", jnp.float32, with_segments) == "splash"
    assert layers.resolve_implementation("splash", jnp.float32, dense) == "xla"         # decode over a cache
    with pytest.raises(ValueError):
        layers.resolve_implementation("flash", jnp.float32, dense)


def test_whole_tiny_model_matches_on_real_tokens(interpreted):
    """Vision tower (window and full blocks) and decoder with splash: logits on real tokens as with xla."""
    cfg = model_config.tiny()
    image_tokens = 8 * 8 // cfg.vision.merge_unit
    ids = np.full((2, 30), 7, np.int32)
    ids[0, 2:2 + image_tokens] = cfg.image_token_id
    real = np.ones((2, 30), np.int32)
    real[0, 24:] = 0
    real[1, :5] = 0
    pixels = np.random.default_rng(0).normal(size=(64, cfg.vision.patch_dim)).astype(np.float32)
    grid = np.asarray([[1, 8, 8]], np.int32)
    logits = {}
    for impl in ("xla", "splash"):
        model = Qwen25VL(cfg.replace(attention_impl=impl), rngs=nnx.Rngs(0))
        logits[impl] = model(ids, pixel_values=pixels, image_grid_thw=grid, attention_mask=real)
    keep = real.astype(bool)[:, :, None]
    assert np.isfinite(np.asarray(logits["splash"])).all()
    _close(logits["splash"] * keep, logits["xla"] * keep)
