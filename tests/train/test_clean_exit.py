"""An SFT run with grain worker processes killed by SIGKILL (what the out-of-memory killer sends): every worker is
gone within seconds and /dev/shm keeps none of the run's shared-memory blocks (data/worker_exit.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import sft_data  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHM = "/dev/shm"

CHILD = """
import json, sys
sys.path.insert(0, {here!r})
import sft_data
from robust_r1_jax import main
args = json.loads({args!r})
c = sft_data.tiny_sft_config(args["data"], args["workdir"], 200, total_steps=200, checkpoint_every=100)
c.data.worker_count = 2
main.run_mode(c)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sft_data.build(str(tmp_path_factory.mktemp("cleanexit")), num_train=16, vocab_size=1024)


def _shm_names() -> set:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def _mapped_shm_names() -> set:
    """/dev/shm names any live process has open or mapped (another test's blocks in flight, not leaks)."""
    names = set()
    for proc in psutil.process_iter():
        try:
            names |= {os.path.basename(m.path) for m in proc.memory_maps(grouped=True) if m.path.startswith(SHM)}
            names |= {os.path.basename(f.path) for f in proc.open_files() if f.path.startswith(SHM)}
        except (psutil.Error, OSError):
            continue
    return names


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfds and /dev/shm are Linux's")
def test_kill_9_of_an_sft_run_leaves_no_worker_and_no_shared_memory(data, tmp_path):
    before = _shm_names()
    workdir = str(tmp_path / "run")
    args = json.dumps(dict(data=data, workdir=workdir))
    log = open(tmp_path / "child.log", "w")
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(here=HERE, args=args)], cwd=ROOT,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    metrics = os.path.join(workdir, "logs", "metrics.jsonl")
    seen, descendants = set(), []
    try:
        deadline = time.monotonic() + 600
        while child.poll() is None and time.monotonic() < deadline:
            seen |= _shm_names() - before
            if os.path.exists(metrics) and any(json.loads(line)["step"] >= 2 for line in open(metrics)
                                               if line.endswith("\n")):
                break
            time.sleep(0.05)
        assert child.poll() is None, open(tmp_path / "child.log").read()[-3000:]
        descendants = psutil.Process(child.pid).children(recursive=True)
        workers = [p for p in descendants if "multiprocessing" in " ".join(p.cmdline())
                   and "resource_tracker" not in " ".join(p.cmdline())]
        assert len(workers) >= 2, [p.cmdline() for p in descendants]  # the run really has its 2 workers
        seen |= _shm_names() - before
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p.pid for p in descendants if _alive(p)], "orphaned worker processes"
        time.sleep(1.0)  # the resource tracker unlinks what was registered once its pipe reads end-of-file
        left = ((seen | _shm_names()) - before) & _shm_names()
        leaked = left - _mapped_shm_names()
        assert not leaked, f"{len(leaked)} shared-memory blocks of the run left in {SHM}"
    finally:
        if child.poll() is None:
            child.kill()
        # Only where the test failed: end the workers, and leave the resource tracker to unlink their blocks.
        for proc in descendants:
            try:
                if "resource_tracker" not in " ".join(proc.cmdline()):
                    proc.kill()
            except psutil.Error:
                pass
        log.close()
