"""Logits of the NNX model against transformers' Qwen2.5-VL on unit-scale random weights (float32)."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import (hf_logits, image_tokens_prompt, loaded_reference, random_pixels, rel_err,  # noqa: E402
                          saved_reference, tiny_config)

TOL = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return saved_reference(tmp_path_factory, tiny_config(), "tiny")


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scanned"])
def models(reference, request):
    """Every test runs on both layer layouts: one module per layer, and stacked layers under lax.scan."""
    return loaded_reference(reference, request.param)


def test_text_only(models):
    cfg, ref, ours = models
    ids = np.random.default_rng(0).integers(0, cfg.bos_token_id, (2, 17))
    assert rel_err(ours(ids), hf_logits(ref, ids)) < TOL


def test_one_image(models):
    cfg, ref, ours = models
    rng = np.random.default_rng(1)
    grids = [(1, 8, 8)]
    ids = np.array([image_tokens_prompt(rng, cfg, grids, [4, 6])])
    pix = random_pixels(rng, cfg, grids)
    err = rel_err(ours(ids, pixel_values=pix, image_grid_thw=np.array(grids)),
                  hf_logits(ref, ids, pixel_values=pix, grid=grids))
    assert err < TOL


def test_two_images_of_different_sizes(models):
    cfg, ref, ours = models
    rng = np.random.default_rng(2)
    grids = [(1, 8, 12), (1, 6, 4)]
    ids = np.array([image_tokens_prompt(rng, cfg, grids, [2, 5, 3])])
    pix = random_pixels(rng, cfg, grids)
    err = rel_err(ours(ids, pixel_values=pix, image_grid_thw=np.array(grids)),
                  hf_logits(ref, ids, pixel_values=pix, grid=grids))
    assert err < TOL


def test_grid_not_a_multiple_of_the_window(models):
    # merged grid 5 x 7 with windows of 4 x 4 merged tokens: partial windows on two edges.
    cfg, ref, ours = models
    rng = np.random.default_rng(3)
    grids = [(1, 10, 14)]
    ids = np.array([image_tokens_prompt(rng, cfg, grids, [1, 2])])
    pix = random_pixels(rng, cfg, grids)
    err = rel_err(ours(ids, pixel_values=pix, image_grid_thw=np.array(grids)),
                  hf_logits(ref, ids, pixel_values=pix, grid=grids))
    assert err < TOL


def test_batch_of_two_with_left_padding(models):
    cfg, ref, ours = models
    rng = np.random.default_rng(4)
    grids = [(1, 4, 8), (1, 6, 4)]
    row0 = image_tokens_prompt(rng, cfg, grids[:1], [5, 7])
    row1 = image_tokens_prompt(rng, cfg, grids[1:], [2, 3])
    width = max(len(row0), len(row1))
    pad = cfg.bos_token_id
    ids = np.array([[pad] * (width - len(r)) + r for r in (row0, row1)])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in (row0, row1)])
    pix = random_pixels(rng, cfg, grids)
    ours_logits = ours(ids, pixel_values=pix, image_grid_thw=np.array(grids), attention_mask=mask)
    ref_logits = hf_logits(ref, ids, attention_mask=mask, pixel_values=pix, grid=grids)
    assert mask.sum() < mask.size  # the test really pads
    assert rel_err(ours_logits, ref_logits, mask) < TOL


def test_vision_tower_alone(models):
    cfg, ref, ours = models
    rng = np.random.default_rng(5)
    grids = [(1, 10, 14), (1, 4, 4)]
    pix = random_pixels(rng, cfg, grids)
    with torch.no_grad():
        want = ref.model.visual(torch.tensor(pix), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    got, valid = ours.visual(pix, np.array(grids))
    assert bool(np.all(valid))
    assert rel_err(got, want) < TOL


def test_vision_tower_ignores_bucket_padding(models):
    cfg, _, ours = models
    rng = np.random.default_rng(6)
    grids = np.array([(1, 8, 8)])
    pix = random_pixels(rng, cfg, grids)
    exact, _ = ours.visual(pix, grids)
    padded_pix = np.concatenate([pix, rng.normal(size=(32, pix.shape[1])).astype(np.float32)])
    padded_grid = np.concatenate([grids, np.zeros((2, 3), int)])
    got, valid = ours.visual(padded_pix, padded_grid)
    assert np.asarray(valid).sum() == 16 and not np.asarray(valid)[16:].any()
    np.testing.assert_allclose(np.asarray(got)[:16], np.asarray(exact), atol=1e-5)


def test_batched_layout_equals_flat_layout(models):
    # the data pipeline's layout: per-row patch buckets [B, N, D] and grid slots [B, I, 3]
    cfg, _, ours = models
    rng = np.random.default_rng(7)
    grids = [(1, 4, 8), (1, 6, 4)]
    rows = [image_tokens_prompt(rng, cfg, [g], [3, 2]) for g in grids]
    width = max(map(len, rows))
    ids = np.array([[cfg.bos_token_id] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    pix = random_pixels(rng, cfg, grids)
    flat = np.asarray(ours(ids, pixel_values=pix, image_grid_thw=np.array(grids), attention_mask=mask))
    bucket = 40
    batched_pix = np.zeros((2, bucket, pix.shape[1]), np.float32)
    batched_pix[0, :32], batched_pix[1, :24] = pix[:32], pix[32:]
    batched_grid = np.zeros((2, 2, 3), int)
    batched_grid[0, 0], batched_grid[1, 0] = grids
    batched = np.asarray(ours(ids, pixel_values=batched_pix, image_grid_thw=batched_grid, attention_mask=mask))
    assert rel_err(batched, flat, mask) < 1e-5
