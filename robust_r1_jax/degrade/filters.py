"""Image primitives shared by the degradations: OpenCV-style kernels, fast blurs, blends, masks.

Everything takes and returns NumPy arrays. Heavy lifting goes to Pillow's C filters where their
semantics match (Gaussian blur by standard deviation, box blur) and to vectorised NumPy otherwise.
OpenCV's default border (reflect-101, ``dcb|abcd|cba``) is NumPy's ``mode="reflect"``.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def opencv_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """1-D Gaussian taps as ``cv2.getGaussianKernel`` makes them (sigma <= 0 derived from size)."""
    if size % 2 != 1 or size < 1:
        raise ValueError(f"Gaussian kernel size must be odd and positive, got {size}")
    if sigma <= 0:
        if size == 3:  # OpenCV's fixed small-kernel table
            return np.array([0.25, 0.5, 0.25])
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = np.arange(size) - (size - 1) / 2
    taps = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def smooth3x3_u8(plane: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """A uint8 HxW plane filtered by the outer product of 3 symmetric ``taps`` (reflect-101), rounded.

    Integer arithmetic with the taps quantised to 1/64, one rounding per axis.
    """
    side = np.uint16(round(float(taps[0]) * 64))
    middle = np.uint16(64) - np.uint16(2) * side
    values = plane.astype(np.uint16)
    for axis in (0, 1):
        v = np.moveaxis(values, axis, 0)  # a view: filter along its first axis
        out = v * middle
        out[1:] += v[:-1] * side
        out[:-1] += v[1:] * side
        out[0] += v[1] * side  # reflect-101: the missing neighbour mirrors the inner one
        out[-1] += v[-2] * side
        out += np.uint16(32)
        out >>= np.uint16(6)
        values = np.moveaxis(out, 0, axis)
    return values.astype(np.uint8)


def saturating_add(image: np.ndarray, addend: np.ndarray) -> np.ndarray:
    """uint8 image + uint8 addend, saturating at 255."""
    return image + np.minimum(addend, np.uint8(255) - image)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a uint8 HxW or HxWx3 array by standard deviation ``sigma`` (pixels).

    Pillow approximates the Gaussian with three variance-matched box passes and replicates edge
    pixels; for the wide, barely truncated kernels used here this is within a grey level or two
    of OpenCV's exact kernel in the interior.
    """
    if sigma <= 0:
        return image.copy()
    blurred = Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma))
    return np.asarray(blurred)


def box_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Mean over a (2r+1)-wide square window; a fractional radius weights the outermost taps."""
    if radius <= 0:
        return image.copy()
    return np.asarray(Image.fromarray(image).filter(ImageFilter.BoxBlur(radius)))


def box_radius_matching(taps: np.ndarray) -> float:
    """Fractional box radius whose kernel has the same variance as the symmetric ``taps``.

    Pillow's box of radius r = n + f has 2n+1 taps of weight 1 and two outer taps of weight f,
    all over 2r+1, so its variance is (n(n+1)(2n+1)/3 + 2f(n+1)²) / (2n+2f+1); the smallest n
    whose f lands in [0, 1] gives the answer.
    """
    offsets = np.arange(len(taps)) - (len(taps) - 1) / 2
    target = float(np.sum(taps * offsets**2) / np.sum(taps))
    n = 0
    while True:
        inner = n * (n + 1) * (2 * n + 1) / 3.0  # sum of k² for |k| <= n
        outer = (n + 1) ** 2
        if target != outer:  # at equality no f of this n fits (the box tops out lower)
            frac = (inner - target * (2 * n + 1)) / (2 * target - 2 * outer)
            if 0.0 <= frac <= 1.0:
                return n + frac
        n += 1


def weighted_sum(first: np.ndarray, alpha: float, second: np.ndarray, beta: float) -> np.ndarray:
    """``cv2.addWeighted`` semantics: round(alpha·first + beta·second), saturated to uint8.

    ``second`` may be HxW (the same for every channel) or HxWx3.
    """
    if second.ndim == 2 and first.ndim == 3:
        second = np.repeat(second.reshape(-1), first.shape[2]).reshape(first.shape)
    out = first.astype(np.float32)
    out *= np.float32(alpha)
    scaled = second.astype(np.float32)
    scaled *= np.float32(beta)
    out += scaled
    out += np.float32(0.5)  # then truncation: round half up
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def per_channel_gap(reference: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``reference[..., None] - image`` for an HxW reference, channel by channel (broadcasting over a
    trailing axis of 3 is several times slower in NumPy)."""
    gap = np.empty_like(image)
    for c in range(image.shape[2]):
        np.subtract(reference, image[..., c], out=gap[..., c])
    return gap


def new_mask(height: int, width: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A black 8-bit canvas and a drawer for it."""
    canvas = Image.new("L", (width, height), 0)
    return canvas, ImageDraw.Draw(canvas)


def draw_disc(draw: ImageDraw.ImageDraw, cx: float, cy: float, radius: float, value: int) -> None:
    """Filled circle like ``cv2.circle(..., thickness=-1)`` (radius counts pixels from the centre)."""
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=int(value))


def draw_rotated_ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, half_axes: tuple[float, float],
                         angle_degrees: float, value: int, points: int = 72) -> None:
    """Filled ellipse with semi-axes ``half_axes`` rotated by ``angle_degrees`` (as ``cv2.ellipse``)."""
    t = np.linspace(0.0, 2.0 * math.pi, points, endpoint=False)
    a, b = half_axes
    theta = math.radians(angle_degrees)
    x = a * np.cos(t)
    y = b * np.sin(t)
    xs = cx + x * math.cos(theta) - y * math.sin(theta)
    ys = cy + x * math.sin(theta) + y * math.cos(theta)
    draw.polygon(list(zip(xs.tolist(), ys.tolist())), fill=int(value))


def line_taps(length: int, angle: float) -> list[tuple[int, int, int]]:
    """Integer (dy, dx, count) taps of a ``length``-pixel line through the origin at ``angle`` rad."""
    t = np.arange(length) - (length - 1) / 2.0
    dxs = np.rint(t * math.cos(angle)).astype(int)
    dys = np.rint(-t * math.sin(angle)).astype(int)
    counts: dict[tuple[int, int], int] = {}
    for dy, dx in zip(dys.tolist(), dxs.tolist()):
        counts[(dy, dx)] = counts.get((dy, dx), 0) + 1
    return [(dy, dx, c) for (dy, dx), c in counts.items()]


def correlate_integer_taps(image: np.ndarray, taps: Iterable[tuple[int, int, int]]) -> np.ndarray:
    """Normalised sum of integer-shifted copies of a uint8 image (reflect-101 borders), rounded.

    Sums in uint16 (exact for up to 257 taps of 255), so each tap costs one integer add.
    """
    taps = list(taps)
    total = sum(c for _, _, c in taps)
    if total > 257:
        raise ValueError(f"too many taps ({total}) for a uint16 accumulator")
    radius = max(max(abs(dy), abs(dx)) for dy, dx, _ in taps)
    h, w = image.shape[:2]
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode="reflect").astype(np.uint16)
    acc = np.zeros(image.shape, dtype=np.uint16)
    for dy, dx, count in taps:
        window = padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
        if count == 1:
            acc += window
        else:
            acc += window * np.uint16(count)
    acc += np.uint16(total // 2)
    return (acc // np.uint16(total)).astype(np.uint8)


def resize(image: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """Pillow resize of a uint8 HxW or HxWx3 array."""
    return np.asarray(Image.fromarray(image).resize((width, height), resample))
