"""The GRPO learner sized to the rollout (issue 23, item 3): bucket choice, score / update on the bucketed columns
equal to the full prompt + horizon programs, and one compile per bucket (trace counts)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_r1_jax.model import config as model_config
from robust_r1_jax.rl import grpo
from robust_r1_jax.train import state as train_state
from unit_scale_model import unit_scale_model

GROUP, PROMPT_LEN, HORIZON = 2, 40, 16
GRID = (1, 4, 4)   # 4 image tokens


def test_bucket_choice():
    buckets = grpo.LEARNER_BUCKETS
    assert [grpo.bucket_for(n, buckets, 2048) for n in (1, 128, 129, 450, 512, 513, 2048)] == \
        [128, 128, 256, 512, 512, 1024, 2048]
    assert grpo.bucket_for(90, buckets, 96) == 96         # the limit is always a bucket
    assert grpo.bucket_for(300, buckets, 400) == 400      # buckets past the limit are not
    assert grpo.bucket_for(5, (), 16) == 16               # no buckets: the full width
    with pytest.raises(ValueError, match="do not fit"):
        grpo.bucket_for(17, buckets, 16)


@pytest.fixture(scope="module")
def setup():
    tiny = model_config.tiny()
    cfg = tiny.replace(vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)))
    model, _ = unit_scale_model(cfg, 5)
    parts, trainable, frozen = train_state.split_model(model, ())
    rng = np.random.default_rng(0)
    image = [cfg.vision_start_token_id] + [cfg.image_token_id] * (np.prod(GRID) // cfg.vision.merge_unit) + \
        [cfg.vision_end_token_id]
    prompts = [list(rng.integers(0, cfg.bos_token_id, 5)) + image + list(rng.integers(0, cfg.bos_token_id, n))
               for n in (3, 9)]
    prompt_ids = np.full((2, PROMPT_LEN), cfg.bos_token_id, np.int32)
    prompt_mask = np.zeros((2, PROMPT_LEN), np.int32)
    for b, p in enumerate(prompts):   # left padded
        prompt_ids[b, PROMPT_LEN - len(p):], prompt_mask[b, PROMPT_LEN - len(p):] = p, 1
    lengths = np.array([3, 7, 5, 2])   # the longest completion: 7 tokens of a 16-token horizon
    mask = (np.arange(HORIZON)[None] < lengths[:, None]).astype(np.int32)
    tokens = np.where(mask, rng.integers(0, cfg.bos_token_id, (4, HORIZON)), cfg.bos_token_id).astype(np.int32)
    batch = dict(prompt_ids=np.repeat(prompt_ids, GROUP, 0), prompt_mask=np.repeat(prompt_mask, GROUP, 0),
                 tokens=tokens, mask=mask, row_weight=np.ones(4, np.float32),
                 pixel_values=rng.normal(size=(2, 16, cfg.vision.patch_dim)).astype(np.float32),
                 image_grid_thw=np.array([[GRID], [GRID]], np.int32))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    gcfg = grpo.GRPOConfig(num_samples=GROUP, beta=0.04, inner_iterations=2)   # μ > 1: score gives π_old
    tx = optax.sgd(1.0)   # the update is then minus the gradient, compared as such (Adam would magnify noise)
    programs = grpo.learner_programs(parts, tx, optax.constant_schedule(1.0), gcfg)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)   # the update donates its state
    state = lambda: train_state.TrainState(step=jnp.zeros((), jnp.int32), trainable=copy(trainable),
                                           frozen=copy(frozen), opt_state=tx.init(trainable))
    # a reference a little away from the policy, so the KL term is not zero
    reference = jax.tree.map(lambda x: x * 1.01, trainable)
    return dict(batch=batch, programs=programs, state=state, frozen=frozen, trainable=trainable,
                reference=reference, parts=parts, tx=tx, gcfg=gcfg)


def _run(setup, prompt_bucket, completion_bucket):
    score, update = setup["programs"]
    batch = grpo.learner_view(setup["batch"], prompt_bucket, completion_bucket)
    old, ref = score(setup["trainable"], setup["frozen"], setup["reference"], batch)
    # advantages of both signs; the update uses an old policy a little off the current one (ratio != 1)
    advantages = jnp.asarray([1.0, -1.0, 0.5, -0.5])
    new_state, metrics = update(setup["state"](), batch, old - 0.05 * batch["mask"], ref, advantages)
    return old, ref, new_state, metrics


@pytest.mark.slow
def test_bucketed_score_and_update_equal_the_full_width_programs(setup):
    longest_prompt = int(jnp.max(jnp.sum(setup["batch"]["prompt_mask"], 1)))
    assert longest_prompt == 20
    full = _run(setup, PROMPT_LEN, HORIZON)
    cut = _run(setup, grpo.bucket_for(longest_prompt, (8, 24), PROMPT_LEN), grpo.bucket_for(7, (4, 8), HORIZON))
    assert cut[0].shape == (4, 8) and full[0].shape == (4, HORIZON)
    mask = np.asarray(setup["batch"]["mask"][:, :8], bool)
    for got, want in zip(cut[:2], full[:2]):   # old-policy and reference log-probs on the real tokens
        np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(want)[:, :8][mask], rtol=1e-5, atol=1e-6)
    for key in ("loss", "grad_norm", "update_norm", "kl", "clip_fraction", "policy_loss"):
        np.testing.assert_allclose(float(cut[3][key]), float(full[3][key]), rtol=1e-5, atol=1e-6, err_msg=key)
    assert float(full[3]["kl"]) > 0 and float(full[3]["grad_norm"]) > 0
    start = jax.tree.leaves(setup["trainable"])
    full_grads = [np.asarray(w) - np.asarray(p) for w, p in zip(jax.tree.leaves(full[2].trainable), start)]
    cut_grads = [np.asarray(w) - np.asarray(p) for w, p in zip(jax.tree.leaves(cut[2].trainable), start)]
    scale = max(float(np.max(np.abs(g))) for g in full_grads)
    for got, want in zip(cut_grads, full_grads):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)


@pytest.mark.slow
def test_a_seen_bucket_never_compiles_again(setup):
    before = grpo.LEARNER_TRACES.copy()
    for completion in (4, 8, 4, 8, 4):
        _run(setup, 24, completion)
    new = {k: v - before[k] for k, v in grpo.LEARNER_TRACES.items() if v != before[k]}
    # at most one compile per program and bucket (none where an earlier test compiled the bucket)
    assert all(v == 1 for v in new.values()) and set(new) <= {(p, 24, t) for p in ("score", "update") for t in (4, 8)}
    assert grpo.LEARNER_TRACES[("score", 24, 4)] >= 1 and grpo.LEARNER_TRACES[("update", 24, 8)] >= 1


@pytest.mark.slow
def test_with_one_update_per_rollout_pi_old_is_the_update_forward(setup):
    """μ = 1: score skips the old-policy forward and the update takes its own log-probs, detached, as π_old; the
    loss, diagnostics and update equal those of the update given the separately scored π_old."""
    gcfg = dataclasses.replace(setup["gcfg"], inner_iterations=1)
    score, update = grpo.learner_programs(setup["parts"], setup["tx"], optax.constant_schedule(1.0), gcfg)
    batch = grpo.learner_view(setup["batch"], 24, 8)
    old, ref = setup["programs"][0](setup["trainable"], setup["frozen"], setup["reference"], batch)   # μ = 2
    none, ref_1 = score(setup["trainable"], setup["frozen"], setup["reference"], batch)
    assert none is None
    np.testing.assert_array_equal(np.asarray(ref_1), np.asarray(ref))
    advantages = jnp.asarray([1.0, -1.0, 0.5, -0.5])
    fused_state, fused = update(setup["state"](), batch, None, ref, advantages)
    scored_state, scored = update(setup["state"](), batch, old, ref, advantages)
    # and in two micro-batches, where each takes its own rows' detached log-probs
    _, micro_update = grpo.learner_programs(setup["parts"], setup["tx"], optax.constant_schedule(1.0),
                                            dataclasses.replace(gcfg, update_microbatches=2))
    micro_state, micro = micro_update(setup["state"](), batch, None, ref, advantages)
    for key in ("loss", "grad_norm", "update_norm", "kl", "clip_fraction", "policy_loss"):
        for got in (fused, micro):
            np.testing.assert_allclose(float(got[key]), float(scored[key]), rtol=1e-5, atol=1e-6, err_msg=key)
    assert float(fused["clip_fraction"]) == 0.0 and float(fused["grad_norm"]) > 0
    start = jax.tree.leaves(setup["trainable"])
    deltas = [[np.asarray(w) - np.asarray(p) for w, p in zip(jax.tree.leaves(s.trainable), start)]
              for s in (fused_state, micro_state, scored_state)]
    scale = max(float(np.max(np.abs(d))) for d in deltas[2])
    for fused_delta, micro_delta, want in zip(*deltas):
        np.testing.assert_allclose(fused_delta, want, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(micro_delta, want, rtol=0, atol=1e-5 * scale)
