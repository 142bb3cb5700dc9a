"""Checkpoint I/O: transformers -> ours -> transformers round trip, sharded files, orbax, and clear errors."""
import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import (hf_logits, hf_model, image_tokens_prompt, random_pixels, rel_err,  # noqa: E402
                          saved_reference, tiny_config)

from robust_r1_jax.model import hf, orbax_io, stacking  # noqa: E402
from robust_r1_jax.model.config import resolve_dtype  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg, ref, path = saved_reference(tmp_path_factory, tiny_config(), "hf", seed=3, folder="ckpt")
    rng = np.random.default_rng(0)
    grids = [(1, 6, 8)]
    ids = np.array([image_tokens_prompt(rng, cfg, grids, [3, 4])])
    pix = random_pixels(rng, cfg, grids)
    return cfg, ref, path, (ids, pix, np.array(grids))


LAYOUTS = pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])


@LAYOUTS
def test_round_trip_gives_identical_logits(checkpoint, tmp_path, scan):
    from transformers import Qwen2_5_VLForConditionalGeneration
    cfg, ref, path, (ids, pix, grid) = checkpoint
    ours = hf.load(path, config_overrides={"scan_layers": scan})
    out = str(tmp_path / "ours")
    hf.save(ours, out)
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    np.testing.assert_array_equal(hf_logits(back, ids, pixel_values=pix, grid=grid),
                                  hf_logits(ref, ids, pixel_values=pix, grid=grid))


@LAYOUTS
def test_untied_head_and_sharded_files(tmp_path, scan):
    from transformers import Qwen2_5_VLForConditionalGeneration
    cfg = tiny_config()
    cfg = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "tie_word_embeddings": False}))
    ref = hf_model(cfg, seed=4)
    src = str(tmp_path / "src")
    ref.save_pretrained(src)
    ours = hf.load(src, config_overrides={"scan_layers": scan})
    assert ours.language.lm_head is not None
    out = str(tmp_path / "sharded")
    hf.save(ours, out, max_shard_size=64 * 1024)  # shards split inside a stacked parameter's layers
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    assert "scan_layers" not in json.load(open(os.path.join(out, "config.json")))
    again = hf.load(out, config_overrides={"scan_layers": scan})
    ids = np.random.default_rng(1).integers(0, cfg.bos_token_id, (1, 9))
    np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(ours(ids)))
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    assert torch.equal(back.lm_head.weight, ref.lm_head.weight)


def test_load_in_bfloat16(checkpoint):
    _, _, path, (ids, pix, grid) = checkpoint
    model = hf.load(path, dtype=jnp.bfloat16)
    assert model.language.embed.value.dtype == jnp.bfloat16
    assert model.visual.blocks[0].attn.qkv.kernel.value.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(model(ids, pixel_values=pix, image_grid_thw=grid))).all()


@LAYOUTS
def test_orbax_round_trip(checkpoint, tmp_path, scan):
    _, _, path, (ids, pix, grid) = checkpoint
    model = hf.load(path, config_overrides={"scan_layers": scan})
    orbax_io.save(model, str(tmp_path / "orbax"))
    restored = orbax_io.restore(str(tmp_path / "orbax"))
    assert restored.config == model.config and restored.config.scan_layers == scan
    np.testing.assert_array_equal(np.asarray(restored(ids, pixel_values=pix, image_grid_thw=grid)),
                                  np.asarray(model(ids, pixel_values=pix, image_grid_thw=grid)))


@LAYOUTS
def test_orbax_model_saved_in_one_layout_loads_into_the_other(checkpoint, tmp_path, scan):
    _, _, path, (ids, pix, grid) = checkpoint
    model = hf.load(path, config_overrides={"scan_layers": scan})
    orbax_io.save(model, str(tmp_path / "orbax"))
    other = orbax_io.restore(str(tmp_path / "orbax"), scan_layers=not scan)
    assert other.config.scan_layers == (not scan)
    unrolled = lambda m: stacking.to_layout(stacking.flat_params(m), stacked=False)
    want, got = unrolled(model), unrolled(other)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    assert rel_err(other(ids, pixel_values=pix, image_grid_thw=grid),
                   model(ids, pixel_values=pix, image_grid_thw=grid)) < 1e-5


def test_missing_shard_is_reported(checkpoint, tmp_path):
    _, _, path, _ = checkpoint
    model = hf.load(path)
    out = str(tmp_path / "sharded")
    hf.save(model, out, max_shard_size=32 * 1024)
    shard = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(out, shard))
    with pytest.raises(FileNotFoundError, match=shard):
        hf.load(out)


def test_missing_and_unexpected_keys_listed_together(checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file
    _, _, path, _ = checkpoint
    out = tmp_path / "broken"
    out.mkdir()
    tensors = load_file(os.path.join(path, "model.safetensors"))
    tensors.pop("model.norm.weight")
    tensors["visual.blocks.0.attn.qkv.weight"] = tensors["visual.blocks.0.attn.qkv.weight"][:-3]
    tensors["model.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    with pytest.raises(ValueError) as err:
        hf.load(str(out))
    msg = str(err.value)
    assert "language.norm.scale" in msg and "model.extra.weight" in msg and "visual.blocks.0.attn.qkv" in msg


def test_unknown_dtype_name():
    with pytest.raises(ValueError, match="unknown dtype name 'float12'"):
        resolve_dtype("float12")


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load(str(tmp_path))


def test_image_token_count_must_match_features(checkpoint):
    cfg, _, path, (ids, pix, grid) = checkpoint
    model = hf.load(path)
    fewer = ids[:, 1:] if ids[0, 0] == cfg.image_token_id else np.where(
        ids == cfg.image_token_id, cfg.image_token_id, ids)[:, :]
    fewer = fewer.copy()
    first_image = int(np.argmax(fewer[0] == cfg.image_token_id))
    fewer[0, first_image] = 1
    with pytest.raises(ValueError, match="image features and image tokens do not match: input_ids hold 11"):
        model(fewer, pixel_values=pix, image_grid_thw=grid)


def test_orbax_save_overwrites_an_existing_model(checkpoint, tmp_path):
    _, _, path, _ = checkpoint
    model = hf.load(path)
    orbax_io.save(model, str(tmp_path / "m"))
    orbax_io.save(model, str(tmp_path / "m"))  # a resumed run exports to the same folder again
    assert orbax_io.read_config(str(tmp_path / "m")) == model.config
