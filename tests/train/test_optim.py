"""The learning-rate schedule is the one the user configured, in training steps, whatever the number of optimizer
updates per step (GRPO's inner_iterations μ)."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_r1_jax.rl import grpo
from robust_r1_jax.train import optim, run

STEPS, WARMUP, PEAK = 8, 2, 1e-3


def configured_rate(step: float) -> float:
    """The user's schedule (linear warmup over WARMUP steps, cosine to 0 at STEPS) at a real-valued step."""
    if step < WARMUP:
        return PEAK * step / WARMUP
    return PEAK * 0.5 * (1 + np.cos(np.pi * min(step - WARMUP, STEPS - WARMUP) / (STEPS - WARMUP)))


def _grpo_config(mu: int):
    c = grpo.default_config()
    c.train.steps, c.grpo.inner_iterations = STEPS, mu
    c.optim.learning_rate, c.optim.warmup_steps, c.optim.total_steps = PEAK, WARMUP, 0
    c.optim.clip_norm, c.optim.weight_decay = 0.0, 0.0
    return c


@pytest.mark.parametrize("mu", [1, 2, 4])
def test_each_update_of_a_grpo_run_gets_the_configured_rate(mu):
    """Adam with a constant gradient moves each step by the rate (m / sqrt(v) = 1), so every update's size is the
    rate the optimizer applied: update u of step s = u // μ must see the configured rate at u / μ, and the last
    steps must still train (with the schedule sized in steps, μ = 2 reached rate 0 after half the run)."""
    ocfg = run.optim_config(_grpo_config(mu), STEPS)
    tx = optim.optimizer(ocfg)
    params = jnp.zeros(())
    opt_state = tx.init(params)
    applied = []
    for _ in range(STEPS * mu):
        updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
        applied.append(-float(updates))
    want = [configured_rate(u / mu) for u in range(STEPS * mu)]
    np.testing.assert_allclose(applied, want, rtol=1e-5, atol=1e-9)
    schedule = optim.schedule(ocfg)   # what the run logs as learning_rate (state.step counts updates)
    np.testing.assert_allclose([float(schedule(s * mu)) for s in range(STEPS)],
                               [configured_rate(s) for s in range(STEPS)], rtol=1e-6, atol=1e-12)
    last_step = applied[(STEPS - 1) * mu:]
    assert min(last_step) > 0.0


def test_sft_keeps_one_update_per_step():
    c = grpo.default_config()
    del c["grpo"]
    assert run.optim_config(c, 10).updates_per_step == 1


def test_updates_per_step_below_one_is_refused():
    with pytest.raises(ValueError, match="updates_per_step"):
        optim.schedule(optim.OptimConfig(updates_per_step=0))
