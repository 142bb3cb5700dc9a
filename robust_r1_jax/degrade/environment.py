"""Environment-stage degradations: what happens before light reaches the camera.

Darkness, atmospheric turbulence, noise and colour diffusion; signatures as in ``capture.py``.
"""
from __future__ import annotations

import functools

import numpy as np

from robust_r1_jax.degrade import filters


def darkness(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """img·(1-s²), truncated to uint8 as the reference does (a lookup table, exact)."""
    del rng  # deterministic
    table = (np.arange(256, dtype=np.float64) * (1.0 - s**2)).astype(np.uint8)
    return np.take(table, image)


def atmospheric_turbulence(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Remap with dx = 40s·sin(y/30 + 5s), dy = 0.7·dx, bilinear, source clipped to the image.

    dx depends on the row only, so output row y is source rows y0/y1 blended, shifted by the
    constant dx. Bilinear weights use 1/32-pixel steps like OpenCV's remap, in integer arithmetic.
    """
    del rng  # deterministic
    if s == 0:
        return image.copy()
    h, w = image.shape[:2]
    y = np.arange(h, dtype=np.float64)
    dx = 40.0 * s * np.sin(y / 30.0 + 5.0 * s)
    src_y = np.clip(y + 0.7 * dx, 0, h - 1)
    y0 = np.floor(src_y).astype(np.int64)
    wy = np.rint((src_y - y0) * 32).astype(np.uint16)[:, None, None]
    y1 = np.minimum(y0 + 1, h - 1)
    rows = image[y0].astype(np.uint16)
    rows *= np.uint16(32) - wy
    rows += image[y1].astype(np.uint16) * wy  # 32 x the vertical blend, <= 8160
    rows += np.uint16(2)
    rows >>= np.uint16(2)  # 8 x the blend, so the horizontal products fit in uint16

    # Edge-replicating the rows makes clamped source columns plain indices; each output row reads
    # w + 1 consecutive padded pixels starting at its own integer shift.
    shift = np.floor(dx).astype(np.int64)
    wx = np.rint((dx - shift) * 32).astype(np.uint16)[:, None, None]
    margin = int(np.max(np.abs(shift))) + 2
    padded = np.pad(rows, ((0, 0), (margin, margin), (0, 0)), mode="edge")
    width = padded.shape[1]
    starts = np.arange(h) * width + margin + shift
    pixels = np.take(padded.reshape(-1, 3), starts[:, None] + np.arange(w + 1)[None, :], axis=0)
    out = pixels[:, :-1] * (np.uint16(32) - wx)
    out += pixels[:, 1:] * wx  # 256 x the bilinear value, <= 65280
    out += np.uint16(128)
    out >>= np.uint16(8)
    return out.astype(np.uint8)


def noise_std(s: float) -> float:
    """Standard deviation of the additive noise on the 0-255 scale: 75s."""
    return 75.0 * s


NOISE_LEVELS = 1 << 16  # 16-bit uniforms index the quantile table


@functools.lru_cache(maxsize=1)
def standard_normal_quantiles() -> np.ndarray:
    """Φ⁻¹((k + 0.5) / 65536) for k = 0..65535 (Acklam's rational approximation, |rel. err| < 1.2e-9)."""
    p = (np.arange(NOISE_LEVELS, dtype=np.float64) + 0.5) / NOISE_LEVELS
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)

    def tail(q: np.ndarray) -> np.ndarray:
        num = ((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]
        return num / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)

    centred = p - 0.5
    r = centred * centred
    num = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * centred
    out = num / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    low = p < 0.02425
    out[low] = tail(np.sqrt(-2.0 * np.log(p[low])))
    high = p > 1.0 - 0.02425
    out[high] = -tail(np.sqrt(-2.0 * np.log1p(-p[high])))
    out.flags.writeable = False
    return out


def noise(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, std 75s grey levels, clipped and truncated like the reference.

    Samples by inverse transform: a 16-bit uniform indexes a table of floor(75s·Φ⁻¹(u)) (exact
    truncation, since img + floor(n) = floor(img + n)); tails beyond ±4.3 sigma are cut, where
    the clip to [0, 255] acts anyway at the intensities that matter. Several times faster than
    drawing float normals.
    """
    if s == 0:
        return image.copy()
    table = np.floor(standard_normal_quantiles() * noise_std(s)).astype(np.int16)
    uniforms = rng.integers(0, NOISE_LEVELS, size=image.shape, dtype=np.uint16)
    values = np.take(table, uniforms)
    values += image
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def color_diffusion_kernel(s: float) -> np.ndarray:
    """Reference 1-D taps: size 3 + 2·int(20s), sigma 50s (OpenCV's rule when sigma is 0)."""
    return filters.opencv_gaussian_kernel(3 + 2 * int(20 * s), 50.0 * s)


def color_diffusion(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Colours bleed: blend of the image and a dimmed wide blur, plus grey discs when s > 0.9.

    diffused = s²·blur(img); out = max(0.1, 1-0.9s)·img + min(0.9, 0.9s)·diffused. The reference
    kernel (size 3+2·int(20s), sigma 50s) is so truncated that it is nearly flat; it is applied as
    a box blur of the same variance. Because diffused is scaled by s², the mean brightness
    (1-0.9s) + 0.9s·s² falls until s ≈ 0.58 and then rises again (0.85 at s = 0.9): the reference map
    is not monotone and brightens again near 0.9; it is kept as is. When s > 0.9, int(100s) grey
    discs (r in [5, 19], grey in [0, 254]) are stamped on the diffused layer.
    """
    if s == 0:
        return image.copy()
    radius = filters.box_radius_matching(color_diffusion_kernel(s))
    blurred = filters.box_blur(image, radius)
    table = (np.arange(256, dtype=np.float64) * (s * s)).astype(np.uint8)
    diffused = np.take(table, blurred)  # s²-scaled and truncated like the reference's cast
    if s > 0.9:
        h, w = image.shape[:2]
        values, draw_value = filters.new_mask(h, w)
        stamped, draw_stamp = filters.new_mask(h, w)
        n = int(100 * s)
        discs = zip(*(a.tolist() for a in (rng.integers(0, w, n), rng.integers(0, h, n),
                                          rng.integers(5, 20, n), rng.integers(0, 255, n))))
        for x, y, radius_px, grey in discs:
            filters.draw_disc(draw_value, x, y, radius_px, grey)
            filters.draw_disc(draw_stamp, x, y, radius_px, 255)
        disc = np.asarray(stamped) > 0
        diffused = np.where(disc[..., None], np.asarray(values)[..., None], diffused)
    return filters.weighted_sum(image, max(0.1, 1 - 0.9 * s), diffused, min(0.9, 0.9 * s))
