"""Packed SFT rows compute exactly what the same examples compute alone (issue 23, item 2), in float32 on a
unit-scale random model of each family (Qwen2.5-VL; Qwen3-VL with its DeepStack features): per-example logits
inside a packed row (2-4 examples holding 0, 1 and 2 images), and the loss and gradients of one packed batch
against the unpacked batch of the same examples; splash attention (Pallas interpret mode) keeps examples apart
through the segment ids as the dense mask does."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_r1_jax.data.rows import SFTExample, pack_examples
from robust_r1_jax.model import config as model_config
from robust_r1_jax.model import layers, splash
from robust_r1_jax.model.rope_index import host_mrope_position_ids
from robust_r1_jax.model.vlm import causal_mask
from robust_r1_jax.train import state as train_state
from robust_r1_jax.train.step import loss_sum, trained_examples
from unit_scale_model import unit_scale_model

SEQ, BUCKET, SLOTS = 128, 128, 4   # packed rows: an image slot of 32 patches each
# each row: the examples' image grids (t, h, w in patches); 2-4 examples, 0, 1 or 2 images each
ROWS = [
    [[], [(1, 4, 4)]],
    [[(1, 4, 8)], [], [(1, 4, 4), (1, 4, 4)]],
    [[(1, 4, 4)], [], [(1, 4, 4), (1, 8, 4)], []],
]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def cfg(request):
    if request.param == "qwen3_vl":
        # 16-px patches, learned positions resampled to each grid, DeepStack features from both vision blocks
        tiny = model_config.qwen3_vl_tiny()
        return tiny.replace(vision=dataclasses.replace(tiny.vision, depth=2, deepstack_visual_indexes=(0, 1)))
    tiny = model_config.tiny()
    # window blocks and a full-attention block, with a 4x4-patch window so the 8-patch sides span windows
    return tiny.replace(vision=dataclasses.replace(tiny.vision, depth=2, fullatt_block_indexes=(1,),
                                                   window_size=56))


@pytest.fixture(scope="module")
def model(cfg):
    return unit_scale_model(cfg, 3)[0]


def _example(cfg, rng, grids) -> SFTExample:
    """Random text around each image, then a chain whose tokens (and a closing token) carry the loss."""
    ids, loss = list(rng.integers(0, cfg.bos_token_id, rng.integers(3, 7))), []
    for t, h, w in grids:
        ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // cfg.vision.merge_unit)
        ids += [cfg.vision_end_token_id] + list(rng.integers(0, cfg.bos_token_id, 2))
    loss = [0] * len(ids)
    chain = list(rng.integers(0, cfg.bos_token_id, rng.integers(4, 9)))
    ids, loss = ids + chain + [0], loss + [1] * len(chain) + [0]
    ids = np.asarray(ids, np.int32)
    grid = np.asarray(grids, np.int32).reshape(-1, 3)
    slots = np.zeros((SLOTS, 3), np.int32)
    slots[:len(grid)] = grid
    positions, _ = host_mrope_position_ids(ids[None], slots, np.ones((1, len(ids)), np.int32),
                                           image_token_id=cfg.image_token_id,
                                           spatial_merge_size=cfg.vision.spatial_merge_size)
    pixels = rng.normal(size=(int(sum(np.prod(g) for g in grids)), cfg.vision.patch_dim)).astype(np.float32)
    return SFTExample(ids, np.asarray(loss, np.int32), pixels, grid, positions[:, 0], 0)


def _stack(rows):
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _batch(cfg, groups, image_major=True):
    """Packed rows in the image-major layout (the pipeline's); ``image_major=False``: the unpacked layout."""
    rows = [pack_examples(g, seq_len=SEQ, patch_bucket=BUCKET, image_slots=SLOTS, patch_dim=cfg.vision.patch_dim,
                          pad_id=cfg.bos_token_id, image_major=image_major) for g in groups]
    return _stack(rows)


def _logits(model, batch, segments: bool):
    mask = batch["segment_ids"] if segments else batch["attention_mask"]
    return np.asarray(model(batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"], mask,
                            np.moveaxis(batch["position_ids"], 1, 0)))


@pytest.fixture(scope="module")
def examples(cfg):
    rng = np.random.default_rng(0)
    return [[_example(cfg, rng, grids) for grids in row] for row in ROWS]


def test_each_example_in_a_packed_row_has_its_logits_alone(cfg, model, examples):
    packed = _batch(cfg, examples)
    assert packed["num_examples"].tolist() == [2, 3, 4]
    for batch in (packed, dict(_batch(cfg, [[ex] for row in examples for ex in row], image_major=False), segment_ids=None)):
        batch = {k: jnp.asarray(v) for k, v in batch.items() if v is not None}
        assert int(trained_examples(batch)) == 9   # the examples metric, packed or not
    assert np.count_nonzero(packed["image_grid_thw"].any(-1), axis=1).tolist() == [1, 3, 3]
    got = _logits(model, packed, segments=True)
    flat = [ex for row in examples for ex in row]
    alone = _logits(model, _batch(cfg, [[ex] for ex in flat], image_major=False), segments=False)
    i = 0
    for r, row in enumerate(examples):
        column = 0
        for ex in row:
            length = len(ex.input_ids)
            want = alone[i, :length]
            scale = float(np.max(np.abs(want)))
            np.testing.assert_allclose(got[r, column:column + length], want, rtol=0, atol=1e-5 * scale)
            column, i = column + length, i + 1
    if cfg.model_type == "qwen3_vl":
        _check_deepstack_lands_on_each_examples_image_tokens(model, packed, examples)
    # without segment ids the later examples would see the earlier ones: the test can tell
    crossing = _logits(model, dict(packed, segment_ids=packed["attention_mask"]), segments=True)
    second = len(examples[0][0].input_ids)
    assert np.max(np.abs(crossing[0, second:second + 4] - got[0, second:second + 4])) > 1e-3


def test_packed_rows_in_query_chunks_have_the_logits_of_the_whole_row(cfg, model, examples, monkeypatch):
    """The xla path's causal query chunks (``layers.XLA_QUERY_CHUNK``), with chunk borders inside examples."""
    packed = _batch(cfg, examples)
    whole = _logits(model, packed, segments=True)
    monkeypatch.setattr(layers, "XLA_QUERY_CHUNK", 24)
    np.testing.assert_allclose(_logits(model, packed, segments=True), whole, rtol=0,
                               atol=1e-5 * float(np.max(np.abs(whole))))


def _check_deepstack_lands_on_each_examples_image_tokens(model, packed, examples):
    """Qwen3-VL: the DeepStack additions [B, D, S, E] of a packed row are, column for column, those of each example
    run alone (the image-major tower's levels in the row's image order), and zero off the image tokens."""
    embed = jax.jit(lambda ids, pix, grid: model.embed(ids, pix, grid)[1])
    got = np.asarray(embed(packed["input_ids"], packed["pixel_values"], packed["image_grid_thw"]))
    image = packed["input_ids"] == model.config.image_token_id
    by_token = got.transpose(0, 2, 1, 3)   # [B, S, D, E]
    assert np.all(by_token[~image] == 0) and np.all(np.abs(by_token[image]).sum(-1) > 0)
    for r, row in enumerate(examples):
        column = 0
        for ex in row:
            length = len(ex.input_ids)
            if len(ex.image_grid_thw):
                alone = _batch(model.config, [[ex]], image_major=False)
                want = np.asarray(embed(alone["input_ids"], alone["pixel_values"], alone["image_grid_thw"]))
                np.testing.assert_allclose(got[r, :, column:column + length], want[0, :, :length], rtol=0,
                                           atol=1e-5 * float(np.max(np.abs(want))))
            column += length


@pytest.mark.slow
def test_packed_step_loss_and_gradients_equal_the_unpacked_batch(cfg, model, examples):
    parts, trainable, frozen = train_state.split_model(model, ())
    flat = [ex for row in examples for ex in row]
    packed, unpacked = _batch(cfg, examples), _batch(cfg, [[ex] for ex in flat], image_major=False)
    del unpacked["segment_ids"]   # the unpacked layout: attention_mask alone

    def mean_loss(batch):
        keys = ("input_ids", "attention_mask", "segment_ids", "loss_mask", "pixel_values", "image_grid_thw",
                "position_ids")
        batch = {k: jnp.asarray(v) for k, v in batch.items() if k in keys}
        tokens = jnp.sum(batch["loss_mask"][:, 1:])   # shifted targets: position t predicts t + 1
        return jax.jit(jax.value_and_grad(lambda tr: loss_sum(parts, tr, frozen, batch, 0) / tokens))(trainable)

    (loss_p, grads_p), (loss_u, grads_u) = mean_loss(packed), mean_loss(unpacked)
    assert np.sum(packed["loss_mask"]) == np.sum(unpacked["loss_mask"]) > 0
    np.testing.assert_allclose(float(loss_p), float(loss_u), rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_u)):
        scale = max(float(jnp.max(jnp.abs(want))), 1e-12)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5 * scale)


@pytest.mark.slow
def test_splash_segment_ids_keep_packed_examples_apart(monkeypatch):
    """Three examples and padding in one row of 40 tokens (the kernel pads to 128 inside): splash through the
    segment ids equals the dense mask of the xla path, forward and gradients."""
    monkeypatch.setattr(splash, "splash_attention", functools.partial(splash.splash_attention, interpret=True))
    segments = np.zeros((2, 40), np.int32)
    segments[0, :11], segments[0, 11:30], segments[0, 30:37] = 1, 2, 3
    segments[1, :25], segments[1, 25:40] = 1, 2
    mask = causal_mask(jnp.asarray(segments))
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, 40, 4, 8))
    k, v = (jax.random.normal(key, (2, 40, 2, 8)) for key in keys[1:3])
    real = jnp.asarray(segments > 0, jnp.float32)[:, :, None, None]
    w = real * jax.random.normal(keys[3], q.shape)
    loss = lambda impl: lambda q, k, v: jnp.sum(layers.attention(q, k, v, mask, implementation=impl) * w)
    for got, want in zip(jax.value_and_grad(loss("splash"), argnums=(0, 1, 2))(q, k, v)[1],
                         jax.value_and_grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)[1]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5,
                                   atol=1e-5 * float(jnp.max(jnp.abs(want))))
    out = lambda impl: layers.attention(q, k, v, mask, implementation=impl) * real
    np.testing.assert_allclose(np.asarray(out("splash")), np.asarray(out("xla")), rtol=1e-5, atol=1e-5)
