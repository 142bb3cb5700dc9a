"""Scanned layers (``scan_layers``): the same numbers as the unrolled model, one loop in the program whatever
the depth, the config switch kept out of the HF config, and the layout converters."""
import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import image_tokens_prompt, tiny_config  # noqa: E402

from robust_r1_jax.model import stacking  # noqa: E402
from robust_r1_jax.model.config import ModelConfig  # noqa: E402
from robust_r1_jax.model.vlm import Qwen25VL  # noqa: E402

GRIDS = [(1, 10, 14)]  # partial windows, and two vision blocks of window attention around a full one


def _unit_scale(model):
    """Weights scaled up so that attention is far from uniform and a layer mix-up shows in the numbers."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[-1] in ("kernel", "embed"):  # not by rank: stacked norm scales and biases are 2-D too
            var.value = var.value * 8.0
    return model


def _batch(cfg):
    rng = np.random.default_rng(0)
    ids = np.array([image_tokens_prompt(rng, cfg, GRIDS, [3, 5])])
    pix = rng.normal(size=(sum(t * h * w for t, h, w in GRIDS), cfg.vision.patch_dim)).astype(np.float32)
    return jnp.asarray(ids), jnp.asarray(pix), jnp.asarray(GRIDS)


def _loss_and_grads(model, ids, pix, grid):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        logits = nnx.merge(graphdef, params, rest).logits(ids, pix, grid)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    flat = {".".join(map(str, p)): v.value for p, v in nnx.to_flat_state(grads)}
    return value, logits, stacking.to_layout(flat, stacked=False)


# remat "none" ~17 s on 2 cores: slow step; "dots" (the recipes' remat) stays in the default step
@pytest.mark.parametrize("remat", [pytest.param("none", marks=pytest.mark.slow), "dots"])
def test_scanned_equals_unrolled_logits_and_gradients(remat):
    cfg = tiny_config(remat=remat)
    unrolled = _unit_scale(Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    scanned = _unit_scale(Qwen25VL(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0)))  # same seed, same weights
    batch = _batch(cfg)
    want_loss, want_logits, want_grads = _loss_and_grads(unrolled, *batch)
    got_loss, got_logits, got_grads = _loss_and_grads(scanned, *batch)
    scale = float(jnp.abs(want_logits).max())
    assert float(jnp.abs(got_logits - want_logits).max()) / scale < 1e-5
    np.testing.assert_allclose(float(got_loss), float(want_loss), rtol=1e-5)
    assert set(got_grads) == set(want_grads) and any(".layers.1." in k for k in got_grads)
    for name, want in want_grads.items():
        got = got_grads[name]
        assert float(jnp.abs(want).max()) > 0 or "visual" in name, name
        err = float(jnp.abs(got - want).max()) / max(float(jnp.abs(want).max()), 1e-6)
        assert err < 1e-4, (name, err)


def _lowered_text(cfg):
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    ids = jax.ShapeDtypeStruct((2, 64), jnp.int32)

    def forward(params, ids):
        return nnx.merge(graphdef, params).logits(ids)
    return jax.jit(forward).lower(params, ids).as_text()


def _at_depth(cfg, layers):
    return cfg.replace(text=dataclasses.replace(cfg.text, num_hidden_layers=layers))


def test_the_scanned_program_does_not_grow_with_depth():
    cfg = tiny_config(scan_layers=True, remat="dots")
    shallow, deep = _lowered_text(_at_depth(cfg, 2)), _lowered_text(_at_depth(cfg, 8))
    assert shallow.count("stablehlo.while") == deep.count("stablehlo.while") == 1
    assert abs(len(deep) - len(shallow)) < 0.02 * len(shallow)
    unrolled_deep = _lowered_text(_at_depth(cfg.replace(scan_layers=False), 8))
    assert "stablehlo.while" not in unrolled_deep and len(unrolled_deep) > 2 * len(deep)


def test_stacked_parameters_carry_the_layers_axis():
    cfg = tiny_config(scan_layers=True)
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    kernel = model.language.layers.attn.q.kernel
    assert kernel.shape == (cfg.text.num_hidden_layers, cfg.text.hidden_size, cfg.text.num_attention_heads,
                            cfg.text.head_dim)
    assert kernel.get_metadata()["logical_axes"] == ("layers", "embed", "heads", "head_dim")
    qkv = model.visual.blocks.attn.qkv.kernel
    assert qkv.shape[0] == cfg.vision.depth and qkv.get_metadata()["logical_axes"][0] == "layers"


def test_scan_layers_is_a_runtime_setting():
    cfg = tiny_config(scan_layers=True)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "scan_layers" not in str(cfg.to_hf())
    assert ModelConfig.from_hf(cfg.to_hf()).scan_layers is False
    old = cfg.to_dict()
    del old["scan_layers"]  # a model_config.json written before the switch existed
    assert ModelConfig.from_dict(old).scan_layers is False


def test_layout_converters_are_inverse():
    flat = {"language.layers.0.mlp.up.kernel": np.zeros((2, 3)), "language.layers.1.mlp.up.kernel": np.ones((2, 3)),
            "visual.blocks.0.norm1.scale": np.ones(4), "language.embed": np.ones((5, 2))}
    stacked = stacking.to_layout(flat, stacked=True)
    assert sorted(stacked) == ["language.embed", "language.layers.mlp.up.kernel", "visual.blocks.norm1.scale"]
    assert stacked["language.layers.mlp.up.kernel"].shape == (2, 2, 3)
    back = stacking.to_layout(stacked, stacked=False)
    assert sorted(back) == sorted(flat)
    for k in flat:
        np.testing.assert_array_equal(np.asarray(back[k]), flat[k])
    with pytest.raises(ValueError, match="not 0..1"):
        stacking.stack_flat({"language.layers.0.x": np.ones(1), "language.layers.2.x": np.ones(1)})


def test_resuming_a_training_checkpoint_in_the_other_layout_is_a_clear_error():
    from robust_r1_jax.train import checkpoint
    meta = {"model_config": tiny_config(scan_layers=True).to_dict()}
    checkpoint.check_compatible(meta, tiny_config(scan_layers=True), "ckpt")
    with pytest.raises(ValueError, match="resume it with --config.model.scan_layers=True"):
        checkpoint.check_compatible(meta, tiny_config(), "ckpt")


def test_the_scan_carry_is_pinned_to_the_batch_layout_of_the_mesh_in_context():
    # inside a while loop the partitioner cannot see the batch layout: without the pin the 3B SFT step on v5p-8
    # split the hidden dimension and all-reduced full-batch activations (temp 65 GiB instead of 28 GiB)
    from robust_r1_jax import parallel
    cfg = _at_depth(tiny_config(scan_layers=True), 2)
    assert "sharding_constraint" not in _lowered_text(cfg)
    with jax.set_mesh(parallel.make_mesh(devices=jax.devices()[:1])):
        assert "sharding_constraint" in _lowered_text(cfg)
