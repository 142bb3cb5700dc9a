"""The GRPO loop end to end on a tiny shapes dataset: metrics, no recompilation, checkpoint and resume."""
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
import sft_data  # noqa: E402

from robust_r1_jax import parallel  # noqa: E402
from robust_r1_jax.data import references  # noqa: E402
from robust_r1_jax.model import generate as gen  # noqa: E402
from robust_r1_jax.rl import grpo  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_data.build(str(tmp_path_factory.mktemp("rldata")), num_train=16, vocab_size=1024)


def _config(data, workdir, steps):
    return sft_data.tiny_grpo_config(data, workdir, steps)


@pytest.mark.slow   # ~45 s on 2 cores; tests/test_demo.py runs SFT and GRPO end to end in the default step
def test_grpo_steps_report_every_reward_and_resume(data, tmp_path):
    before = gen.compiled_cache_size()
    out = grpo.run(_config(data, tmp_path / "run", steps=2))
    assert gen.compiled_cache_size() - before == 1  # one rollout program served both steps
    hist = out["history"]
    assert len(hist) == 2
    for row in hist:
        for key in ("reward/total", "reward/accuracy", "reward/format", "reward/degradation", "reward/length",
                    "reward_std", "kl", "clip_fraction", "completion_length", "length_vs_intensity", "loss"):
            assert np.isfinite(row[key]), key
        assert 1 <= row["completion_length"] <= 16
        assert row["reward/format"] in (0.0, 1.0) or 0 <= row["reward/format"] <= 1
    assert hist[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    # the learner ran on its buckets (the 16-token horizon; the prompts' 128 or 256 of the 256 columns) and
    # counted 2 prompts x 3 samples of its columns, real ones apart
    for row in hist:
        prompt, completion = row["learner/prompt_bucket"], row["learner/completion_bucket"]
        assert completion == 16 and prompt in (128, 256) and (prompt, completion) in out["learner_shapes"]
        assert row["tokens/padded"] == 6 * (prompt + completion)
        assert 6 * row["completion_length"] < row["tokens/real"] < row["tokens/padded"]
        assert row["tokens/padding_fraction"] == pytest.approx(1 - row["tokens/real"] / row["tokens/padded"])
    resumed = grpo.run(_config(data, tmp_path / "run", steps=3))
    assert resumed["start_step"] == 2 and len(resumed["history"]) == 1
    from robust_r1_jax.model import orbax_io
    model = orbax_io.restore(resumed["model_dir"])
    assert np.isfinite(np.asarray(model(np.arange(8)[None]))).all()


class ByteTokenizer:
    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))


def test_references_repeat_the_pipeline_rows_for_each_completion():
    """The device repeat of the pipeline's per-example rows equals building the G-fold repeated chains at once."""
    chain = ("<TYPE>lens blur(0.47), noise(0.2)<TYPE_END>\n<INFLUENCE>i<INFLUENCE_END>\n<REASONING>r<REASONING_END>\n"
             "<CONCLUSION>c<CONCLUSION_END>\n<ANSWER> {}\n<ANSWER_END>")
    chains = [chain.format(i) for i in range(7)] + [chain.format(10).replace("lens blur(0.47), ", "")]
    sizes = dict(answer_bytes=16, max_names=16, name_bytes=32)
    rows = [references.as_row(references.chain_references(c, ByteTokenizer(), **sizes)) for c in chains]
    local = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    refs = grpo._references(parallel.make_mesh(), local, 3)
    expected = references.prepare_references([c for c in chains for _ in range(3)], ByteTokenizer(), **sizes)
    assert refs.batch_size == 24
    for name in expected.__dataclass_fields__:
        got, want = np.asarray(getattr(refs, name)), getattr(expected, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("reward", [0.1, 3.7, 1e6 + 0.3])
def test_a_group_of_equal_rewards_has_an_advantage_of_exactly_zero(reward):
    """float32's group mean of equal rewards is off by a rounding residue, which (std + 1e-4) would blow up."""
    rewards = jnp.asarray([reward] * 4 + [0.0, 1.0, 2.0, 3.0], jnp.float32)
    advantages = np.asarray(grpo.group_advantages(rewards, 4))
    assert (advantages[:4] == 0.0).all()
    spread = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(advantages[4:], (spread - 1.5) / (spread.std(ddof=1) + 1e-4), rtol=1e-6)


@pytest.mark.slow  # 33 s at a load of 3 on 2 cores; SFT's twin in tests/train holds Run's logic by default
def test_grpo_skips_destructive_updates_logs_them_and_stops(data, tmp_path, caplog):
    import logging
    from robust_r1_jax.train import stops
    config = _config(data, tmp_path / "run", steps=6)
    config.optim.learning_rate, config.optim.warmup_steps = 1e38, 2  # step 1 at lr 0, then 5e37
    config.train.max_consecutive_skips, config.train.keep = 2, 1
    with caplog.at_level(logging.WARNING), pytest.raises(stops.Diverged) as stopped:
        grpo.run(config)
    assert str(stopped.value) == (
        "grpo: 2 consecutive updates skipped (steps 2-3: non-finite loss, gradient or update), "
        f"train.max_consecutive_skips=2; stopping without export. Last good checkpoint: step 1 in "
        f"{tmp_path / 'run' / 'checkpoints'}")
    assert [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()] == [
        "grpo step 2: non-finite loss, gradient or update, update skipped (1 in a row)",
        "grpo step 3: non-finite loss, gradient or update, update skipped (2 in a row)"]
    assert (tmp_path / "run" / "logs" / "curves.png").is_file()
