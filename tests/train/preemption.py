"""Tiny SFT / GRPO configs shared by a test and the child process it signals, and the signalling itself."""
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def sft_config(data: dict, workdir: str, steps: int):
    from robust_r1_jax.train import sft
    c = sft.default_config()
    c.workdir = workdir
    c.data.dataset_dir, c.data.tokenizer = data["dataset_dir"], data["tokenizer"]
    c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 4, 384, 16
    c.optim.learning_rate, c.optim.total_steps = 1e-3, 8
    c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, 3, 1
    return c


def grpo_config(data: dict, workdir: str, steps: int):
    from robust_r1_jax.rl import grpo
    c = grpo.default_config()
    c.workdir = workdir
    c.data.dataset_dir, c.data.tokenizer = data["dataset_dir"], data["tokenizer"]
    c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 2, 256, 16
    c.grpo.num_samples, c.sampling.max_new_tokens = 3, 16
    c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, 3, 1
    c.train.freeze = ()
    c.optim.learning_rate, c.optim.total_steps = 1e-3, 8
    return c


CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import preemption
from robust_r1_jax import main
args = json.loads({args!r})
main.run_mode(getattr(preemption, args["kind"] + "_config")(args["data"], args["workdir"], args["steps"]))
"""


def run_until_signal(kind: str, data: dict, workdir: str, steps: int, signum=signal.SIGTERM, after_step=1,
                     timeout=600) -> subprocess.CompletedProcess:
    """Runs ``main.run_mode`` on the ``kind`` config in a fresh process and sends it ``signum`` once the step
    ``after_step`` is in its metrics.jsonl; returns the finished process (stdout, stderr, returncode)."""
    args = json.dumps(dict(kind=kind, data=data, workdir=workdir, steps=steps))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(here=HERE, args=args)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "logs", "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        if os.path.exists(metrics) and any(json.loads(line)["step"] >= after_step for line in open(metrics)
                                           if line.endswith("\n")):
            child.send_signal(signum)
            break
        time.sleep(0.05)
    out, err = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)
