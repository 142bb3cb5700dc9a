"""Two processes on this CPU machine train as one (issue 7's acceptance).

A pair of processes joined by ``jax.distributed`` over loopback (gloo collectives, 2 CPU devices each) runs three
SFT steps of the tiny preset and then three GRPO steps from the SFT model, on a (data 1, fsdp 4) mesh whose
parameter shards span both processes. One process with 4 CPU devices runs the same configs on the same global
batch. The pair must report the single process's losses and GRPO metrics, each member must have read its own
half of every global batch, both must have written checkpoint shards, and the pair's checkpoints must restore
(weights) and resume (weights, optimizer, step and data position) in one process.

Every run is a real ``sft.run`` / ``grpo.run`` in a subprocess with a bounded time-out. The rows each process
consumed are replayed with the runs' own loader function (``train.run.make_loader``) and the same process index/count.
"""
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))
import sft_data  # noqa: E402

STEPS = 3
GLOBAL_BATCH = 4          # prompts (GRPO) or sequences (SFT) per step over all processes
DEVICES_PER_PROCESS = 2
RUN_TIMEOUT_S = 1200      # the whole three-process launch, on a busy 2-core machine
DIVISIBILITY_TIMEOUT_S = 180


def configure(module, spec, stage, steps, init_from=""):
    """The config every process of these tests uses (its source is sent to the workers verbatim).

    The tiny recipe of tests/train/test_sft_run.py; GRPO samples 48 tokens, G = 4, so completions stop at
    different lengths and group advantages and gradients are real. (With equal rewards in every group the
    gradient is only rounding noise, which Adam would magnify into diverging runs.)
    """
    import os
    from robust_r1_jax.rl import grpo
    c = module.default_config()
    c.workdir = os.path.join(spec["workdir"], stage)
    c.model.init_from = init_from
    c.data.dataset_dir, c.data.tokenizer = spec["dataset_dir"], spec["tokenizer"]
    c.data.global_batch_size = spec["global_batch"]
    c.data.seq_len, c.data.patch_bucket = 384, 16
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # parameter shards span both processes
    c.optim.learning_rate, c.optim.total_steps = 1e-3, 5
    c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, steps, 1
    c.train.freeze = ()
    if module is grpo:
        c.grpo.num_samples, c.sampling.max_new_tokens = 4, 48
    if spec.get("coordinator"):
        d = c.distributed
        d.coordinator_address, d.num_processes, d.process_id = spec["coordinator"], 2, spec["process_id"]
        d.timeout_s = 60
    return c


CONFIGURE = textwrap.dedent(inspect.getsource(configure))

WORKER = textwrap.dedent("""
    import json, os, shutil, sys, time
    spec = json.loads(sys.argv[1])
    import jax
    jax.config.update("jax_num_cpu_devices", spec["devices"])  # before the backend starts
    import numpy as np
    from robust_r1_jax import distributed
    from robust_r1_jax.rl import grpo
    from robust_r1_jax.train import run as train_run, sft
""") + CONFIGURE + textwrap.dedent("""
    def consumed(module, config):
        # The rows the run read: its own loader function, replayed from the start with this process's layout.
        info = train_run.init_distributed(config)  # already joined: only reports index and count
        per_host = distributed.check_divisible(config.data.global_batch_size, info.process_count)
        kind = "sft" if module is sft else "rl"
        with train_run.make_loader(config, train_run.load_processor(config), per_host, info, kind=kind) as loader:
            return [np.asarray(next(loader)["example_index"]).tolist() for _ in range(config.train.steps)]

    times = {}
    start = time.monotonic()
    sft_config = configure(sft, spec, "sft", spec["steps"])
    sft_out = sft.run(sft_config)
    times["sft"] = time.monotonic() - start
    rl_config = configure(grpo, spec, "rl", spec["steps"], init_from=sft_out["model_dir"])
    rl_out = grpo.run(rl_config)
    times["grpo"] = time.monotonic() - start - times["sft"]
    result = dict(process_index=jax.process_index(), process_count=jax.process_count(),
                  devices=jax.device_count(), local_devices=jax.local_device_count(),
                  sft_losses=sft_out["losses"], grpo_history=rl_out["history"],
                  sft_rows=consumed(sft, sft_config), grpo_rows=consumed(grpo, rl_config))
    if spec.get("resume_steps"):
        # One more SFT step from this run's own checkpoint: the reference for resuming the pair's checkpoint.
        shutil.copytree(sft_config.workdir, os.path.join(spec["workdir"], "sft_resumed"))
        resumed = sft.run(configure(sft, spec, "sft_resumed", spec["resume_steps"]))
        result["resumed"] = dict(start_step=resumed["start_step"], losses=resumed["losses"])
    result["times"] = times
    tmp = spec["out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, spec["out"])
""")


def python_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_", "TPU_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def free_address() -> str:
    from robust_r1_jax.distributed import free_tcp_port
    return f"127.0.0.1:{free_tcp_port()}"


def run_together(commands: dict[str, list[str]], logdir: Path, timeout_s: float) -> None:
    """Start every command at once and wait for all; on a failure or the time-out, stop all and say which."""
    logdir.mkdir(parents=True, exist_ok=True)
    procs, logs = {}, {}
    try:
        for name, argv in commands.items():
            # Logs go to files: a full stderr pipe would block a process inside a collective.
            logs[name] = open(logdir / f"{name}.log", "w")
            procs[name] = subprocess.Popen(argv, stdout=logs[name], stderr=subprocess.STDOUT, text=True,
                                           env=python_env(), cwd=REPO)
        deadline = time.monotonic() + timeout_s
        while any(p.poll() is None for p in procs.values()):
            failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        for log in logs.values():
            log.close()
    bad = {n: p.returncode for n, p in procs.items() if p.returncode != 0}
    if bad:
        tails = "\n".join(f"--- {n} (exit {code}):\n{(logdir / f'{n}.log').read_text()[-3000:]}"
                          for n, code in bad.items())
        pytest.fail(f"processes failed or ran past {timeout_s:.0f}s: {bad}\n{tails}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_data.build(str(tmp_path_factory.mktemp("mpdata")), num_train=16, vocab_size=1024)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The pair (processes 0 and 1) and the single reference, launched together."""
    root = tmp_path_factory.mktemp("mp")
    address = free_address()
    common = dict(dataset_dir=data["dataset_dir"], tokenizer=data["tokenizer"], steps=STEPS,
                  global_batch=GLOBAL_BATCH)
    specs = {f"pair{pid}": dict(common, devices=DEVICES_PER_PROCESS, workdir=str(root / "pair"),
                                coordinator=address, process_id=pid, out=str(root / f"pair{pid}.json"))
             for pid in range(2)}
    specs["single"] = dict(common, devices=2 * DEVICES_PER_PROCESS, workdir=str(root / "single"),
                           resume_steps=STEPS + 1, out=str(root / "single.json"))
    start = time.monotonic()
    run_together({n: [sys.executable, "-c", WORKER, json.dumps(s)] for n, s in specs.items()}, root / "logs",
                 RUN_TIMEOUT_S)
    results = {n: json.loads(Path(s["out"]).read_text()) for n, s in specs.items()}
    results["root"], results["wall_s"] = root, time.monotonic() - start
    return results


@pytest.mark.slow
def test_the_pair_spans_both_processes(runs):
    for pid in range(2):
        r = runs[f"pair{pid}"]
        assert (r["process_index"], r["process_count"]) == (pid, 2)
        assert (r["devices"], r["local_devices"]) == (4, 2)
    assert (runs["single"]["process_count"], runs["single"]["devices"]) == (1, 4)


@pytest.mark.slow
def test_sft_losses_equal_the_single_process_run(runs):
    single = runs["single"]["sft_losses"]
    assert len(single) == STEPS and all(np.isfinite(single))
    assert single[-1] < single[0]  # it trains
    for pid in range(2):
        np.testing.assert_allclose(runs[f"pair{pid}"]["sft_losses"], single, rtol=1e-5)


GRPO_EXACT = ("reward/total", "reward/accuracy", "reward/format", "reward/degradation", "reward/length",
              "reward_std", "completion_length")
GRPO_CLOSE = ("loss", "policy_loss", "kl", "grad_norm", "clip_fraction", "learning_rate")


@pytest.mark.slow
def test_grpo_metrics_equal_the_single_process_run(runs):
    single = runs["single"]["grpo_history"]
    assert len(single) == STEPS
    # Not vacuous: completions of one prompt differ, so advantages and gradients are real and the policy moves.
    assert all(row["reward_std"] > 0 and row["grad_norm"] > 1e-3 for row in single)
    assert single[-1]["kl"] > 0 and single[-1]["loss"] != 0
    for pid in range(2):
        pair = runs[f"pair{pid}"]["grpo_history"]
        assert len(pair) == STEPS
        for step, (mine, ref) in enumerate(zip(pair, single), start=1):
            for key in GRPO_EXACT:  # same sampled tokens -> same rewards and lengths
                np.testing.assert_allclose(mine[key], ref[key], rtol=1e-6, err_msg=f"step {step} {key}")
            for key in GRPO_CLOSE:
                # the on-policy losses are means of advantages that sum to 0: float32 leaves ~1e-7 of roundoff
                atol = 1e-6 if key in ("loss", "policy_loss") else 1e-8
                np.testing.assert_allclose(mine[key], ref[key], rtol=1e-4, atol=atol, err_msg=f"step {step} {key}")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft_rows", "grpo_rows"])
def test_each_process_reads_a_disjoint_shard(runs, stage):
    first, second, single = runs["pair0"][stage], runs["pair1"][stage], runs["single"][stage]
    assert len(single) == STEPS
    for step in range(STEPS):
        assert len(first[step]) == len(second[step]) == GLOBAL_BATCH // 2
        assert not set(first[step]) & set(second[step])
        # process 0 holds the first half of the single process's global batch, process 1 the second
        assert first[step] + second[step] == single[step]
    consumed = [i for batch in first + second for i in batch]
    assert len(set(consumed)) == len(consumed) == STEPS * GLOBAL_BATCH  # 12 of 16 examples: one epoch, no repeats


@pytest.mark.slow
def test_both_processes_write_checkpoint_shards_and_only_process_0_writes_logs(runs):
    root = runs["root"]
    for stage in ("sft", "rl"):
        state = root / "pair" / stage / "checkpoints" / str(STEPS) / "state"
        for pid in range(2):
            shard_files = [p for p in (state / f"ocdbt.process_{pid}").rglob("*") if p.is_file()]
            assert shard_files, f"process {pid} wrote nothing into {state}"
        logs = root / "pair" / stage / "logs"
        assert len([f for f in os.listdir(logs) if f.startswith("events.out.tfevents")]) == 1
        rows = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    losses = [json.loads(line)["loss"] for line in (root / "pair" / "sft" / "logs" / "metrics.jsonl").open()]
    np.testing.assert_allclose(losses, runs["pair0"]["sft_losses"], rtol=1e-6)


@pytest.mark.slow
def test_the_pairs_checkpoints_restore_in_one_process(runs):
    from robust_r1_jax.model import orbax_io
    from robust_r1_jax.model import loading
    root = runs["root"]
    ids = np.arange(1, 41)[None]
    logits = {}
    for who in ("pair", "single"):
        for stage in ("sft", "rl"):
            model = loading.load_model(str(root / who / stage / "checkpoints"), step=STEPS)
            logits[who, stage] = np.asarray(model(ids))
    for stage in ("sft", "rl"):
        np.testing.assert_allclose(logits["pair", stage], logits["single", stage], rtol=1e-4, atol=1e-4)
        exported = orbax_io.restore(str(root / "pair" / stage / "model"))
        np.testing.assert_array_equal(np.asarray(exported(ids)), logits["pair", stage])
    # GRPO moved the weights, so the comparison above can tell the two stages apart.
    assert np.max(np.abs(logits["pair", "rl"] - logits["pair", "sft"])) > 1e-3


@pytest.mark.slow
def test_the_pairs_sft_checkpoint_resumes_in_one_process(runs, data, tmp_path):
    """Weights, optimizer, step and data position written by two processes continue in one (1 device here)."""
    from robust_r1_jax.train import sft
    reference = runs["single"]["resumed"]  # the single run resumed from its own checkpoint
    assert reference["start_step"] == STEPS and len(reference["losses"]) == 1
    shutil.copytree(runs["root"] / "pair" / "sft", tmp_path / "sft")
    spec = dict(workdir=str(tmp_path), dataset_dir=data["dataset_dir"], tokenizer=data["tokenizer"],
                global_batch=GLOBAL_BATCH)
    resumed = sft.run(configure(sft, spec, "sft", STEPS + 1))
    assert resumed["start_step"] == STEPS
    np.testing.assert_allclose(resumed["losses"], reference["losses"], rtol=1e-5)


# --------------------------------------------------------------------------------------------- bad input

INDIVISIBLE = textwrap.dedent("""
    import json, os, sys
    spec = json.loads(sys.argv[1])
    from robust_r1_jax.rl import grpo
    from robust_r1_jax.train import sft
""") + CONFIGURE + textwrap.dedent("""
    errors = {}
    for name, module in (("sft", sft), ("grpo", grpo)):
        try:
            module.run(configure(module, spec, name, 1))
        except ValueError as error:
            errors[name] = str(error)
    with open(spec["out"] + ".tmp", "w") as f:
        json.dump(errors, f)
    os.replace(spec["out"] + ".tmp", spec["out"])
""")


def test_a_global_batch_two_processes_cannot_share_fails_before_any_step(tmp_path):
    address = free_address()
    specs = {f"p{pid}": dict(workdir=str(tmp_path / "run"), dataset_dir=str(tmp_path / "absent"),
                             tokenizer=str(tmp_path / "absent"), global_batch=3, coordinator=address,
                             process_id=pid, out=str(tmp_path / f"p{pid}.json")) for pid in range(2)}
    run_together({n: [sys.executable, "-c", INDIVISIBLE, json.dumps(s)] for n, s in specs.items()},
                 tmp_path / "logs", DIVISIBILITY_TIMEOUT_S)
    # the whole config is checked before any work (train/validate.py): every problem on its own line
    expected = "config.data.global_batch_size=3 is not divisible by the 2 processes"
    for name in specs:
        errors = json.loads((tmp_path / f"{name}.json").read_text())
        assert set(errors) == {"sft", "grpo"}
        for message in errors.values():
            assert message.startswith("invalid config:") and expected in message.splitlines()[-1]
    # before any step: no checkpoint, no log, no model (the dataset path does not even exist)
    for stage in ("sft", "grpo"):
        assert not (tmp_path / "run" / stage).exists() or os.listdir(tmp_path / "run" / stage) == []
