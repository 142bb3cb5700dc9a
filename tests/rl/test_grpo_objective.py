"""The GRPO loss's diagnostics and the group advantages (the loss and its gradient in every variant against a
float64 reference: test_grpo_variants.py)."""
import jax.numpy as jnp
import numpy as np
import pytest

from robust_r1_jax.rl import grpo


def _inputs(seed=0, n=12, t=9):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2, 0.5, (n, t))
    logp = old + rng.normal(0, 0.3, (n, t))      # ratios spread across both clip edges
    ref = old + rng.normal(0, 0.2, (n, t))
    adv = rng.normal(size=n)
    lengths = rng.integers(0, t + 1, n)
    lengths[0] = 0                                # an empty completion
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    weight = np.ones(n)
    weight[-1] = 0.0                              # a padding row of the pipeline
    return logp, old, ref, adv, mask, weight


def test_kl_is_zero_when_policy_equals_reference():
    logp, old, _, adv, mask, weight = _inputs(1)
    cfg = grpo.GRPOConfig(beta=1.0)
    _, metrics = grpo.grpo_objective(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(logp), jnp.asarray(adv),
                                     jnp.asarray(mask), jnp.asarray(weight), cfg)
    assert float(metrics["kl"]) == 0.0


def test_clip_fraction_counts_the_active_clipped_branch():
    cfg = grpo.GRPOConfig(epsilon_low=0.2, epsilon_high=0.2)
    old = jnp.zeros((4, 1))
    logp = jnp.log(jnp.array([[1.5], [1.5], [0.5], [1.0]]))  # ratio 1.5, 1.5, 0.5, 1.0
    adv = jnp.array([1.0, -1.0, -1.0, 1.0])                  # clipped: rows 0 and 2
    _, m = grpo.grpo_objective(logp, old, old, adv, jnp.ones((4, 1)), jnp.ones(4), cfg)
    assert float(m["clip_fraction"]) == pytest.approx(0.5)


@pytest.mark.parametrize("estimator,ddof", [("unbiased", 1), ("biased", 0)])
def test_group_advantages(estimator, ddof):
    rng = np.random.default_rng(2)
    r = rng.normal(size=(6, 8))
    r[3] = 0.5                                               # a group with equal rewards: all advantages 0
    got = np.asarray(grpo.group_advantages(jnp.asarray(r.reshape(-1), jnp.float32), 8, estimator)).reshape(6, 8)
    want = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=ddof, keepdims=True) + 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.mean(1), 0, atol=1e-5)
    assert np.all(got[3] == 0)


def test_bad_grpo_settings_are_refused():
    with pytest.raises(ValueError, match="loss_aggregation"):
        grpo.GRPOConfig(loss_aggregation="sum")
    with pytest.raises(ValueError, match="at least 2 samples"):
        grpo.GRPOConfig(num_samples=1)
