"""Every GRPO variant (config.grpo) against a float64 NumPy reference written from its paper's formula, one sequence
or group at a time, on random log-probs, masks and rewards with the awkward cases in: groups of equal rewards,
groups whose completions were all truncated, completions of one token, empty and padding rows."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_r1_jax.model import generate as gen
from robust_r1_jax.rl import grpo
from robust_r1_jax.rl import grpo_variants as gv

G = 4


# ---- float64 references ---------------------------------------------------------------------------------------
def ref_loss(logp, old, ref, adv, mask, weight, *, eps, seq_eps, beta, aggregation, level, constant):
    """GRPO / DAPO / Dr. GRPO / GSPO objective, a sequence at a time."""
    n, t = logp.shape
    per_row, counts = [], []
    for i in range(n):
        m = mask[i] * weight[i]
        if level == "sequence":   # GSPO: one ratio per sequence, from the length-normalised log-ratio
            length = max(mask[i].sum(), 1.0)
            s = np.exp(sum((logp[i, j] - old[i, j]) * mask[i, j] for j in range(t)) / length)
            ratios, (lo, hi) = [s] * t, seq_eps
        else:
            ratios, (lo, hi) = [np.exp(logp[i, j] - old[i, j]) for j in range(t)], eps
        row = []
        for j in range(t):
            r = ratios[j]
            surrogate = min(r * adv[i], min(max(r, 1 - lo), 1 + hi) * adv[i])
            d = ref[i, j] - logp[i, j]
            row.append((-surrogate + beta * (np.exp(d) - d - 1)) * m[j])
        per_row.append(sum(row))
        counts.append(m.sum())
    live = [i for i in range(n) if counts[i] > 0]
    if not live:
        return 0.0
    if aggregation == "sequence_mean":
        return sum(per_row[i] / counts[i] for i in live) / len(live)
    if aggregation == "token_mean":
        return sum(per_row) / sum(counts)
    return sum(per_row) / (len(live) * constant)


def ref_advantages(rewards, weight, scale, ddof):
    r = rewards.reshape(-1, G)
    real = rewards[weight > 0]
    batch_std = np.sqrt(((real - real.mean()) ** 2).sum() / max(len(real) - ddof, 1)) if len(real) else 0.0
    out = []
    for group in r:
        if np.all(group == group[0]):
            out += [0.0] * G
            continue
        centred = group - group.mean()
        if scale == "group":
            centred = centred / (np.sqrt(((group - group.mean()) ** 2).sum() / (G - ddof)) + 1e-4)
        elif scale == "batch":
            centred = centred / (batch_std + 1e-4)
        out += list(centred)
    return np.array(out)


def ref_penalty(length, horizon, buffer, factor):
    """DAPO §3.4, soft overlong punishment."""
    if length <= horizon - buffer:
        return 0.0
    if length <= horizon:
        return factor * (horizon - buffer - length) / buffer
    return -factor


# ---- inputs -----------------------------------------------------------------------------------------------------
def _inputs(seed=0, n=12, t=9):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2, 0.5, (n, t))
    logp = old + rng.normal(0, 0.3, (n, t))      # token ratios spread across both clip edges
    ref = old + rng.normal(0, 0.2, (n, t))
    adv = rng.normal(size=n)
    adv[4:8] = 0.0                                # a group of equal rewards
    lengths = rng.integers(1, t + 1, n)
    lengths[0], lengths[1] = 0, 1                 # an empty row and a one-token completion
    lengths[8:12] = t                             # a group truncated at the budget
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    weight = np.ones(n)
    weight[-1] = 0.0                              # a padding row of the pipeline
    return logp, old, ref, adv, mask, weight


VARIANTS = list(itertools.product(gv.LOSS_AGGREGATIONS, gv.IMPORTANCE_SAMPLING))


@pytest.mark.parametrize("aggregation,level", VARIANTS)
def test_objective_and_gradient_match_the_float64_reference(aggregation, level):
    logp, old, ref, adv, mask, weight = _inputs()
    # the sequence epsilons are widened from GSPO's 3e-4 / 4e-4 so that both branches occur on these ratios
    cfg = grpo.GRPOConfig(num_samples=G, epsilon_low=0.2, epsilon_high=0.28, sequence_epsilon_low=0.05,
                          sequence_epsilon_high=0.08, beta=0.04, loss_aggregation=aggregation,
                          importance_sampling=level, loss_constant=0, max_new_tokens=11)
    kw = dict(eps=(0.2, 0.28), seq_eps=(0.05, 0.08), beta=0.04, aggregation=aggregation, level=level, constant=11)
    want = ref_loss(logp, old, ref, adv, mask, weight, **kw)
    f = lambda lp: grpo.grpo_objective(lp, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                                       jnp.asarray(adv, jnp.float32), jnp.asarray(mask), jnp.asarray(weight),
                                       cfg)[0]
    got, grad = jax.value_and_grad(f)(jnp.asarray(logp, jnp.float32))
    assert abs(float(got) - want) < 1e-5 * max(1.0, abs(want))
    h = 1e-6
    num = np.zeros_like(logp)
    for idx in np.ndindex(logp.shape):
        up, down = logp.copy(), logp.copy()
        up[idx] += h
        down[idx] -= h
        num[idx] = (ref_loss(up, old, ref, adv, mask, weight, **kw) - ref_loss(down, old, ref, adv, mask, weight,
                                                                              **kw)) / (2 * h)
    np.testing.assert_allclose(np.asarray(grad), num, atol=2e-6, rtol=1e-3)
    assert np.all(np.asarray(grad)[mask == 0] == 0) and np.all(np.asarray(grad)[-1] == 0)


def test_sequence_ratio_of_a_one_token_completion_is_the_token_ratio():
    logp, old = jnp.array([[-1.0, -3.0]]), jnp.array([[-1.5, -0.2]])
    mask = jnp.array([[1, 0]])
    np.testing.assert_allclose(np.asarray(gv.importance_ratio(logp, old, mask, "sequence")), [[np.exp(0.5)]],
                               rtol=1e-6)


def test_the_default_objective_is_the_reference_runs():
    """The defaults reproduce SPEC §4 exactly: token ratios, ε 0.2 / 0.2, β 0.04, sequence mean."""
    logp, old, ref, adv, mask, weight = _inputs(3)
    cfg = grpo.GRPOConfig()
    want = ref_loss(logp, old, ref, adv, mask, weight, eps=(0.2, 0.2), seq_eps=(0, 0), beta=0.04,
                    aggregation="sequence_mean", level="token", constant=1)
    got = grpo.grpo_objective(*(jnp.asarray(a, jnp.float32) for a in (logp, old, ref, adv, mask, weight)), cfg)[0]
    assert abs(float(got) - want) < 1e-5


def test_no_weighted_token_gives_a_zero_loss_in_every_aggregation():
    logp, old, ref, adv, mask, _ = _inputs(4)
    for aggregation in gv.LOSS_AGGREGATIONS:
        loss = gv.aggregate_loss(jnp.asarray(logp), jnp.zeros(mask.shape), aggregation, 8.0)
        assert float(loss) == 0.0


@pytest.mark.parametrize("scale,estimator", list(itertools.product(gv.REWARD_SCALINGS, gv.STD_ESTIMATORS)))
def test_advantages_match_the_float64_reference(scale, estimator):
    rng = np.random.default_rng(5)
    rewards = rng.normal(size=6 * G) * 3
    rewards[G:2 * G] = 0.7                        # all equal: exactly 0 in every mode
    rewards[2 * G:3 * G] = -1.0                   # an all-truncated group under soft_penalty: all -1
    rewards[3 * G] = 1e6 + 0.3                    # a reward far from the others
    weight = np.ones(6 * G)
    weight[5 * G:] = 0.0                          # a padding group: out of the batch std
    got = np.asarray(gv.scaled_advantages(jnp.asarray(rewards, jnp.float32), jnp.asarray(weight), G, scale,
                                          estimator))
    want = ref_advantages(rewards, weight, scale, 1 if estimator == "unbiased" else 0)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()))
    assert np.all(got[G:3 * G] == 0.0)


def test_group_advantages_keep_their_reference_run_meaning():
    rewards = jnp.asarray(np.random.default_rng(6).normal(size=4 * G), jnp.float32)
    np.testing.assert_array_equal(np.asarray(grpo.group_advantages(rewards, G)),
                                  np.asarray(gv.scaled_advantages(rewards, jnp.ones(4 * G), G, "group")))


def test_overlong_penalty_matches_dapo():
    horizon, buffer = 16, 5
    lengths = np.arange(1, horizon + 1)
    for factor in (1.0, 0.5):
        got = np.asarray(gv.overlong_penalty(jnp.asarray(lengths), horizon, buffer, factor))
        np.testing.assert_allclose(got, [ref_penalty(n, horizon, buffer, factor) for n in lengths], atol=1e-7)
    assert got[horizon - buffer - 1] == 0.0 and got[-1] == pytest.approx(-0.5)


def test_truncated_means_the_whole_budget_without_a_stop_token():
    stop = (7, 9)
    tokens = np.array([[1, 2, 3, 4], [1, 7, 0, 0], [1, 2, 3, 9], [5, 5, 5, 5], [3, 0, 0, 0]])
    lengths = np.array([4, 2, 4, 4, 1])
    got = np.asarray(gv.truncated(jnp.asarray(tokens), jnp.asarray(lengths), stop))
    want = [lengths[i] == 4 and tokens[i, -1] not in stop for i in range(5)]
    assert got.tolist() == want == [True, False, False, True, False]


@pytest.mark.parametrize("keep", [1, 2, 3, 4])
def test_select_groups_keeps_the_first_groups_with_a_spread(keep):
    rewards = np.array([[1, 1, 1, 1], [0, 1, 0, 0], [2, 2, 2, 2], [3, 1, 2, 0], [5, 6, 5, 5]], np.float32)
    weight = np.ones_like(rewards)
    weight[4] = 0.0                               # spread, but a padding prompt: never kept
    index, kept, qualified = gv.select_groups(jnp.asarray(rewards.reshape(-1)), jnp.asarray(weight.reshape(-1)),
                                              G, keep)
    qualifying = [g for g in range(5) if weight[g, 0] > 0 and len(set(rewards[g])) > 1]
    assert int(qualified) == len(qualifying) == 2
    index, kept = np.asarray(index).tolist(), np.asarray(kept).tolist()
    assert index[:min(keep, 2)] == qualifying[:keep]
    assert kept == [i < 2 for i in range(keep)]
    assert len(set(index)) == keep                # padding reuses other groups (weight 0), each once
    assert np.asarray(gv.group_rows(jnp.asarray([3, 1]), G)).tolist() == [12, 13, 14, 15, 4, 5, 6, 7]


# ---- the learner's batch ---------------------------------------------------------------------------------------
STOP = (9,)


def _rollout(lengths, horizon=6, seed=0, stop_at_end=()):
    rng = np.random.default_rng(seed)
    n = len(lengths)
    tokens = rng.integers(10, 50, (n, horizon)).astype(np.int32)
    mask = (np.arange(horizon)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    for i, length in enumerate(lengths):
        if length < horizon or i in stop_at_end:
            tokens[i, length - 1] = STOP[0]
        tokens[i, length:] = 0
    prompt_ids = np.repeat(rng.integers(10, 50, (n // G, 3)).astype(np.int32), G, axis=0)
    return gen.Rollout(tokens=jnp.asarray(tokens), logprobs=jnp.zeros((n, horizon)), mask=jnp.asarray(mask),
                       lengths=jnp.asarray(lengths, jnp.int32), prompt_ids=jnp.asarray(prompt_ids),
                       prompt_mask=jnp.ones(prompt_ids.shape, jnp.int32), steps=jnp.asarray(horizon))


def test_learner_batch_defaults_leave_the_rollout_and_the_group_advantages_unchanged():
    lengths = [6, 6, 2, 3, 1, 6, 6, 6]
    rollout = _rollout(lengths, stop_at_end=(5,))
    rewards = jnp.asarray([1, 2, 3, 4, 0.5, 0.5, 0.5, 0.5], jnp.float32)
    weight = jnp.ones(8)
    batch, adv, stats = grpo.learner_batch(rollout, None, None, rewards, weight, grpo.GRPOConfig(num_samples=G), 2,
                                           STOP)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), np.asarray(rollout.tokens))
    np.testing.assert_array_equal(np.asarray(batch["row_weight"]), np.ones(8))
    np.testing.assert_allclose(np.asarray(adv), ref_advantages(np.asarray(rewards), np.ones(8), "group", 1),
                               rtol=1e-5)
    # rows 0, 1, 6, 7 used the whole budget without a stop token (row 5 stopped on its last token)
    assert float(stats["completions/clipped_ratio"]) == pytest.approx(4 / 8)
    assert set(stats) == {"completions/clipped_ratio"}


def test_overlong_mask_drops_truncated_rows_and_soft_penalty_shapes_the_reward():
    lengths = [6, 6, 6, 6, 2, 4, 5, 6]            # group 0 all truncated; group 1 across the buffer
    rollout = _rollout(lengths, stop_at_end=())
    rewards = np.array([1, 1, 1, 1, 1, 1, 1, 1], np.float32)
    weight = np.ones(8, np.float32)
    cfg = grpo.GRPOConfig(num_samples=G, overlong="mask")
    batch, adv, stats = grpo.learner_batch(rollout, None, None, jnp.asarray(rewards), jnp.asarray(weight), cfg, 2,
                                           STOP)
    assert np.asarray(batch["row_weight"]).tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
    assert float(stats["completions/clipped_ratio"]) == pytest.approx(5 / 8)
    cfg = grpo.GRPOConfig(num_samples=G, overlong="soft_penalty", overlong_buffer=3, max_new_tokens=6)
    batch, adv, stats = grpo.learner_batch(rollout, None, None, jnp.asarray(rewards), jnp.asarray(weight), cfg, 2,
                                           STOP)
    penalty = np.array([ref_penalty(n, 6, 3, 1.0) for n in lengths])
    assert np.asarray(batch["row_weight"]).tolist() == [1] * 8
    np.testing.assert_allclose(np.asarray(adv), ref_advantages(rewards + penalty, weight, "group", 1), rtol=1e-5,
                               atol=1e-6)
    assert np.all(np.asarray(adv)[:4] == 0.0)     # all truncated: all -1, no spread
    assert float(stats["reward/overlong_penalty"]) == pytest.approx(penalty.mean())


@pytest.mark.parametrize("drawn_spread,keep", [((1, 3, 4), 2), ((3,), 2), ((), 2)])
def test_dynamic_sampling_keeps_static_shapes_and_pads_with_weight_zero_groups(drawn_spread, keep):
    drawn = 4
    rng = np.random.default_rng(7)
    rewards = np.repeat(rng.normal(size=drawn), G).astype(np.float32)
    for g in drawn_spread:
        if g < drawn:
            rewards[g * G] += 1.0                 # a spread in group g
    lengths = [3] * (drawn * G)
    rollout = _rollout(lengths)
    pixels = np.arange(drawn, dtype=np.float32)[:, None, None] * np.ones((drawn, 2, 3), np.float32)
    grid = np.arange(drawn, dtype=np.int32)[:, None, None] * np.ones((drawn, 1, 3), np.int32)
    cfg = grpo.GRPOConfig(num_samples=G, dynamic_sampling=True, oversample=2, scale_rewards="batch")
    fn = jax.jit(lambda r, px, gr, rew, w: grpo.learner_batch(r, px, gr, rew, w, cfg, keep, STOP))
    batch, adv, stats = fn(rollout, jnp.asarray(pixels), jnp.asarray(grid), jnp.asarray(rewards),
                           jnp.ones(drawn * G))
    qualifying = [g for g in sorted(drawn_spread) if g < drawn]
    kept_groups = qualifying[:keep]
    index = [int(x) for x in np.asarray(batch["pixel_values"])[:, 0, 0]]
    assert index[:len(kept_groups)] == kept_groups and len(index) == keep
    assert np.asarray(batch["image_grid_thw"])[:, 0, 0].tolist() == index
    rows = np.concatenate([np.arange(g * G, g * G + G) for g in index])
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), np.asarray(rollout.tokens)[rows])
    weight = np.repeat([1.0 if i < len(kept_groups) else 0.0 for i in range(keep)], G)
    np.testing.assert_array_equal(np.asarray(batch["row_weight"]), weight)
    np.testing.assert_allclose(np.asarray(adv), ref_advantages(rewards[rows], weight, "batch", 1), rtol=1e-5,
                               atol=1e-6)
    assert int(stats["dynamic_sampling/qualified_groups"]) == len(qualifying)
    assert int(stats["dynamic_sampling/padding_groups"]) == keep - len(kept_groups)
    assert float(stats["dynamic_sampling/kept_fraction"]) == pytest.approx(len(kept_groups) / drawn)


# ---- config checks ---------------------------------------------------------------------------------------------
def test_every_impossible_grpo_setting_is_one_line():
    config = grpo.default_config()
    config.grpo.loss_aggregation, config.grpo.importance_sampling = "sum", "word"
    config.grpo.scale_rewards, config.grpo.overlong = "max", "soft_penalty"
    config.grpo.overlong_buffer, config.grpo.oversample, config.grpo.inner_iterations = 4096, 0, 0
    config.grpo.epsilon_low, config.grpo.num_samples = 1.0, 1
    lines = grpo.config_problems(config)
    assert lines == [
        "config.grpo.loss_aggregation='sum': must be one of sequence_mean, token_mean, sequence_sum_constant",
        "config.grpo.importance_sampling='word': must be one of token, sequence",
        "config.grpo.scale_rewards='max': must be one of group, batch, none",
        "config.grpo.num_samples=1: GRPO needs at least 2 samples per prompt for a group baseline",
        "config.grpo.inner_iterations=0: must be at least 1 (optimizer updates per rollout)",
        "config.grpo.oversample=0: must be at least 1 (prompts drawn per step, times the batch)",
        "config.grpo.epsilon_low=1.0: must be in [0, 1) (the ratio is clipped at 1 - epsilon_low)",
        "config.grpo.overlong_buffer=4096: soft_penalty needs 1 <= overlong_buffer <= sampling.max_new_tokens "
        "(2048)"]
    assert grpo.config_problems(grpo.default_config()) == []
    with pytest.raises(ValueError, match="loss_aggregation"):
        grpo.GRPOConfig(loss_aggregation="sum")


def test_the_dapo_config_is_the_paper_recipe_with_dapos_changes():
    import importlib.util
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")

    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    for variant in ("", "v5p8", "8xh100"):
        paper, dapo = load("grpo_qwen2_5_vl_3b").get_config(variant), load("grpo_dapo_qwen2_5_vl_3b").get_config(
            variant)
        changed = {k for k in paper.grpo if paper.grpo[k] != dapo.grpo[k]}
        assert changed == {"epsilon_high", "dynamic_sampling", "oversample", "loss_aggregation", "overlong",
                           "overlong_buffer", "beta"}
        assert (dapo.grpo.epsilon_high, dapo.grpo.loss_aggregation, dapo.grpo.overlong) == (0.28, "token_mean",
                                                                                           "soft_penalty")
        for section in ("model", "data", "mesh", "sampling", "optim", "train", "rewards"):
            assert paper[section].to_dict() == dapo[section].to_dict(), section
        assert grpo.config_problems(dapo) == [] and "dapo" in dapo.workdir
