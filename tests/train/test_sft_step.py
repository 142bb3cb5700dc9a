"""The SFT step: loss definition, freezing, accumulation, the non-finite guard, and 8-device equality."""
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sft_fixtures import run_on_eight_devices, synthetic_batch, tiny_model  # noqa: E402

from robust_r1_jax import parallel  # noqa: E402
from robust_r1_jax.train import optim, state as train_state, step as sft  # noqa: E402

FREEZE = ("^visual\\.",)


def _setup(accum=1, chunk=0, lr=1e-2, tx=None):
    model = tiny_model()
    cfg = optim.OptimConfig(learning_rate=lr, warmup_steps=0, total_steps=10, clip_norm=1.0)
    tx = tx or optim.optimizer(cfg)
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    parts, state = train_state.init_state(model, tx, FREEZE, mesh)
    batch = synthetic_batch(model.config)
    step = sft.compile_step(parts, tx, optim.schedule(cfg), sft.StepConfig(accum, chunk), state, mesh, batch)
    return model, parts, state, batch, step, mesh


def _reference_loss(model, batch):
    logits = np.asarray(model(batch["input_ids"], pixel_values=batch["pixel_values"],
                              image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"]),
                        np.float64)
    ids, m = batch["input_ids"], batch["loss_mask"]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse[:, :-1] - np.take_along_axis(logits[:, :-1], ids[:, 1:, None], -1)[..., 0]
    return float((nll * m[:, 1:]).sum() / m[:, 1:].sum())


def test_loss_is_token_mean_over_assistant_tokens_and_frozen_params_stay():
    model, parts, state, batch, step, mesh = _setup()
    want = _reference_loss(model, batch)
    frozen_before = jax.tree.map(np.asarray, state.frozen)
    trained_before = jax.tree.map(np.asarray, state.trainable)
    state, metrics = step(state, sft.global_batch(mesh, batch))
    assert abs(float(metrics["loss"]) - want) < 1e-5 * max(1, want)
    assert float(metrics["tokens"]) == batch["loss_mask"][:, 1:].sum()
    for a, b in zip(jax.tree.leaves(frozen_before), jax.tree.leaves(state.frozen)):
        assert np.array_equal(a, np.asarray(b))
    changed = [not np.array_equal(a, np.asarray(b))
               for a, b in zip(jax.tree.leaves(trained_before), jax.tree.leaves(state.trainable))]
    assert all(changed)
    assert int(state.step) == 1 and int(metrics["skipped"]) == 0


def test_accumulation_and_chunked_loss_match_one_big_step():
    # plain SGD, so that parameter changes are the gradients themselves (Adam's first step is ±lr)
    _, _, s1, batch, step1, mesh = _setup(accum=1, chunk=0, tx=optax.sgd(1.0))
    _, _, s4, _, step4, _ = _setup(accum=4, chunk=16, tx=optax.sgd(1.0))
    s1, m1 = step1(s1, sft.global_batch(mesh, batch))
    s4, m4 = step4(s4, sft.global_batch(mesh, batch))
    assert abs(float(m1["loss"]) - float(m4["loss"])) < 1e-5
    assert abs(float(m1["grad_norm"]) - float(m4["grad_norm"])) < 1e-4 * float(m1["grad_norm"])
    for a, b in zip(jax.tree.leaves(s1.trainable), jax.tree.leaves(s4.trainable)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_non_finite_batch_skips_the_update():
    _, _, state, batch, step, mesh = _setup()
    before = jax.tree.map(np.asarray, (state.trainable, state.opt_state))
    bad = dict(batch, pixel_values=np.full_like(batch["pixel_values"], np.nan))
    state, metrics = step(state, sft.global_batch(mesh, bad))
    assert int(metrics["skipped"]) == 1 and int(state.step) == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.trainable, state.opt_state))):
        assert np.array_equal(a, np.asarray(b))
    state, metrics = step(state, sft.global_batch(mesh, batch))
    assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["loss"]))


EIGHT_DEVICES = textwrap.dedent("""
    import os, sys, jax, numpy as np, optax
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "train"))
    from sft_fixtures import synthetic_batch, tiny_model
    from robust_r1_jax import parallel
    from robust_r1_jax.train import optim, state as train_state, step as sft
    assert jax.device_count() == 8
    cfg = optim.OptimConfig(learning_rate=1e-5, total_steps=10)
    meshes = (parallel.make_mesh(devices=jax.devices()[:1]), parallel.make_mesh(data=2, fsdp=2, tensor=2))

    def run(mesh, tx):
        model = tiny_model()
        parts, state = train_state.init_state(model, tx, ("^visual\\.",), mesh)
        before = [np.asarray(x) for x in jax.tree.leaves(state.trainable)]
        batch = synthetic_batch(model.config)
        step = sft.compile_step(parts, tx, optim.schedule(cfg), sft.StepConfig(2, 16), state, mesh, batch)
        state, metrics = step(state, sft.global_batch(mesh, batch))
        after = [np.asarray(x) for x in jax.tree.leaves(state.trainable)]
        return float(metrics["loss"]), before, after

    # the recipe's AdamW: loss and updated parameters
    (l1, _, p1), (l8, _, p8) = (run(m, optim.optimizer(cfg)) for m in meshes)
    assert abs(l1 - l8) <= 1e-5 * abs(l1), (l1, l8)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        train_state.split_model(tiny_model(), ("^visual\\.",))[1])[0]]
    # The key bias has a zero true gradient (softmax ignores a shift shared by all keys), so Adam turns its
    # rounding noise into +-lr steps from a zero init; its gradient is checked below instead.
    # Elements whose gradient is near zero (a few of the query bias's) see the same amplification, less strongly:
    # 8.8e-6 of the largest element before the xla attention's batched-matmul layout, 1.3e-5 after (gradients
    # within 3e-6 either way), so the bound is 5e-5; a sharding error is of the order of the step itself.
    worst = max(float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
                for n, a, b in zip(names, p1, p8) if "['k']['bias']" not in n)
    assert worst < 5e-5, worst
    # plain SGD with rate 1 exposes the gradients themselves (Adam's step one is about +-lr per element)
    (_, b1, g1), (_, b8, g8) = (run(m, optax.sgd(1.0)) for m in meshes)
    grad_err = max(float(np.linalg.norm((x1 - y1) - (x8 - y8)) / max(np.linalg.norm(x1 - y1), 1e-6))
                   for x1, y1, x8, y8 in zip(b1, g1, b8, g8))
    print("LOSS", l1, l8, "PARAMS", worst, "GRADS", grad_err)
    assert grad_err < 1e-4, grad_err
""")


@pytest.mark.slow   # ~50 s on 2 cores; tests/model/test_sharding.py keeps a sharded-vs-single check in the default step
def test_step_on_eight_devices_equals_one_device():
    assert "GRADS" in run_on_eight_devices(EIGHT_DEVICES)
