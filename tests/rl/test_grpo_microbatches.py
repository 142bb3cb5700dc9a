"""The micro-batched GRPO update (rl/grpo.py ``update_step``, ``config.grpo.update_microbatches``): M micro-batches
of whole prompt groups give the single pass's loss, diagnostics and updated parameters (float32, within 1e-5) in
every loss aggregation and importance-sampling level, on a batch with weight-0 rows and completions of different
lengths; the same on an 8-device fsdp mesh, where every micro-batch stays spread over all devices; impossible
values are refused."""
import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_r1_jax.model import config as model_config
from robust_r1_jax.rl import grpo
from robust_r1_jax.rl import grpo_variants as gv
from robust_r1_jax.train import state as train_state
from unit_scale_model import unit_scale_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GROUP, PROMPT_LEN, HORIZON = 2, 24, 8
GRID = (1, 4, 4)   # 4 image tokens per prompt
VARIANTS = [(a, s) for a in gv.LOSS_AGGREGATIONS for s in gv.IMPORTANCE_SAMPLING]


def tiny_config():
    """The tiny preset with one decoder layer and one vision block: the update compiles in seconds."""
    tiny = model_config.tiny()
    return tiny.replace(text=dataclasses.replace(tiny.text, num_hidden_layers=1),
                        vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)))


def learner_batch(cfg, prompts: int, seed: int = 0) -> dict:
    """``prompts`` left-padded image prompts x GROUP rows of completions of 0..HORIZON tokens (one empty); the
    last group is a weight-0 padding group and row 1 a weight-0 row inside a live group (overlong="mask")."""
    rng = np.random.default_rng(seed)
    image = [cfg.vision_start_token_id] + [cfg.image_token_id] * (int(np.prod(GRID)) // cfg.vision.merge_unit) + \
        [cfg.vision_end_token_id]
    prompt_ids = np.full((prompts, PROMPT_LEN), cfg.bos_token_id, np.int32)
    prompt_mask = np.zeros((prompts, PROMPT_LEN), np.int32)
    for b in range(prompts):
        p = list(rng.integers(0, cfg.bos_token_id, 3)) + image + list(rng.integers(0, cfg.bos_token_id, 2 + b % 9))
        prompt_ids[b, PROMPT_LEN - len(p):], prompt_mask[b, PROMPT_LEN - len(p):] = p, 1
    rows = prompts * GROUP
    lengths = rng.integers(1, HORIZON + 1, rows)
    lengths[2] = 0
    mask = (np.arange(HORIZON)[None] < lengths[:, None]).astype(np.int32)
    tokens = np.where(mask, rng.integers(0, cfg.bos_token_id, (rows, HORIZON)), cfg.bos_token_id).astype(np.int32)
    row_weight = np.ones(rows, np.float32)
    row_weight[1] = 0.0
    row_weight[-GROUP:] = 0.0
    return dict(prompt_ids=np.repeat(prompt_ids, GROUP, 0), prompt_mask=np.repeat(prompt_mask, GROUP, 0),
                tokens=tokens, mask=mask, row_weight=row_weight,
                pixel_values=rng.normal(size=(prompts, 16, cfg.vision.patch_dim)).astype(np.float32),
                image_grid_thw=np.tile(np.array([[GRID]], np.int32), (prompts, 1, 1)))


def learner_logprobs(logp, mask, seed: int = 1):
    """(old, ref, advantages) about the policy's ``logp`` [N, T]: the old policy's rows sit 1e-4 to 0.3 away (so
    some ratios are inside and some outside both levels' clip ranges), the reference 0.1-ish away, advantages of
    both signs."""
    rng = np.random.default_rng(seed)
    n, t = logp.shape
    offsets = np.array([1e-4, -0.3, 0.3, -1e-4])[np.arange(n) % 4][:, None]
    old = logp + offsets * (1 + 0.1 * rng.normal(size=(n, t))) * mask
    ref = logp + 0.1 * rng.normal(size=(n, t))
    return old.astype(np.float32), ref.astype(np.float32), rng.normal(size=n).astype(np.float32)


# ---- the objective alone: the whole batch's denominators make the micro-batches add up ----------------------
def _objective_inputs(prompts=8, seed=0):
    rng = np.random.default_rng(seed)
    n = prompts * GROUP
    lengths = rng.integers(0, HORIZON + 1, n)
    mask = (np.arange(HORIZON)[None] < lengths[:, None]).astype(np.float32)
    logp = rng.normal(-2, 0.5, (n, HORIZON)).astype(np.float32)
    old, ref, adv = learner_logprobs(logp, mask)
    weight = np.ones(n, np.float32)
    weight[[1, n - 2, n - 1]] = 0.0
    return dict(prompt_ids=np.zeros((n, 1), np.int32), logp=logp, old=old, ref=ref, adv=adv, mask=mask,
                row_weight=weight)


@pytest.mark.parametrize("aggregation, level", VARIANTS)
@pytest.mark.parametrize("count", [2, 4])
def test_micro_batch_objectives_add_up_to_the_batch_objective(aggregation, level, count):
    cfg = grpo.GRPOConfig(num_samples=GROUP, loss_aggregation=aggregation, importance_sampling=level, beta=0.04,
                          max_new_tokens=HORIZON)
    x = {k: jnp.asarray(v) for k, v in _objective_inputs().items()}
    whole_norm = gv.normalisers(x["mask"] * x["row_weight"][:, None])

    def whole(logp):
        return grpo.grpo_objective(logp, x["old"], x["ref"], x["adv"], x["mask"], x["row_weight"], cfg)

    def split(logp):
        m = grpo.microbatches(dict(x, logp=logp), count, GROUP)
        losses, metrics = jax.vmap(lambda b: grpo.grpo_objective(b["logp"], b["old"], b["ref"], b["adv"], b["mask"],
                                                                 b["row_weight"], cfg, whole_norm))(m)
        return losses.sum(), jax.tree.map(jnp.sum, metrics)

    (want, want_m), want_g = jax.value_and_grad(whole, has_aux=True)(x["logp"])
    (got, got_m), got_g = jax.value_and_grad(split, has_aux=True)(x["logp"])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6, atol=1e-7)
    for key in want_m:
        np.testing.assert_allclose(float(got_m[key]), float(want_m[key]), rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), rtol=1e-6, atol=1e-8)
    assert float(want_m["kl"]) > 0 and np.abs(np.asarray(want_g)).max() > 0


def test_the_split_is_strided_by_whole_prompt_groups():
    """Micro-batch m holds prompts m, m + M, ... with their G rows, and their images."""
    prompts, count = 8, 4
    rows = jnp.arange(prompts * GROUP)
    m = grpo.microbatches(dict(prompt_ids=rows[:, None], row_weight=rows.astype(jnp.float32),
                               pixel_values=jnp.arange(prompts)[:, None, None], image_grid_thw=None), count, GROUP)
    assert set(m) == {"prompt_ids", "row_weight", "pixel_values"}
    assert m["prompt_ids"].shape == (count, prompts // count * GROUP, 1)
    np.testing.assert_array_equal(np.asarray(m["pixel_values"])[:, :, 0, 0], [[0, 4], [1, 5], [2, 6], [3, 7]])
    np.testing.assert_array_equal(np.asarray(m["row_weight"])[1], [2, 3, 10, 11])   # prompts 1 and 5
    with pytest.raises(ValueError, match="update_microbatches=3 does not divide the 8 prompt groups"):
        grpo.microbatches(dict(prompt_ids=rows[:, None]), 3, GROUP)


# ---- the update on a unit-scale model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config()
    model, _ = unit_scale_model(cfg, 5)
    parts, trainable, frozen = train_state.split_model(model, ())
    batch = {k: jnp.asarray(v) for k, v in learner_batch(cfg, prompts=4).items()}
    gcfg = grpo.GRPOConfig(num_samples=GROUP, max_new_tokens=HORIZON)
    logp = jax.jit(lambda tr, b: grpo.completion_logprobs(parts.merge(tr, frozen), b, GROUP, gcfg))(trainable, batch)
    old, ref, advantages = (jnp.asarray(v) for v in learner_logprobs(np.asarray(logp), np.asarray(batch["mask"])))
    return dict(parts=parts, trainable=trainable, frozen=frozen, batch=batch, old=old, ref=ref, adv=advantages)


def _update(setup, count, **variant):
    gcfg = grpo.GRPOConfig(num_samples=GROUP, max_new_tokens=HORIZON, beta=0.04, update_microbatches=count,
                           **variant)
    tx = optax.sgd(1.0)   # the update is minus the gradient, compared as such (Adam would magnify float noise)
    _, update = grpo.learner_programs(setup["parts"], tx, optax.constant_schedule(1.0), gcfg)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)   # the update donates its state
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), trainable=copy(setup["trainable"]),
                                   frozen=copy(setup["frozen"]), opt_state=tx.init(setup["trainable"]))
    new_state, metrics = update(state, setup["batch"], setup["old"], setup["ref"], setup["adv"])
    deltas = [np.asarray(w) - np.asarray(p) for w, p in zip(jax.tree.leaves(new_state.trainable),
                                                          jax.tree.leaves(setup["trainable"]))]
    return {k: float(v) for k, v in metrics.items()}, deltas


def _check_equal(got, want):
    (got_m, got_d), (want_m, want_d) = got, want
    assert set(got_m) == set(want_m)
    for key in want_m:
        np.testing.assert_allclose(got_m[key], want_m[key], rtol=1e-5, atol=1e-6, err_msg=key)
    scale = max(float(np.max(np.abs(d))) for d in want_d)
    for g, w in zip(got_d, want_d):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * scale)
    assert want_m["kl"] > 0 and want_m["grad_norm"] > 0 and want_m["skipped"] == 0


def _check_variant(setup, aggregation, level, counts):
    variant = dict(loss_aggregation=aggregation, importance_sampling=level)
    one = _update(setup, 1, **variant)
    assert 0 < one[0]["clip_fraction"] < 1   # both branches of the clipped surrogate are exercised
    for count in counts:
        _check_equal(_update(setup, count, **variant), one)


@pytest.mark.slow   # 15-45 s on the 2-core CI machine, with its model fixture
def test_micro_batched_update_equals_the_single_pass(setup):
    """The reference run's settings (sequence_mean, per-token ratio), M = 4 (one prompt per micro-batch; the last
    is the weight-0 padding group) against M = 1."""
    _check_variant(setup, "sequence_mean", "token", (4,))


@pytest.mark.slow   # two or three compiles of the update per variant: 20-40 s each on this project's CPU machine
@pytest.mark.parametrize("aggregation, level", VARIANTS)
def test_micro_batched_update_equals_the_single_pass_in_every_variant(setup, aggregation, level):
    _check_variant(setup, aggregation, level, (2,) if (aggregation, level) == ("sequence_mean", "token") else (2, 4))


# ---- settings ---------------------------------------------------------------------------------------------------
def test_impossible_micro_batch_counts_are_one_line_each():
    with pytest.raises(ValueError, match="update_microbatches=0: must be an integer >= 1"):
        grpo.GRPOConfig(update_microbatches=0)
    c = grpo.default_config()
    c.data.global_batch_size, c.mesh.data, c.mesh.fsdp = 16, 1, 8
    assert grpo.default_config().grpo.update_microbatches == 1
    c.grpo.update_microbatches = 2
    assert grpo.config_problems(c) == []
    c.grpo.update_microbatches = 4
    assert grpo.config_problems(c) == [
        "config.grpo.update_microbatches=4: must divide the 2 prompt groups each device trains on "
        "(data.global_batch_size=16 prompts over 8 batch shards, data x fsdp), so that every micro-batch is whole "
        "prompts spread over every device: use one of 1, 2"]
    c.mesh.fsdp = 3   # a batch the mesh does not split (validate.batch_problems says so): the step's prompts
    c.grpo.update_microbatches = 3
    assert grpo.config_problems(c) == ["config.grpo.update_microbatches=3: must divide the 16 prompt groups of a "
                                       "step (data.global_batch_size): use one of 1, 2, 4, 8, 16"]
    c.grpo.update_microbatches = -1
    assert grpo.config_problems(c, prefix="rl.") == [
        "config.rl.grpo.update_microbatches=-1: must be an integer >= 1 (the update's micro-batches; 1 = the whole "
        "batch in one backward pass)"]


# ---- on an 8-device fsdp mesh ------------------------------------------------------------------------------------
SCRIPT = textwrap.dedent("""
    import os, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
    sys.path.insert(0, os.path.join(os.getcwd(), "tests", "rl"))
    from unit_scale_model import unit_scale_model
    from test_grpo_microbatches import GROUP, HORIZON, learner_batch, learner_logprobs, tiny_config, _check_equal
    from robust_r1_jax import parallel
    from robust_r1_jax.rl import grpo
    from robust_r1_jax.train import state as train_state
    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.make_mesh(data=1, fsdp=8, tensor=1)
    cfg = tiny_config()
    prompts, count = 16, 2   # 2 prompt groups per device
    host = learner_batch(cfg, prompts)
    batch = {k: jax.device_put(v, parallel.batch_sharding(mesh, v.ndim)) for k, v in host.items()}
    with jax.set_mesh(mesh):
        # the split moves no data: each device's block of prompts holds its part of every micro-batch
        split = jax.jit(lambda b: grpo.microbatches(b, count, GROUP))
        text = split.lower(batch).compile().as_text()
        assert not any(c in text for c in ("all-gather", "all-to-all", "collective-permute", "all-reduce")), text
        out = split(batch)
        assert out["tokens"].sharding.shard_shape(out["tokens"].shape) == (count, prompts * GROUP // count // 8,
                                                                           HORIZON)
        assert out["pixel_values"].sharding.shard_shape(out["pixel_values"].shape)[:2] == (count, 1)
        for shard in out["prompt_ids"].addressable_shards:   # device d: prompts 2d + m of micro-batch m
            d = list(mesh.devices.flat).index(shard.device)
            for m in range(count):
                np.testing.assert_array_equal(np.asarray(shard.data)[m], host["prompt_ids"][(2 * d + m) * GROUP:
                                                                                          (2 * d + m + 1) * GROUP])
        results = {}
        for micro in (1, count):
            model, _ = unit_scale_model(cfg, 5)
            tx = optax.sgd(1.0)
            parts, state = train_state.init_state(model, tx, (), mesh)
            start = [np.asarray(x) for x in jax.tree.leaves(state.trainable)]
            assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state.trainable))
            gcfg = grpo.GRPOConfig(num_samples=GROUP, max_new_tokens=HORIZON, beta=0.04, update_microbatches=micro,
                                   loss_aggregation="token_mean")
            score, update = grpo.learner_programs(parts, tx, optax.constant_schedule(1.0), gcfg,
                                                  train_state.shardings_of(state))
            _, logp = score(state.trainable, state.frozen, state.trainable, batch)   # the reference = the policy
            old, ref, adv = (jax.device_put(v, parallel.batch_sharding(mesh, v.ndim))
                             for v in learner_logprobs(np.asarray(logp), host["mask"]))
            new, metrics = update(state, batch, old, ref, adv)
            results[micro] = ({k: float(v) for k, v in metrics.items()},
                              [np.asarray(w) - s for w, s in zip(jax.tree.leaves(new.trainable), start)])
    _check_equal(results[count], results[1])
    print("OK", results[1][0]["loss"], results[count][0]["loss"])
""")


@pytest.mark.slow   # two updates compiled for 8 simulated devices in a fresh process: ~1 min on 2 cores
def test_micro_batched_update_on_an_fsdp_mesh_equals_the_single_pass():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "OK" in out.stdout
