"""Qwen3-VL against transformers' Qwen3VLForConditionalGeneration on unit-scale random weights (float32): vision
features, DeepStack features, M-RoPE positions, logits, cached decoding, and HF -> ours -> orbax -> HF weights."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import (hf_logits, hf_model, image_tokens_prompt, loaded_reference, qwen3_vl_tiny_config,  # noqa: E402
                          random_pixels, rel_err, saved_reference)

from robust_r1_jax.model import config as model_config  # noqa: E402
from robust_r1_jax.model import hf, language, orbax_io  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return saved_reference(tmp_path_factory, qwen3_vl_tiny_config(), "qwen3_vl_tiny")


# The scanned layout repeats every parity test (about a minute and a half here): in the slow suite.
@pytest.fixture(scope="module", params=[False, pytest.param(True, marks=pytest.mark.slow)], ids=["unrolled", "scanned"])
def models(reference, request):
    cfg, ref, ours = loaded_reference(reference, request.param)
    assert ours.config.model_type == "qwen3_vl"
    return cfg, ref, ours


def _left_padded(cfg, rows):
    width = max(map(len, rows))
    ids = np.array([[cfg.bos_token_id] * (width - len(r)) + r for r in rows])
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_config_round_trips_through_transformers(reference):
    from transformers import Qwen3VLConfig
    cfg, _, path = reference
    on_disk = json.load(open(os.path.join(path, "config.json")))
    assert model_config.ModelConfig.from_hf(on_disk) == cfg
    assert model_config.ModelConfig.from_hf(Qwen3VLConfig(**cfg.to_hf()).to_dict()) == cfg
    assert cfg.text.head_dim == 24 != cfg.text.hidden_size // cfg.text.num_attention_heads


def test_transformers_4_57_config_layout():
    # the released files: rope_scaling + top-level rope_theta in text_config, vision model_type "qwen3_vl"
    cfg = model_config.qwen3_vl_4b()
    hf_json = cfg.to_hf()
    text = dict(hf_json["text_config"])
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope
    hf_json = dict(hf_json, text_config=text, vision_config=dict(hf_json["vision_config"], model_type="qwen3_vl"))
    assert model_config.ModelConfig.from_hf(hf_json) == cfg


def test_moe_variant_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="mixture-of-experts .* out of scope"):
        model_config.ModelConfig.from_hf({"model_type": "qwen3_vl_moe"})


def test_interleaved_mrope_frequency_axes():
    cfg = model_config.qwen3_vl_4b().text
    axes = language.mrope_axes(cfg)
    assert axes.shape == (64,) and [int((axes == a).sum()) for a in range(3)] == [24, 20, 20]
    assert list(axes[:7]) == [0, 1, 2, 0, 1, 2, 0] and list(axes[-5:]) == [2, 0, 0, 0, 0]
    blocked = language.mrope_axes(model_config.qwen2_5_vl_3b().text)
    assert list(blocked[[0, 15, 16, 39, 40, 63]]) == [0, 0, 1, 1, 2, 2]


def test_text_only(models):
    cfg, ref, ours = models
    ids = np.random.default_rng(0).integers(0, cfg.bos_token_id, (2, 13))
    assert rel_err(ours(ids), hf_logits(ref, ids)) < TOL


@pytest.mark.parametrize("grids", [[(1, 8, 12)], [(1, 10, 14), (1, 2, 2)], [(1, 4, 4), (1, 6, 2)]],
                         ids=["larger-than-table", "odd-grid-and-smallest", "table-sized-and-narrow"])
def test_vision_and_deepstack_features(models, grids):
    cfg, ref, ours = models
    pix = random_pixels(np.random.default_rng(5), cfg, grids)
    with torch.no_grad():
        want = ref.model.visual(torch.tensor(pix), grid_thw=torch.tensor(grids))
    got, valid, deepstack = ours.visual(pix, np.array(grids))
    assert bool(np.all(valid)) and deepstack.shape == (2, *got.shape)
    assert rel_err(got, want.pooler_output.numpy()) < TOL
    for level, feature in enumerate(want.deepstack_features):
        assert rel_err(deepstack[level], feature.numpy()) < TOL


def test_two_images_in_one_prompt(models):
    cfg, ref, ours = models
    rng = np.random.default_rng(2)
    grids = [(1, 8, 12), (1, 6, 4)]
    ids = np.array([image_tokens_prompt(rng, cfg, grids, [2, 5, 3])])
    pix = random_pixels(rng, cfg, grids)
    err = rel_err(ours(ids, pixel_values=pix, image_grid_thw=np.array(grids)),
                  hf_logits(ref, ids, pixel_values=pix, grid=grids))
    assert err < TOL


def _mixed_batch(cfg, rng):
    """Left-padded rows: one image, two images of other grids, text only."""
    grids = [(1, 4, 8), (1, 6, 4), (1, 2, 2)]
    rows = [image_tokens_prompt(rng, cfg, grids[:1], [5, 7]), image_tokens_prompt(rng, cfg, grids[1:], [2, 1, 3]),
            list(rng.integers(0, cfg.bos_token_id, 9))]
    ids, mask = _left_padded(cfg, rows)
    return ids, mask, grids, random_pixels(rng, cfg, grids)


def test_positions_match_get_rope_index(models):
    cfg, ref, ours = models
    ids, mask, grids, _ = _mixed_batch(cfg, np.random.default_rng(3))
    want, deltas = ref.model.get_rope_index(torch.tensor(ids), torch.tensor(ids == cfg.image_token_id).int(),
                                            image_grid_thw=torch.tensor(grids), attention_mask=torch.tensor(mask))
    got, next_position = ours.positions(np.asarray(ids), np.asarray(mask), np.array(grids))
    real = mask.astype(bool)
    np.testing.assert_array_equal(np.asarray(got)[:, real], want.numpy()[:, real])
    np.testing.assert_array_equal(np.asarray(next_position), deltas.numpy()[:, 0] + mask.sum(1))


def test_batch_with_left_padding_and_a_text_only_row(models):
    cfg, ref, ours = models
    ids, mask, grids, pix = _mixed_batch(cfg, np.random.default_rng(4))
    ours_logits = ours(ids, pixel_values=pix, image_grid_thw=np.array(grids), attention_mask=mask)
    ref_logits = hf_logits(ref, ids, attention_mask=mask, pixel_values=pix, grid=grids)
    assert mask.sum() < mask.size
    assert rel_err(ours_logits, ref_logits, mask) < TOL


def test_batched_layout_equals_flat_layout(models):
    cfg, _, ours = models
    rng = np.random.default_rng(7)
    grids = [(1, 4, 8), (1, 6, 4)]
    ids, mask = _left_padded(cfg, [image_tokens_prompt(rng, cfg, [g], [3, 2]) for g in grids])
    pix = random_pixels(rng, cfg, grids)
    flat = np.asarray(ours(ids, pixel_values=pix, image_grid_thw=np.array(grids), attention_mask=mask))
    batched_pix = np.zeros((2, 40, pix.shape[1]), np.float32)
    batched_pix[0, :32], batched_pix[1, :24] = pix[:32], pix[32:]
    batched_grid = np.zeros((2, 2, 3), int)
    batched_grid[0, 0], batched_grid[1, 0] = grids
    batched = np.asarray(ours(ids, pixel_values=batched_pix, image_grid_thw=batched_grid, attention_mask=mask))
    assert rel_err(batched, flat, mask) < 1e-5


def test_prefill_then_decode_matches_full_forward(models):
    cfg, _, ours = models
    rng = np.random.default_rng(8)
    grids = [(1, 4, 8), (1, 6, 4)]
    prompt, mask = _left_padded(cfg, [image_tokens_prompt(rng, cfg, grids[:1], [3, 4]),
                                      image_tokens_prompt(rng, cfg, grids[1:], [1, 2])])
    pix = random_pixels(rng, cfg, grids)
    steps = 4
    new_tokens = rng.integers(0, cfg.bos_token_id, (2, steps))
    full_ids = np.concatenate([prompt, new_tokens], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(new_tokens)], axis=1)
    want = np.asarray(ours(full_ids, pixel_values=pix, image_grid_thw=np.array(grids), attention_mask=full_mask))
    width = prompt.shape[1]
    logits, cache = ours.prefill(prompt, mask, pix, np.array(grids), max_len=width + steps + 2)
    got = [np.asarray(logits)]
    for i in range(steps):
        logits, cache = ours.decode(new_tokens[:, i], cache)
        got.append(np.asarray(logits))
    assert rel_err(np.stack(got, axis=1), want[:, width - 1:]) < TOL


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_hf_orbax_hf_round_trip_is_bit_exact(tmp_path, tie):
    from transformers import Qwen3VLForConditionalGeneration
    cfg = qwen3_vl_tiny_config()
    cfg = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "tie_word_embeddings": tie}))
    ref = hf_model(cfg, seed=2)
    ref.save_pretrained(str(tmp_path / "src"))
    ours = hf.load(str(tmp_path / "src"), config_overrides={"scan_layers": True})
    assert (ours.language.lm_head is None) == tie
    orbax_io.save(ours, str(tmp_path / "orbax"))
    restored = orbax_io.restore(str(tmp_path / "orbax"), scan_layers=False)
    hf.save(restored, str(tmp_path / "back"))
    back = Qwen3VLForConditionalGeneration.from_pretrained(str(tmp_path / "back")).eval()
    want, got = ref.state_dict(), back.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_convert_and_inspect_take_a_qwen3_vl_folder(reference, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from robust_r1_jax.model import convert
    cfg, ref, path = reference
    assert convert.convert(path, str(tmp_path / "orbax")) == "hf->orbax"
    assert convert.convert(str(tmp_path / "orbax"), str(tmp_path / "hf")) == "orbax->hf"
    back = Qwen3VLForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    for name, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    text = convert.describe(str(tmp_path / "orbax"))
    assert '"model_type": "qwen3_vl"' in text and '"deepstack_visual_indexes": [\n' in text
    visual = sum(int(np.prod(p.shape)) for n, p in ref.named_parameters() if ".visual." in n)
    assert f"visual: {visual:,}" in text


def test_aot_depth_variants_build_a_qwen3_vl():
    # the cost model's shallow variants keep the recipe's DeepStack merger count, fed by their last block
    from flax import nnx

    from robust_r1_jax import aot
    from robust_r1_jax.model.vlm import Qwen25VL
    for variant in aot.depth_variants(model_config.qwen3_vl_4b(scan_layers=True)):
        model = nnx.eval_shape(lambda: Qwen25VL(variant, rngs=nnx.Rngs(0)))
        assert len(model.visual.deepstack_mergers) == 3 and not variant.scan_layers
        assert set(variant.vision.deepstack_visual_indexes) == {variant.vision.depth - 1}
