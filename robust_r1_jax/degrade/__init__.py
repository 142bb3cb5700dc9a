"""The 16 image degradations of Robust-R1 (SPEC section 2) in NumPy and Pillow, and their samplers.

    from robust_r1_jax import degrade
    out = degrade.apply(image_uint8_hwc, "lens blur", 0.45, seed=0)
    out, applied = degrade.compose(image, [("noise", 0.3), ("darkness", 0.5)], seed=0)
"""
from robust_r1_jax.degrade.composition import compose, physical_key, step_seed
from robust_r1_jax.degrade.registry import (
    BY_NAME,
    MIN_SIDE,
    NAMES,
    PHYSICAL_ORDER,
    REGISTRY,
    STAGES,
    Degradation,
    apply,
)
from robust_r1_jax.degrade.samplers import (
    BENCHMARK_LEVELS,
    benchmark_image,
    benchmark_seed,
    sample_benchmark,
    sample_training,
)

__all__ = [
    "BENCHMARK_LEVELS",
    "BY_NAME",
    "Degradation",
    "MIN_SIDE",
    "NAMES",
    "PHYSICAL_ORDER",
    "REGISTRY",
    "STAGES",
    "apply",
    "benchmark_image",
    "benchmark_seed",
    "compose",
    "physical_key",
    "sample_benchmark",
    "sample_training",
    "step_seed",
]
