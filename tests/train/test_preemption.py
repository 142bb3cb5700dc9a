"""A real SIGTERM to a training process mid-run: it saves the step it finished, exits 143 with a message, and the
resumed run equals the uninterrupted one bit for bit (losses, rewards and final weights)."""
import os
import re
import signal
import sys

import jax
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
import preemption  # noqa: E402
import sft_data  # noqa: E402

from robust_r1_jax.model import orbax_io  # noqa: E402
from robust_r1_jax.train import metrics as mx  # noqa: E402

STEPS = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_data.build(str(tmp_path_factory.mktemp("preemptdata")), num_train=16, vocab_size=1024)


def _weights(model_dir):
    return jax.tree.leaves(nnx.state(orbax_io.restore(model_dir), nnx.Param))


def _stop_resume_and_compare(kind, data, tmp_path, keys):
    from robust_r1_jax.rl import grpo
    from robust_r1_jax.train import sft
    run = dict(sft=sft.run, grpo=grpo.run)[kind]
    config = getattr(preemption, f"{kind}_config")
    split = str(tmp_path / "split")
    stopped = preemption.run_until_signal(kind, data, split, STEPS)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    message = re.search(rf"error: {kind}: stopped by SIGTERM after step (\d+) of {STEPS}; newest checkpoint: "
                        rf"step (\d+) in {re.escape(split)}/checkpoints; run the same command to resume",
                        stopped.stderr)
    assert message, stopped.stderr[-3000:]
    assert message.group(1) == message.group(2) and int(message.group(1)) < STEPS  # the finished step was saved
    assert "Traceback" not in stopped.stderr
    resumed = run(config(data, split, STEPS))
    assert resumed["start_step"] == int(message.group(1))
    full = run(config(data, str(tmp_path / "full"), STEPS))
    rows = {name: mx.read_jsonl(os.path.join(path, "logs", "metrics.jsonl"))
            for name, path in (("split", split), ("full", str(tmp_path / "full")))}
    assert [r["step"] for r in rows["split"]] == list(range(1, STEPS + 1))  # no step twice
    for key in keys:
        assert [r[key] for r in rows["split"]] == [r[key] for r in rows["full"]], key
    for a, b in zip(_weights(resumed["model_dir"]), _weights(full["model_dir"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_sigterm_mid_sft_resumes_bit_exact(data, tmp_path):
    _stop_resume_and_compare("sft", data, tmp_path, ("loss", "grad_norm"))


@pytest.mark.slow
def test_sigterm_mid_grpo_resumes_bit_exact(data, tmp_path):
    _stop_resume_and_compare("grpo", data, tmp_path, ("loss", "reward/total", "kl", "completion_length"))
