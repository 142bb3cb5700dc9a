"""Throughput accounting (tokens/s, model TFLOP/s, MFU) and metric sinks: TensorBoard event files and the
console. Only process 0 writes."""
from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np

# Dense bf16 peak FLOP/s per chip, for MFU. Unknown devices (CPUs) report no MFU.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def fetch(tree):
    """Host NumPy copies of (possibly multi-process) arrays: replicated ones are read locally, sharded ones are
    gathered from every process."""
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(one, tree)


def peak_flops_per_device(device=None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name.lower() in kind.lower():
            return flops
    return None


def step_flops(batch: dict, n_trained: int, n_vision: int, vision_trained: bool) -> float:
    """6·N·tokens for the trained language model, plus the vision tower's forward (2·N·patches), or its
    forward and backward when it is trained too."""
    tokens = float(np.sum(batch["attention_mask"]))
    patches = float(np.sum(np.prod(batch["image_grid_thw"], axis=-1))) if "image_grid_thw" in batch else 0.0
    vision = (6.0 if vision_trained else 2.0) * n_vision * patches
    return 6.0 * n_trained * tokens + vision


def token_accounting(real: float, padded: float, step_time: float) -> dict:
    """What a step computed on: ``tokens/real`` (non-padding tokens of the rows it trained on), ``tokens/padded``
    (row slots computed, padding included), ``tokens/padding_fraction`` and ``tokens/real_per_s``."""
    return {"tokens/real": real, "tokens/padded": padded,
            "tokens/padding_fraction": 1.0 - real / padded if padded else 0.0,
            "tokens/real_per_s": real / step_time if step_time > 0 else 0.0}


class Meter:
    """Wall time between ``tick`` calls, turned into rates."""

    def __init__(self):
        self.last = time.perf_counter()

    def tick(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def rates(step_time: float, tokens: float, flops: float, n_devices: int) -> dict:
    out = dict(step_time=step_time, tokens_per_s=tokens / step_time, tflops=flops / step_time / 1e12)
    peak = peak_flops_per_device()
    if peak:
        out["mfu"] = flops / step_time / (peak * n_devices)
    return out


METRICS_NAME = "metrics.jsonl"


class Writer:
    """TensorBoard scalars plus a JSONL copy (easy to read back in tests and reports) and the curves PNG.

    Opening it for a run resumed at ``resume_step`` first drops what a killed run wrote past that step (the JSONL
    keeps records ``step <= resume_step``, rewritten atomically; TensorBoard purges events from ``resume_step + 1``
    on), so replayed steps appear once."""

    def __init__(self, logdir: str, enabled: bool = True, resume_step: int = 0, panels=()):
        self.enabled = enabled and jax.process_index() == 0
        self.tb = None
        self.jsonl = None
        self.panels = panels
        self.records: list[dict] = []
        if self.enabled:
            if "://" in logdir:  # event files and the JSONL copy stay local; checkpoints go to the bucket
                import tempfile
                local = os.path.join(tempfile.gettempdir(), "robust_r1_jax_logs", logdir.split("://", 1)[1])
                logging.getLogger(__name__).warning("metrics for %s are written locally to %s", logdir, local)
                logdir = local
            os.makedirs(logdir, exist_ok=True)
            self.logdir = logdir
            path = os.path.join(logdir, METRICS_NAME)
            self.records = keep_records_until(path, resume_step)
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(logdir, purge_step=resume_step + 1)
            self.jsonl = open(path, "a")

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items() if np.ndim(v) == 0}
        for k, v in clean.items():
            self.tb.add_scalar(k, v, step)
        record = {"step": step, **clean}
        self.records.append(record)
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()

    def write_curves(self) -> str | None:
        """``logs/curves.png`` from every record so far (atomically); its path, or None where nothing is drawn."""
        if not self.enabled or not self.panels or not self.records:
            return None
        from robust_r1_jax import atomic
        from robust_r1_jax.train import curves
        path = os.path.join(self.logdir, curves.CURVES_NAME)
        atomic.write_bytes(path, curves.curves_png(self.records, self.panels))
        return path

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


def read_jsonl(path: str) -> list[dict]:
    """The records of a metrics JSONL file. A last line that does not parse (a write cut short by a kill or a full
    disk) is read as absent; any other unreadable line is an error naming file:line."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    records = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number - 1 == last:
                logging.getLogger(__name__).warning("%s:%d: torn last record ignored (%s)", path, number, e)
                break
            raise ValueError(f"{path}:{number}: not a JSON record: {e}") from e
    return records


def keep_records_until(path: str, step: int) -> list[dict]:
    """Rewrites ``path`` (atomically, only when something changes) to the records with ``step <= step`` and no
    torn last line; returns them."""
    if not os.path.exists(path):
        return []
    records = read_jsonl(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    with open(path, "rb") as f:
        whole = f.read()
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if len(kept) != len(records) or not whole.endswith(b"\n") and whole.strip():
        from robust_r1_jax import atomic
        atomic.write_text(path, text)
    return kept


def console_line(step: int, total: int, scalars: dict) -> str:
    keys = ("loss", "grad_norm", "learning_rate", "tokens_per_s", "step_time", "tflops", "mfu", "skipped")
    parts = [f"step {step}/{total}"]
    for k in keys:
        if k in scalars:
            v = float(scalars[k])
            parts.append(f"{k} {v:.4g}" if k != "skipped" else f"skipped {int(v)}")
    return " | ".join(parts)
