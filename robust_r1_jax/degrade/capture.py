"""Capture-stage degradations: what the lens and sensor do (blur, flare, motion, dirt, saturation).

Each function maps (uint8 HxWx3 RGB image, intensity s in [0, 1], numpy Generator) to a new uint8
image, with the parameter maps of SPEC section 2. The reference implementation is OpenCV on BGR
images; colours here are its colours in RGB order.
"""
from __future__ import annotations

import math

import numpy as np

from robust_r1_jax.degrade import filters

# The reference flare colour is (255, 255, 235) in BGR order, i.e. a slightly cold white.
FLARE_RGB = np.array([235.0, 255.0, 255.0], dtype=np.float32)


def lens_blur(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Defocus: (1-0.7s)·img + 0.9s·Gaussian(img, sigma 20s), saturated.

    The reference kernel (size int(3+300s)|1) spans about ±7.5 sigma, so an untruncated Gaussian
    matches it. The weights sum to 1+0.2s: like the reference, stronger blur also brightens.
    """
    del rng  # deterministic
    if s == 0:
        return image.copy()
    blurred = filters.gaussian_blur(image, 20.0 * s)
    return filters.weighted_sum(image, 1.0 - 0.7 * s, blurred, 0.9 * s)


def lens_flare(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """3+int(30s) bright discs (r in [10, 50]) with 2-px streaks (length [30, 150]), 3x3-smoothed
    with sigma 20s and added with weight 0.9s (saturating)."""
    if s == 0:  # the flare is added with weight 0.9s
        return image.copy()
    h, w = image.shape[:2]
    n = 3 + int(30 * s)
    # One vectorised draw per parameter: scalar Generator calls cost microseconds each.
    xs, ys = rng.integers(0, w + 1, n), rng.integers(0, h + 1, n)
    radii = rng.integers(10, 51, n)
    angles = rng.uniform(0.0, 2.0 * math.pi, n)
    lengths = rng.integers(30, 151, n)
    ends_x = (xs + lengths * np.cos(angles)).astype(int)  # truncation, as the reference's int()
    ends_y = (ys + lengths * np.sin(angles)).astype(int)
    canvas, draw = filters.new_mask(h, w)
    for x, y, radius, end_x, end_y in zip(*(a.tolist() for a in (xs, ys, radii, ends_x, ends_y))):
        filters.draw_disc(draw, x, y, radius, 255)
        draw.line([(x, y), (end_x, end_y)], fill=255, width=2)
    coverage = filters.smooth3x3_u8(np.asarray(canvas), filters.opencv_gaussian_kernel(3, 20.0 * s))
    # img + floor(weight·coverage) == floor(img + weight·coverage) for integer img, so the flare
    # is a per-channel table of the coverage followed by a saturating add.
    table = (np.arange(256, dtype=np.float64)[:, None] * (0.9 * s / 255.0) * FLARE_RGB).astype(np.uint8)
    # Gathering whole 3-byte pixels (a void view of the table rows) beats take(..., axis=0).
    flare = np.take(table.view("V3").ravel(), coverage).view(np.uint8).reshape(image.shape)
    return filters.saturating_add(image, flare)


def motion_blur(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Average along a line of max(5, int(30s)) pixels at a uniform random angle.

    The line is rasterised to whole-pixel taps (the reference warps a diagonal with bilinear
    weights); at these lengths the difference is invisible and integer taps are much faster.
    Not the identity at s = 0: the shortest streak is 5 px, as in the reference.
    """
    length = max(5, int(30 * s))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return filters.correlate_integer_taps(image, filters.line_taps(length, angle))


def dirty_lens(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Grey blotches on the lens, blurred (sigma 30) and blended: (1-0.7s)·img + 0.8s·dirt.

    Dirt: int(10s) large ellipses of grey 50 when s > 0.1, int(300s) spots r in [4, 20] of grey
    [50, 100], and when s > 0.5 int(5s) rings (grey 80 disc r in [20, 50] under a grey 120 disc
    r in [10, 30]).
    """
    if s == 0:  # the dirt is blended with weight 0.8s
        return image.copy()
    h, w = image.shape[:2]
    canvas, draw = filters.new_mask(h, w)
    if s > 0.1:
        n = int(10 * s)
        centres = zip(rng.integers(0, w + 1, n).tolist(), rng.integers(0, h + 1, n).tolist())
        axes = zip(rng.integers(150, 301, n).tolist(), rng.integers(100, 201, n).tolist())
        for (cx, cy), half_axes, angle in zip(centres, axes, rng.integers(0, 181, n).tolist()):
            filters.draw_rotated_ellipse(draw, cx, cy, half_axes, angle, 50)
    n = int(300 * s)
    spots = zip(*(a.tolist() for a in (rng.integers(0, w + 1, n), rng.integers(0, h + 1, n),
                                      rng.integers(4, 21, n), rng.integers(50, 101, n))))
    for cx, cy, radius, grey in spots:
        filters.draw_disc(draw, cx, cy, radius, grey)
    if s > 0.5:
        n = int(5 * s)
        rings = zip(*(a.tolist() for a in (rng.integers(0, w + 1, n), rng.integers(0, h + 1, n),
                                          rng.integers(20, 51, n), rng.integers(10, 31, n))))
        for cx, cy, outer, inner in rings:
            filters.draw_disc(draw, cx, cy, outer, 80)
            filters.draw_disc(draw, cx, cy, inner, 120)
    dirt = filters.gaussian_blur(np.asarray(canvas), 30.0)
    return filters.weighted_sum(image, 1.0 - 0.7 * s, dirt, 0.8 * s)


def saturation(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """HSV saturation scaled by (1-s), hue and value kept.

    In HSV every channel is c = V - V·S·k(hue), so scaling S gives c' = c + s·(V - c) exactly;
    this avoids OpenCV's 8-bit hue quantisation and is the identity at s = 0. s·(V - c) is
    computed in 8.8 fixed point (within one grey level of the exact value).
    """
    del rng  # deterministic
    value = np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2])
    gap = filters.per_channel_gap(value, image).astype(np.uint16)  # V >= c: no wrap-around
    gap *= np.uint16(round(s * 256))  # <= 255·256
    gap += np.uint16(128)
    gap >>= np.uint16(8)
    return image + gap.astype(np.uint8)
