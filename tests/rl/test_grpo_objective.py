"""The GRPO loss, its gradient and the group advantages against a float64 NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_r1_jax.rl import grpo


def numpy_loss(logp, old, ref, adv, mask, weight, eps_low, eps_high, beta, aggregation):
    mask = mask * weight[:, None]
    ratio = np.exp(logp - old)
    policy = -np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv[:, None])
    kl = np.exp(ref - logp) - (ref - logp) - 1
    per = policy + beta * kl
    if aggregation == "token_mean":
        return (per * mask).sum() / mask.sum()
    rows = mask.sum(1) > 0
    return ((per * mask).sum(1)[rows] / mask.sum(1)[rows]).mean()


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


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean"])
def test_loss_and_gradient_match_float64_reference(aggregation):
    logp, old, ref, adv, mask, weight = _inputs()
    cfg = grpo.GRPOConfig(epsilon_low=0.2, epsilon_high=0.28, beta=0.04, loss_aggregation=aggregation)
    args = (cfg.epsilon_low, cfg.epsilon_high, cfg.beta, aggregation)
    want = numpy_loss(logp, old, ref, adv, mask, weight, *args)
    f = lambda lp: grpo.grpo_objective(lp, jnp.asarray(old, jnp.float32), jnp.asarray(ref, jnp.float32),
                                       jnp.asarray(adv, jnp.float32), jnp.asarray(mask), jnp.asarray(weight),
                                       cfg)[0]
    got, grad = jax.value_and_grad(f)(jnp.asarray(logp, jnp.float32))
    assert abs(float(got) - want) < 1e-5 * max(1.0, abs(want))
    # central differences in float64 (inputs avoid the clip kinks by more than h)
    h = 1e-6
    num = np.zeros_like(logp)
    for idx in np.ndindex(logp.shape):
        up, down = logp.copy(), logp.copy()
        up[idx] += h
        down[idx] -= h
        num[idx] = (numpy_loss(up, old, ref, adv, mask, weight, *args)
                    - numpy_loss(down, old, ref, adv, mask, weight, *args)) / (2 * h)
    np.testing.assert_allclose(np.asarray(grad), num, atol=2e-6, rtol=1e-3)
    assert np.all(np.asarray(grad)[mask == 0] == 0) and np.all(np.asarray(grad)[-1] == 0)


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
