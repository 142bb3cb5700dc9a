"""Applying several degradations in physical order, each with its own derived seed."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from robust_r1_jax.degrade import registry

_STAGE_RANK = {stage: rank for rank, stage in enumerate(registry.PHYSICAL_ORDER)}
_NAME_RANK = {name: rank for rank, name in enumerate(registry.NAMES)}


def physical_key(name: str) -> tuple[int, int]:
    """Sort key: stage in physical order, then the SPEC's order within the stage."""
    return _STAGE_RANK[registry.BY_NAME[name].stage], _NAME_RANK[name]


def step_seed(seed: int, name: str) -> int:
    """Seed for one degradation of a composition, derived from the composition seed and the name.

    Keyed by name, not position, so a type's randomness does not depend on which others run.
    """
    return int(np.random.SeedSequence([seed, _NAME_RANK[name]]).generate_state(1, np.uint64)[0])


def compose(image: np.ndarray, steps: Iterable[Sequence[object]], seed: int
            ) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Apply ``[(name, intensity), ...]`` in physical order (environment, capture, transmission,
    postprocessing) whatever the input order; returns (image, the steps in the order applied).

    Names must be distinct: one type cannot be applied twice to one image.
    """
    registry.check_image(image)
    seed = registry.check_seed(seed)
    checked: list[tuple[str, float]] = []
    for step in steps:
        if len(step) != 2:
            raise ValueError(f"each step must be (name, intensity), got {step!r}")
        name, intensity = step
        registry.check_name(name)
        checked.append((name, registry.check_intensity(intensity, name)))
    names = [name for name, _ in checked]
    if len(set(names)) != len(names):
        raise ValueError(f"degradation names must be distinct, got {names}")
    ordered = sorted(checked, key=lambda step: physical_key(step[0]))
    out = image
    for name, intensity in ordered:
        out = registry.apply(out, name, intensity, step_seed(seed, name))
    if out is image:
        out = image.copy()
    return out, ordered
