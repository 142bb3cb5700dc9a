"""What sft_step.py and rollout.py share: the card's ceilings through JAX (hf_baseline.py's method), the peer's
figure (measured in-process or read from hf_baseline.py's JSON lines), the commit, the machine's load, and the
atomic write of the result."""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp

from robust_r1_jax import atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ceilings(small: bool) -> dict:
    """bf16 matmul TFLOP/s (n x n x n) and device copy GB/s (read + write of ``x * 1.0001``), 20 reps each."""
    n, elems, reps = (256, 2 ** 22, 5) if small else (8192, 2 ** 30, 20)
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.bfloat16)
    b = jax.random.normal(k2, (n, n), jnp.bfloat16)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        c = f(a, b)
    c.block_until_ready()
    matmul = 2 * n ** 3 / ((time.perf_counter() - t) / reps)
    x = jax.random.normal(k1, (elems,), jnp.bfloat16)
    g = jax.jit(lambda x: x * 1.0001)
    g(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        y = g(x)
    y.block_until_ready()
    copy = 2 * x.nbytes / ((time.perf_counter() - t) / reps)
    del a, b, c, x, y
    return dict(matmul_tflops=matmul / 1e12, copy_gb_per_s=copy / 1e9, ceiling_sizes=dict(matmul_n=n,
                copy_bytes=2 * elems))


def read_peer(path: str, what: str) -> dict | None:
    """The last ``"what": what`` line of hf_baseline.py's (or peer.py's) output; None if it has none (the peer
    failed or ran out of time: ours is still reported)."""
    found = None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                row = json.loads(line)
                if row.get("what") == what:
                    found = row
    return None if found is None else dict(source=path, **found)


def commit() -> str:
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """Load average before/while measuring and the CPUs: the CPU figures mean little without it."""
    return dict(cpus=os.cpu_count(), loadavg_1_5_15=[round(x, 2) for x in os.getloadavg()])


def results_path(kind: str) -> str:
    """$BENCH_RESULTS_DIR (else benchmarks/results)/<date>-<device>-<kind>.json."""
    device = "".join(c if c.isalnum() or c in "._-" else "_" for c in jax.devices()[0].device_kind)
    folder = os.environ.get("BENCH_RESULTS_DIR") or os.path.join(ROOT, "benchmarks", "results")
    return os.path.join(folder, f"{datetime.date.today():%Y-%m-%d}-{device}-{kind}.json")


def finish(result: dict, out: str | None) -> None:
    """Adds the ratio, prints one JSON line, writes it (atomically) to ``out`` when given."""
    ours, peer = result.get("ours_tokens_per_s"), result.get("peer_tokens_per_s")
    result["ratio"] = ours / peer if ours and peer else None
    result.update(commit=commit(), machine=machine())
    print(json.dumps(result), flush=True)
    if out:
        atomic.write_text(out, json.dumps(result, indent=2) + "\n")
