"""The table of the 16 degradations and ``apply``, the checked entry point for one of them.

Names are spelled as they appear in chains (SPEC section 2, "name in chains"); ``NAMES`` keeps the
SPEC's order, which is also the within-stage order used when sorting into physical order.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

import numpy as np

from robust_r1_jax.degrade import capture, environment, meanshift, postprocessing, transmission

DegradationFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
MIN_SIDE = 8


@dataclasses.dataclass(frozen=True)
class Degradation:
    stage: str
    name: str
    fn: DegradationFn


REGISTRY: tuple[Degradation, ...] = (
    Degradation("capture", "lens blur", capture.lens_blur),
    Degradation("capture", "lens flare", capture.lens_flare),
    Degradation("capture", "motion blur", capture.motion_blur),
    Degradation("capture", "dirty lens", capture.dirty_lens),
    Degradation("capture", "saturation", capture.saturation),
    Degradation("transmission", "jpeg compression", transmission.jpeg_compression),
    Degradation("transmission", "block exchange", transmission.block_exchange),
    Degradation("transmission", "mean shift", meanshift.mean_shift),
    Degradation("transmission", "scan lines", transmission.scan_lines),
    Degradation("environment", "darkness", environment.darkness),
    Degradation("environment", "atmospheric turbulence", environment.atmospheric_turbulence),
    Degradation("environment", "noise", environment.noise),
    Degradation("environment", "color diffusion", environment.color_diffusion),
    Degradation("postprocessing", "sharpness change", postprocessing.sharpness_change),
    Degradation("postprocessing", "graffiti", postprocessing.graffiti),
    Degradation("postprocessing", "watermark damage", postprocessing.watermark_damage),
)

BY_NAME: dict[str, Degradation] = {d.name: d for d in REGISTRY}
NAMES: tuple[str, ...] = tuple(d.name for d in REGISTRY)
STAGES: dict[str, tuple[str, ...]] = {
    stage: tuple(d.name for d in REGISTRY if d.stage == stage)
    for stage in ("capture", "transmission", "environment", "postprocessing")
}
# The order light and data meet the degradations: scene, camera, channel, editing.
PHYSICAL_ORDER: tuple[str, ...] = ("environment", "capture", "transmission", "postprocessing")


def check_name(name: object) -> Degradation:
    if not isinstance(name, str) or name not in BY_NAME:
        raise ValueError(f"unknown degradation {name!r}; expected one of: {', '.join(NAMES)}")
    return BY_NAME[name]


def check_intensity(intensity: object, name: str = "") -> float:
    where = f" for {name!r}" if name else ""
    if isinstance(intensity, bool) or not isinstance(intensity, numbers.Real):
        raise ValueError(f"intensity{where} must be a real number in [0, 1], got {intensity!r}")
    value = float(intensity)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"intensity{where} must be in [0, 1], got {value!r}")
    return value


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 (RGB), got shape {image.shape}")
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ValueError(f"image must be at least {MIN_SIDE}x{MIN_SIDE}, got {image.shape[0]}x{image.shape[1]}")
    return np.ascontiguousarray(image)


def apply(image: np.ndarray, name: str, intensity: float, seed: int) -> np.ndarray:
    """Degrade a uint8 HxWx3 RGB image with degradation ``name`` at ``intensity`` in [0, 1].

    The same (image, name, intensity, seed) always gives the same bytes. Returns a new, writable
    array of the input's shape; raises ValueError on an unknown name or bad image/intensity/seed.
    """
    entry = check_name(name)
    value = check_intensity(intensity, name)
    pixels = check_image(image)
    rng = np.random.default_rng(check_seed(seed))
    out = entry.fn(pixels, value, rng)
    if not out.flags.writeable or out is image:
        out = out.copy()
    return out
