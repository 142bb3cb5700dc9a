"""The run lifecycle in process: SIGTERM / SIGINT stop with a checkpoint, divergence stops naming the last good
checkpoint, the config is checked before any heavy work, metrics survive resume and torn lines, curves are drawn."""
import json
import logging
import os
import signal
import sys
import time

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import sft_data  # noqa: E402

from robust_r1_jax.train import checkpoint as ckpt  # noqa: E402
from robust_r1_jax.train import curves, sft, stops, validate  # noqa: E402
from robust_r1_jax.train import metrics as mx  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_data.build(str(tmp_path_factory.mktemp("lifedata")), num_train=16, vocab_size=1024)


def _config(data, workdir, steps, **train):
    return sft_data.tiny_sft_config(data, workdir, steps, **{"checkpoint_every": 100, **train})


class UnhandledSignal(Exception):
    pass


@pytest.fixture
def signal_guard():
    """Handlers that fail the test where the run leaves SIGTERM / SIGINT to the process (which would end pytest)."""
    def unhandled(signum, frame):
        raise UnhandledSignal(signal.Signals(signum).name)
    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGINT)}
    yield unhandled
    for s, handler in previous.items():
        signal.signal(s, handler)


def _signal_after_step(monkeypatch, step, signum):
    """Sends the process a real ``signum`` once the metrics record of ``step`` is written (mid-run)."""
    write = mx.Writer.write

    def write_then_signal(self, done, scalars):
        write(self, done, scalars)
        if done == step:
            os.kill(os.getpid(), signum)
    monkeypatch.setattr(mx.Writer, "write", write_then_signal)


def test_a_signal_saves_the_current_step_and_stops(data, tmp_path, monkeypatch, signal_guard):
    signum = signal.SIGTERM
    _signal_after_step(monkeypatch, 2, signum)
    workdir = tmp_path / "run"
    with pytest.raises(stops.Preempted) as stopped:
        sft.run(_config(data, workdir, steps=6))
    assert str(stopped.value) == (f"sft: stopped by SIGTERM after step 2 of 6; newest checkpoint: step 2 in "
                                  f"{workdir / 'checkpoints'}; run the same command to resume")
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    manager = ckpt.Checkpointer(str(workdir / "checkpoints"))
    assert manager.manager.all_steps() == [2]  # checkpoint_every=100: only the signal's save
    manager.close()
    assert [r["step"] for r in mx.read_jsonl(str(workdir / "logs" / "metrics.jsonl"))] == [1, 2]
    assert (workdir / "logs" / curves.CURVES_NAME).is_file()
    assert not (workdir / "model").exists()
    assert signal.getsignal(signum) is signal_guard  # the process's handlers are back


def test_ctrl_c_is_a_stop_request_and_a_second_one_stops_at_once(signal_guard):
    with stops.StopSignals() as watch:
        assert watch.agreed() is None
        os.kill(os.getpid(), signal.SIGINT)
        assert watch.agreed() == signal.SIGINT  # the run goes on to the end of its step
        with pytest.raises(UnhandledSignal, match="SIGINT"):  # the second one reaches the process's own handler
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal_guard


def test_a_destructive_update_is_skipped_and_repeated_skips_stop_the_run(data, tmp_path, caplog):
    # warmup from 0: step 1's learning rate is 0 (a good step); from step 2 on it is 5e37, every update is
    # finite-gradient but destructive, so the guard skips it
    config = _config(data, tmp_path / "run", steps=10, checkpoint_every=1, keep=1, max_consecutive_skips=3)
    config.optim.learning_rate, config.optim.warmup_steps = 1e38, 2
    with caplog.at_level(logging.WARNING), pytest.raises(stops.Diverged) as stopped:
        sft.run(config)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert str(stopped.value) == (
        "sft: 3 consecutive updates skipped (steps 2-4: non-finite loss, gradient or update), "
        f"train.max_consecutive_skips=3; stopping without export. Last good checkpoint: step 1 in {checkpoints}")
    assert stopped.value.exit_code == 3
    skips = [r.getMessage() for r in caplog.records if "update skipped" in r.getMessage()]
    assert skips == [f"sft step {s}: non-finite loss, gradient or update, update skipped ({s - 1} in a row)"
                     for s in (2, 3, 4)]
    manager = ckpt.Checkpointer(str(checkpoints), keep=1)
    assert manager.manager.all_steps() == [1]  # skipped states were never saved, so rotation kept step 1
    manager.close()
    rows = mx.read_jsonl(str(tmp_path / "run" / "logs" / "metrics.jsonl"))
    assert [r["skipped"] for r in rows] == [0, 1, 1, 1]
    assert np.isfinite(rows[0]["update_norm"]) and not np.isfinite(rows[1]["update_norm"])
    assert not (tmp_path / "run" / "model").exists()  # no export of a diverged run


def test_config_problems_are_listed_before_any_model_is_built(data, tmp_path, monkeypatch):
    from robust_r1_jax.train import run as run_module
    monkeypatch.setattr(run_module, "load_processor", lambda config: pytest.fail("validation came too late"))
    config = _config(data, tmp_path / "run", steps=0)
    config.data.dataset_dir = str(tmp_path / "missing")
    config.train.grad_accum = 3
    config.data.prompt_style = "verbatim"
    with pytest.raises(validate.ConfigError) as error:
        sft.run(config)
    assert error.value.problems == [
        "config.train.steps=0: train at least 1 step (a run of 0 steps would export the untrained model)",
        f"config.data.dataset_dir={str(tmp_path / 'missing')!r} does not exist (build one with configs/synth.py)",
        "config.data.prompt_style='verbatim': expected 'project' or 'upstream'",
        "config.data.global_batch_size=4 is not divisible by config.train.grad_accum=3"]


def test_resume_drops_replayed_records_and_a_torn_last_line(tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    path = logdir / mx.METRICS_NAME
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    assert [r["step"] for r in mx.read_jsonl(str(path))] == [1, 2, 3, 4, 5]  # the torn line is absent
    writer = mx.Writer(str(logdir), resume_step=3, panels=curves.PANELS["sft"])
    writer.write(4, {"loss": 0.5})
    writer.close()
    assert [(r["step"], r["loss"]) for r in mx.read_jsonl(str(path))] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        mx.read_jsonl(str(path))


def test_tensorboard_reads_the_resumed_run_without_replayed_steps(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator
    for steps, resume in ((range(1, 6), 0), (range(4, 7), 3)):  # a run killed after step 5, resumed from 3
        writer = mx.Writer(str(tmp_path), resume_step=resume)
        for s in steps:
            writer.write(s, {"loss": float(s + resume)})
        writer.close()
        time.sleep(1.1)  # event file names carry the second they were opened in
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 7.0),
                                                                  (5, 8.0), (6, 9.0)]


def test_curves_png_draws_every_panel(tmp_path):
    records = [{"step": s, "reward/total": 0.1 * s, "reward/accuracy": 0.05 * s, "loss": 1.0 / s, "kl": 0.01 * s,
                "skipped": float(s == 3)} for s in range(1, 8)]
    png = curves.curves_png(records, curves.PANELS["grpo"])
    path = tmp_path / "c.png"
    path.write_bytes(png)
    with Image.open(path) as image:
        assert image.size == (3 * 450, 320)
        assert np.asarray(image.convert("RGB")).std() > 10


def test_the_loader_gets_the_configs_prompt_style(monkeypatch):
    """data.prompt_style reaches the rows (issue 22): the pipeline config the loader is built with carries it."""
    import types

    from robust_r1_jax.data import pipeline, tfds_builder
    from robust_r1_jax.train import run as run_module
    seen = []
    monkeypatch.setattr(tfds_builder, "data_source", lambda path, split: [])
    monkeypatch.setattr(pipeline, "make_sft_loader", lambda source, processor, pcfg, **hosts: seen.append(pcfg))
    monkeypatch.setattr(pipeline, "make_rl_loader", lambda source, processor, pcfg, **hosts: seen.append(pcfg))
    config = sft.default_config()
    info = types.SimpleNamespace(process_index=0, process_count=1)
    run_module.make_loader(config, None, 4, info)
    config.data.prompt_style = "upstream"
    run_module.make_loader(config, None, 4, info, kind="rl")
    assert [p.prompt_style for p in seen] == ["project", "upstream"]
