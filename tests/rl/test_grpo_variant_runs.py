"""One tiny GRPO run per family of variants (DAPO, Dr. GRPO, GSPO settings together): it finishes, logs the new
metrics, and a run stopped after 2 steps and resumed equals the uninterrupted one bit for bit."""
import logging
import os
import sys

import jax
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
import sft_data  # noqa: E402

from robust_r1_jax.model import orbax_io  # noqa: E402
from robust_r1_jax.rl import grpo  # noqa: E402
from robust_r1_jax.train import metrics as mx  # noqa: E402

VARIANTS = {
    # DAPO: token-level loss, clip-higher, dynamic sampling from twice the prompts, soft overlong punishment
    "dapo": dict(loss_aggregation="token_mean", epsilon_high=0.28, dynamic_sampling=True, oversample=2,
                 overlong="soft_penalty", overlong_buffer=8),
    # Dr. GRPO: token sums over the horizon, mean-centred rewards; truncated rows masked; two updates per rollout
    "dr_grpo": dict(loss_aggregation="sequence_sum_constant", scale_rewards="none", overlong="mask",
                    inner_iterations=2),
    # GSPO: the sequence-level ratio with its own epsilons, batch-scaled rewards, no KL
    "gspo": dict(importance_sampling="sequence", scale_rewards="batch", beta=0.0),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_data.build(str(tmp_path_factory.mktemp("rlvariants")), num_train=16, vocab_size=1024)


def _config(data, workdir, steps, variant):
    c = sft_data.tiny_grpo_config(data, workdir, steps)
    for key, value in VARIANTS[variant].items():
        c.grpo[key] = value
    return c


def _weights(model_dir):
    return jax.tree.leaves(nnx.state(orbax_io.restore(model_dir), nnx.Param))


@pytest.mark.slow  # three short runs (~80 s on an idle 2-core CPU, several minutes under load)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_runs_log_their_metrics_and_resume_bit_exact(variant, data, tmp_path, caplog):
    split, full = tmp_path / "split", tmp_path / "full"
    with caplog.at_level(logging.WARNING):
        first = grpo.run(_config(data, split, 2, variant))
    warnings = [m.getMessage() for m in caplog.records if "without a stop token" in m.getMessage()]
    resumed = grpo.run(_config(data, split, 3, variant))
    whole = grpo.run(_config(data, full, 3, variant))
    assert resumed["start_step"] == 2 and len(first["history"]) == 2
    rows = {name: mx.read_jsonl(os.path.join(path, "logs", "metrics.jsonl")) for name, path in
            (("split", split), ("full", full))}
    assert [r["step"] for r in rows["split"]] == [1, 2, 3]
    expected = {"completions/clipped_ratio", "loss", "kl", "reward/total"}
    if variant == "dapo":
        expected |= {"reward/overlong_penalty", "dynamic_sampling/kept_fraction",
                     "dynamic_sampling/qualified_groups", "dynamic_sampling/padding_groups"}
    untimed = lambda row: {k: v for k, v in row.items() if "time" not in k and "per_s" not in k}
    for a, b in zip(rows["split"], rows["full"]):
        assert expected <= set(a), expected - set(a)
        assert untimed(a) == untimed(b)
        assert 0.0 <= a["completions/clipped_ratio"] <= 1.0
    for a, b in zip(_weights(resumed["model_dir"]), _weights(whole["model_dir"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if variant == "dapo":
        for r in rows["full"]:   # 2 x 2 prompts drawn, 2 kept: the fraction of the drawn groups trained on
            used = 2 - r["dynamic_sampling/padding_groups"]
            assert r["dynamic_sampling/kept_fraction"] == pytest.approx(used / 4)
            assert r["reward/overlong_penalty"] <= 0.0
    # a random tiny model rarely writes a stop token in 16 tokens: the first run says so, once in its 2 steps
    clipped = [r["completions/clipped_ratio"] for r in rows["split"][:2]]
    assert len(warnings) == (1 if max(clipped) > 0.5 else 0)
