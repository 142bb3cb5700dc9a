"""Presets: parameter counts of SPEC §5, and the Hugging Face config round trip."""
import numpy as np
import pytest
from flax import nnx

from robust_r1_jax.model import config as model_config
from robust_r1_jax.model.vlm import Qwen25VL


def _counts(cfg):
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    counts = {"visual": 0, "language": 0}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        counts[path[0]] += int(np.prod(var.value.shape))
    return counts


def test_3b_matches_spec():
    counts = _counts(model_config.preset("3b"))
    assert counts == {"language": 3_085_938_688, "visual": 668_684_288}  # SPEC §5: 3.086B / 0.669B


def test_7b_counts():
    counts = _counts(model_config.preset("7b"))
    # Qwen2.5-VL-7B-Instruct: 8.29B in all, untied head
    assert counts == {"language": 7_615_616_512, "visual": 676_550_144}


@pytest.mark.parametrize("name,total", [("qwen3_vl_2b", 2.13), ("qwen3_vl_4b", 4.44), ("qwen3_vl_8b", 8.77)])
def test_qwen3_vl_counts(name, total):
    # the sizes the released Qwen3-VL-*-Instruct checkpoints state (2.13B / 4.44B / 8.77B, transcribed)
    counts = _counts(model_config.preset(name))
    assert round(sum(counts.values()) / 1e9, 2) == total


@pytest.mark.parametrize("name", sorted(model_config.PRESETS))
def test_hf_config_round_trip(name):
    import transformers
    cfg = model_config.preset(name)
    config_class = {"qwen2_5_vl": transformers.Qwen2_5_VLConfig, "qwen3_vl": transformers.Qwen3VLConfig}
    back = model_config.ModelConfig.from_hf(config_class[cfg.model_type](**cfg.to_hf()).to_dict())
    assert back.text == cfg.text and back.vision == cfg.vision and back.image_token_id == cfg.image_token_id
    assert back.model_type == cfg.model_type


def test_unknown_preset_and_keys():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        model_config.preset("huge")
    with pytest.raises(ValueError, match="unknown model config keys"):
        model_config.ModelConfig.from_dict({"nope": 1})


def test_vision_initializer_range_sets_the_fresh_kernels_and_survives_config_json():
    import dataclasses
    base = model_config.tiny()
    wide = base.replace(vision=dataclasses.replace(base.vision, initializer_range=0.1))
    stds = {}
    for cfg in (base, wide):
        model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
        kernels = [model.visual.patch_embed.kernel.value, model.visual.merger.fc2.kernel.value,
                   model.visual.blocks[0].attn.qkv.kernel.value, model.visual.blocks[0].mlp.up.kernel.value]
        stds[cfg.vision.initializer_range] = [float(np.std(np.asarray(k))) for k in kernels]
        # the language model keeps transformers' 0.02 either way
        assert float(np.std(np.asarray(model.language.embed.value))) == pytest.approx(0.02, rel=0.1)
    assert all(s == pytest.approx(0.02, rel=0.15) for s in stds[0.02])
    assert all(s == pytest.approx(0.1, rel=0.15) for s in stds[0.1])
    assert model_config.ModelConfig.from_hf(wide.to_hf()).vision.initializer_range == 0.1
    assert model_config.ModelConfig.from_hf(base.to_hf()) == base
    assert model_config.demo().vision.initializer_range == 0.1
