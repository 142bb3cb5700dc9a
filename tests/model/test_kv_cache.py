"""Prefill + single-token decode reproduces the full forward's logits on the same tokens."""
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import image_tokens_prompt, tiny_config  # noqa: E402

from robust_r1_jax.model import loading  # noqa: E402
from robust_r1_jax.model.vlm import Qwen25VL  # noqa: E402

LAYOUTS = pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])


def _model(cfg, scan=False):
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    # unit-scale weights so that a cache or position bug changes the logits visibly
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if var.value.ndim >= 2:
            var.value = var.value * (1.0 / 0.02) / np.sqrt(np.prod(var.value.shape[:-1]))
    # scanned: the same weights stacked, the cache threaded through the scan as its carry
    return loading.with_runtime_settings(model, scan_layers=True) if scan else model


@LAYOUTS
def test_prefill_then_decode_matches_full_forward(scan):
    cfg = tiny_config()
    model = _model(cfg, scan)
    rng = np.random.default_rng(0)
    grids = [(1, 4, 8), (1, 6, 4)]
    rows = [image_tokens_prompt(rng, cfg, grids[:1], [3, 4]), image_tokens_prompt(rng, cfg, grids[1:], [1, 2])]
    width = max(map(len, rows))
    pad = cfg.bos_token_id
    prompt = np.array([[pad] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    n_patches = sum(t * h * w for t, h, w in grids)
    pix = rng.normal(size=(n_patches, cfg.vision.patch_dim)).astype(np.float32)
    steps = 5
    new_tokens = rng.integers(0, cfg.bos_token_id, (2, steps))

    full_ids = np.concatenate([prompt, new_tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(new_tokens)], axis=1)
    want = np.asarray(model(full_ids, pixel_values=pix, image_grid_thw=np.array(grids), attention_mask=full_mask))

    logits, cache = model.prefill(prompt, mask, pix, np.array(grids), max_len=width + steps + 3)
    got = [np.asarray(logits)]
    for i in range(steps):
        logits, cache = model.decode(new_tokens[:, i], cache)
        got.append(np.asarray(logits))
    got = np.stack(got, axis=1)  # logits after the prompt and after each new token
    ref = want[:, width - 1:]
    scale = max(1.0, np.abs(ref).max())
    assert np.abs(got - ref).max() / scale < 1e-4
    assert int(cache.index) == width + steps
    assert np.asarray(cache.valid).sum() == mask.sum() + 2 * steps


@LAYOUTS
def test_cache_repeat_serves_group_samples(scan):
    cfg = tiny_config()
    model = _model(cfg, scan)
    ids = np.random.default_rng(1).integers(0, cfg.bos_token_id, (2, 6))
    logits, cache = model.prefill(ids, np.ones_like(ids), max_len=10)
    grouped = cache.repeat(3)
    assert grouped.keys.shape[1] == 6 and grouped.valid.shape[0] == 6
    tokens = jnp.array([1, 1, 1, 2, 2, 2])
    step_logits, _ = model.decode(tokens, grouped)
    single, _ = model.decode(jnp.array([1, 2]), cache)
    np.testing.assert_allclose(np.asarray(step_logits)[[0, 3]], np.asarray(single), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(step_logits)[0], np.asarray(step_logits)[2], rtol=0, atol=0)
