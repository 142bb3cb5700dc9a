"""Tiny SFT / GRPO configs shared by a test and the child process it signals, and the signalling itself."""
import json
import os
import signal
import subprocess
import sys
import time

import sft_data  # this folder is on sys.path wherever preemption is imported from

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def sft_config(data: dict, workdir: str, steps: int):
    return sft_data.tiny_sft_config(data, workdir, steps, total_steps=8, checkpoint_every=3)


def grpo_config(data: dict, workdir: str, steps: int):
    return sft_data.tiny_grpo_config(data, workdir, steps, total_steps=8, checkpoint_every=3)


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
