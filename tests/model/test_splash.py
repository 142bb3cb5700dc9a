"""Splash attention (Pallas, interpret mode on the CPU) against the XLA path: forward and gradients in float32,
for the language model's causal attention with left / right padding, packed rows and grouped-query heads, the
vision tower's window and full-attention blocks, and a whole tiny model; the block tables that skip tiles."""
import functools
import os
import subprocess
import sys

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


def _packed_segments(lengths_per_row, seq):
    """int [rows, seq]: example k of a row (1-based) on its tokens, in order, then padding (0)."""
    rows = np.zeros((len(lengths_per_row), seq), np.int32)
    for r, lengths in enumerate(lengths_per_row):
        starts = np.cumsum([0, *lengths])
        for k, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            rows[r, a:b] = k + 1
    return rows


def test_packed_rows_skip_the_tiles_across_examples_and_match_xla(interpreted):
    """Two packed rows of 640 tokens (the kernel's 128-token tiles: 640 is no multiple of 256), each with its
    own examples, so the two rows' block tables differ: forward and gradients equal the XLA path's on the real
    tokens, and the tables hold only the tiles the examples make (padding: the diagonal), 8 and 5 of the 15
    causal ones."""
    segments = _packed_segments([[100, 200, 150], [128, 128, 128, 128, 128]], 640)
    assert splash.block_size(640) == 128
    padded = np.where(segments == 0, splash.PAD_SEGMENT, segments)   # as splash_attention marks the padding
    tables = [np.asarray(splash.tile_table(jnp.asarray(s), 128, causal=True)) for s in padded]
    # row 0: tokens 0-99 | 100-299 | 300-449 | padding 450-639 (only its diagonal tiles: tile 4 is padding alone)
    np.testing.assert_array_equal(tables[0], [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                              [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(tables[1], np.eye(5))   # one example per tile: the diagonal alone
    q, k, v = _qkv(2, 640, 4, 2, 8, seed=3)
    _compare(q, k, v, causal_mask(jnp.asarray(segments)), jnp.asarray(segments > 0, jnp.float32))


def test_the_kernel_computes_only_the_tiles_of_its_table(interpreted, monkeypatch):
    """A table of the diagonal alone (wrong for one 640-token example) changes the output of the queries past
    the first tile and leaves the first tile's queries (which need only the diagonal) as they were: the kernel
    reads these tables, not its static causal ones."""
    segments = jnp.ones((1, 640), jnp.int32)
    q, k, v = _qkv(1, 640, 2, 2, 8, seed=4)
    mask = causal_mask(segments)
    full = layers.attention(q, k, v, mask, implementation="splash")
    monkeypatch.setattr(splash, "tile_table", lambda s, block, causal: jnp.eye(s.shape[0] // block, dtype=bool))
    diagonal = layers.attention(q, k, v, mask, implementation="splash")
    _close(diagonal[:, :128], full[:, :128])
    assert float(jnp.max(jnp.abs(diagonal[:, 128:] - full[:, 128:]))) > 1e-2


def test_skipped_tiles_fetch_the_block_already_held():
    """data_next, forward walk (key tiles of each query tile): a computed tile's own index, a skipped one the
    last computed index before it (the first after it at the walk's start); the dk/dv walk runs down columns."""
    tiles = jnp.asarray([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool)
    fwd = splash.skipping_mask_info(tiles, None, walks_queries=False)
    np.testing.assert_array_equal(fwd.data_next[0], [[0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 2, 2], [2, 2, 2, 3]])
    np.testing.assert_array_equal(fwd.block_mask[0], np.asarray(tiles, np.int32))
    dkv = splash.skipping_mask_info(tiles, None, walks_queries=True)
    np.testing.assert_array_equal(dkv.data_next[0], [[0, 1, 2, 3], [1, 1, 2, 3], [1, 2, 2, 3], [1, 2, 3, 3]])


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


def _table_builds(jaxpr, in_loop: bool = False) -> list[bool]:
    """One entry per block-table build (``skipping_mask_info``'s cummax, one per walk) in ``jaxpr`` and the
    programs nested in it: whether it sits inside a loop body (a scan or while: run once per layer)."""
    builds = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "cummax":
            builds.append(in_loop)
        loop = in_loop or eqn.primitive.name in ("scan", "while")
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    builds += _table_builds(sub.jaxpr, loop)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    builds += _table_builds(sub, loop)
    return builds


@pytest.mark.parametrize("scan_layers,remat", [(False, "none"), (False, "full"), (True, "full")])
def test_block_tables_are_built_once_per_forward_not_per_layer(interpreted, scan_layers, remat):
    """The gradient of a tiny model's loss (3 vision blocks over a window and a full-attention mask, 2 decoder
    layers over the causal one) builds each mask's tables once, two walks each, outside the layer loop: the
    layers share them, and remat does not rebuild them in the backward pass."""
    cfg = model_config.tiny()
    cfg = cfg.replace(attention_impl="splash", scan_layers=scan_layers, remat=remat)
    assert cfg.text.num_hidden_layers >= 2 and cfg.vision.depth >= 3
    image_tokens = 8 * 8 // cfg.vision.merge_unit
    ids = np.full((2, 30), 7, np.int32)
    ids[0, 2:2 + image_tokens] = cfg.image_token_id
    real = np.ones((2, 30), np.int32)
    real[1, :5] = 0
    pixels = jnp.zeros((64, cfg.vision.patch_dim))
    grid = jnp.asarray([[1, 8, 8]], jnp.int32)
    graphdef, state = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    loss = lambda state: nnx.merge(graphdef, state).logits(jnp.asarray(ids), pixels, grid, jnp.asarray(real)).sum()
    builds = _table_builds(jax.make_jaxpr(jax.grad(loss))(state).jaxpr)
    masks, walks = 3, 2
    assert builds == [False] * (masks * walks)


def test_prebuilt_tables_are_the_ones_a_call_builds_and_must_fit(interpreted):
    """Tables built once (``layers.with_splash_tables``) give the output of a call that builds its own; tables of
    another length are refused."""
    segments = jnp.asarray(_packed_segments([[100, 200, 150], [128, 128, 128, 128, 128]], 640))
    q, k, v = _qkv(2, 640, 4, 2, 8, seed=5)
    mask = causal_mask(segments)
    prebuilt = layers.with_splash_tables(mask, "splash", jnp.float32)
    assert mask.splash_tables is None and prebuilt.splash_tables.computed.shape == (2, 5, 5)
    assert layers.with_splash_tables(mask, "xla", jnp.float32) is mask
    np.testing.assert_array_equal(layers.attention(q, k, v, prebuilt, implementation="splash"),
                                  layers.attention(q, k, v, mask, implementation="splash"))
    short = layers.with_splash_tables(causal_mask(segments[:, :256]), "splash", jnp.float32)
    with pytest.raises(ValueError, match="do not fit"):
        splash.splash_attention(q, k, v, segments, causal=True, padding_segment=0, tables=short.splash_tables)


SHARDED_CHECK = """
import functools
import jax, jax.numpy as jnp, numpy as np
from robust_r1_jax.model import layers, splash
from robust_r1_jax.model.vlm import causal_mask
splash.splash_attention = functools.partial(splash.splash_attention, interpret=True)
mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(1, 4, 1), ("data", "fsdp", "tensor"))
rows = np.zeros((4, 300), np.int32)
for r, lengths in enumerate([[100, 150], [300], [40, 40, 40], [128, 128]]):
    starts = np.cumsum([0, *lengths])
    for k, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        rows[r, a:b] = k + 1
keys = jax.random.split(jax.random.key(0), 3)
q = jax.random.normal(keys[0], (4, 300, 4, 8))
k, v = (jax.random.normal(key, (4, 300, 2, 8)) for key in keys[1:])
xla = layers.attention(q, k, v, causal_mask(jnp.asarray(rows)), implementation="xla")
with jax.set_mesh(mesh):
    prebuilt = jax.jit(lambda q, k, v, s: layers.attention(
        q, k, v, layers.with_splash_tables(causal_mask(s), "splash", q.dtype), implementation="splash"))
    out = prebuilt(q, k, v, jnp.asarray(rows))
    tables = jax.jit(lambda s: splash.block_tables(s, causal=True, padding_segment=0))(jnp.asarray(rows))
real = (rows > 0)[:, :, None, None]
print("ERR", float(jnp.max(jnp.abs((out - xla) * real))), "rows per device",
      tables.computed.sharding.shard_shape(tables.computed.shape)[0])
"""


def test_tables_built_on_a_mesh_split_the_rows_and_keep_the_kernel_exact():
    """4 devices, rows over fsdp: each device builds its own rows' tables (one row each), and the kernel reading
    them gives XLA's outputs on the real tokens of four rows with different examples."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", SHARDED_CHECK], cwd=root, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    words = out.stdout.split()
    assert float(words[words.index("ERR") + 1]) < 1e-5
    assert words[words.index("device") + 1] == "1"
