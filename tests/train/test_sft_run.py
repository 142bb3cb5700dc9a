"""The SFT loop end to end on a small shapes dataset: resume equality, checkpoints, metrics and bad input."""
import json
import os
import stat
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import sft_data  # noqa: E402

from robust_r1_jax.model import loading  # noqa: E402
from robust_r1_jax.train import sft  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_data.build(str(tmp_path_factory.mktemp("sftdata")), num_train=16, vocab_size=1024)


def _config(data, workdir, steps=5, **train):
    return sft_data.tiny_sft_config(data, workdir, steps, **{"async_checkpoint": True, **train})


@pytest.mark.slow   # ~35 s on 2 cores; test_run_lifecycle's signal-save test stays in the default step
def test_kill_and_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    full = sft.run(_config(data, tmp_path / "full", steps=5))
    first = sft.run(_config(data, tmp_path / "split", steps=2))
    resumed = sft.run(_config(data, tmp_path / "split", steps=5))
    assert resumed["start_step"] == 2 and len(resumed["losses"]) == 3
    np.testing.assert_allclose(first["losses"], full["losses"][:2], rtol=1e-6)
    np.testing.assert_allclose(resumed["losses"], full["losses"][2:], rtol=1e-5)
    # metrics land in TensorBoard event files and a JSONL copy
    logs = os.listdir(tmp_path / "full" / "logs")
    assert any(f.startswith("events.out.tfevents") for f in logs)
    rows = [json.loads(line) for line in open(tmp_path / "full" / "logs" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["tokens_per_s"] > 0 and "learning_rate" in r and "grad_norm" in r for r in rows)
    # unpacked: one example per row (these 400-680-token examples are cut to 384 tokens: no padding)
    assert all(r["examples"] == 4 and r["tokens/padded"] == r["tokens/real"] == 4 * 384
               and r["tokens/padding_fraction"] == pytest.approx(1 - r["tokens/real"] / (4 * 384))
               for r in rows)
    with Image.open(tmp_path / "full" / "logs" / "curves.png") as curves:  # loss, gradient norm, learning rate
        assert curves.size == (3 * 450, 320)
    # the exported model and the training checkpoint hold the same weights
    assert loading.is_training_checkpoint(str(tmp_path / "full" / "checkpoints"))
    from robust_r1_jax.model import orbax_io
    exported = orbax_io.restore(full["model_dir"])
    from_ckpt = loading.load_model(str(tmp_path / "full" / "checkpoints"))
    ids = np.arange(20)[None]
    np.testing.assert_array_equal(np.asarray(exported(ids)), np.asarray(from_ckpt(ids)))


@pytest.mark.slow
def test_packed_run_trains_more_examples_per_step_on_the_same_rows(data, tmp_path):
    config = _config(data, tmp_path / "packed", steps=2)
    # rows of 1536 tokens: one 400-680-token example each would leave about 65% padding
    config.data.seq_len, config.data.packing, config.data.image_slots, config.data.patch_bucket = 1536, True, 4, 64
    result = sft.run(config)
    assert np.all(np.isfinite(result["losses"]))
    rows = [json.loads(line) for line in open(tmp_path / "packed" / "logs" / "metrics.jsonl")]
    assert all(r["examples"] >= 8 and r["tokens/padded"] == 4 * 1536 and r["tokens/padding_fraction"] < 0.3
               and r["tokens/real_per_s"] > 0 for r in rows), rows


def test_unwritable_workdir_fails_before_training(data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path below a file instead
            blocker = tmp_path / "file"
            blocker.write_text("x")
            locked = blocker / "workdir"
        with pytest.raises(PermissionError, match="is not writable"):
            sft.run(_config(data, locked, steps=1))
    finally:
        os.chmod(tmp_path / "locked", stat.S_IRWXU)


def test_checkpoint_of_an_incompatible_model_is_refused(data, tmp_path):
    sft.run(_config(data, tmp_path / "run", steps=1))
    other = _config(data, tmp_path / "run", steps=2)
    other.model.preset = "tiny"
    other.model.vocab_size = 2048
    with pytest.raises(ValueError, match="vocab_size: checkpoint 1024 != config 2048"):
        sft.run(other)
