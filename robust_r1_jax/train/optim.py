"""Optimizer, learning-rate schedule and parameter freezing, all from config."""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-5
    warmup_steps: int = 0
    total_steps: int = 1000
    min_lr_ratio: float = 0.0       # cosine decays to learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0          # <= 0 disables clipping
    updates_per_step: int = 1       # optimizer updates per training step (GRPO's inner_iterations, μ)


def schedule(cfg: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to ``min_lr_ratio`` of the peak at ``total_steps``.

    ``warmup_steps`` and ``total_steps`` are training steps, as the user configures them; optax counts optimizer
    updates, so both are multiplied by ``updates_per_step``: update u of a run sees the rate the user's schedule
    gives at step u / updates_per_step (the first update of step s exactly the configured value at s). Counting
    steps instead would let a GRPO run with μ = 2 reach the end of its schedule halfway through.
    """
    if cfg.updates_per_step < 1:
        raise ValueError(f"updates_per_step must be at least 1, got {cfg.updates_per_step}")
    warmup = cfg.warmup_steps * cfg.updates_per_step
    decay_steps = max(cfg.total_steps * cfg.updates_per_step, warmup + 1)
    end = cfg.learning_rate * cfg.min_lr_ratio
    if warmup == 0:
        return optax.cosine_decay_schedule(cfg.learning_rate, decay_steps, alpha=cfg.min_lr_ratio)
    return optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, decay_steps, end_value=end)


def optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW (fp32 moments, as the master weights) behind global-norm clipping."""
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
    parts.append(optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return optax.chain(*parts)


def path_string(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def frozen_filter(patterns: Sequence[str]):
    """An nnx filter that picks the parameters whose dotted path matches any regex in ``patterns``.

    The paper freezes the vision tower and its merger: ``("^visual\\.",)``.
    """
    compiled = [re.compile(p) for p in patterns]

    def is_frozen(path, value) -> bool:
        return isinstance(value, nnx.Param) and any(c.search(path_string(path)) for c in compiled)
    return is_frozen
