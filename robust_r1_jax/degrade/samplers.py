"""Which degradations an image gets: the training sampler and the benchmark protocol (SPEC section 2)."""
from __future__ import annotations

import numbers

import numpy as np

from robust_r1_jax.degrade import composition, registry

# "25% / 50% / 100%" of the benchmarks are these intensities.
BENCHMARK_LEVELS: dict[str, float] = {"clean": 0.0, "25%": 0.23, "50%": 0.45, "100%": 0.9}

# Distinct keys so the type drawn for an image and the pixels' randomness are independent streams.
_TYPE_STREAM = 0x7479_7065  # "type"
_PIXEL_STREAM = 0x7069_786C  # "pixl"


def _generator(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(registry.check_seed(rng_or_seed))


def _check_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def sample_training(rng_or_seed: np.random.Generator | int, min_count: int = 1,
                    max_count: int = 4) -> list[tuple[str, float]]:
    """A random set of distinct types for one training image, in physical order.

    The count is uniform in [min_count, max_count]; each intensity is U[0, 1] rounded to two
    decimals (the precision chains carry).
    """
    low, high = _check_count(min_count, "min_count"), _check_count(max_count, "max_count")
    if not 1 <= low <= high <= len(registry.NAMES):
        raise ValueError(f"need 1 <= min_count <= max_count <= {len(registry.NAMES)}, "
                         f"got min_count={low}, max_count={high}")
    rng = _generator(rng_or_seed)
    count = int(rng.integers(low, high + 1))
    picks = rng.choice(len(registry.NAMES), size=count, replace=False)
    intensities = rng.uniform(0.0, 1.0, size=count)
    steps = [(registry.NAMES[int(i)], round(float(s), 2)) for i, s in zip(picks, intensities)]
    return sorted(steps, key=lambda step: composition.physical_key(step[0]))


def _check_index(index: object) -> int:
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or int(index) < 0:
        raise ValueError(f"image index must be a non-negative integer, got {index!r}")
    return int(index)


def sample_benchmark(index: int) -> str:
    """The one type an evaluation image gets: a stage with probability 1/4, then uniform within it."""
    rng = np.random.default_rng([_check_index(index), _TYPE_STREAM])
    stages = list(registry.STAGES)
    names = registry.STAGES[stages[int(rng.integers(len(stages)))]]
    return names[int(rng.integers(len(names)))]


def benchmark_seed(index: int) -> int:
    """Pixel seed of an evaluation image, the same at every level."""
    state = np.random.SeedSequence([_check_index(index), _PIXEL_STREAM]).generate_state(1, np.uint64)
    return int(state[0])


def benchmark_image(image: np.ndarray, index: int, level: str) -> np.ndarray:
    """The evaluation image ``index`` at ``level`` ("clean", "25%", "50%" or "100%").

    Every level uses the same type and seed, so the levels differ only in intensity; "clean"
    returns an unchanged copy.
    """
    if level not in BENCHMARK_LEVELS:
        raise ValueError(f"unknown benchmark level {level!r}; expected one of {list(BENCHMARK_LEVELS)}")
    pixels = registry.check_image(image)
    if level == "clean":
        _check_index(index)
        return pixels.copy()
    return registry.apply(pixels, sample_benchmark(index), BENCHMARK_LEVELS[level], benchmark_seed(index))
