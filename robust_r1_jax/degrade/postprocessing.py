"""Post-processing degradations: what editing does after capture (sharpening, graffiti, watermarks).

Signatures as in ``capture.py``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from robust_r1_jax.degrade import filters, inpaint

GRAFFITI_WORDS = ("X", "FAKE", "COPY", "VOID", "COPYRIGHT")
STAMP_RGB = (255, 0, 0)  # the reference's (0, 0, 255) in BGR order
HERSHEY_CAP_HEIGHT = 21.0  # px per unit font scale of OpenCV's FONT_HERSHEY_SIMPLEX capitals


SHARPEN_BAND_ROWS = 96  # rows per band: keeps the 16-bit temporaries in cache


def sharpness_change(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """0.7·img + 0.3·sharp, sharp = the 3x3 sharpen kernel [[0,-1,0],[-1,5,-1],[0,-1,0]] × 80s.

    As in the reference the kernel is not normalised (it sums to 80s), so ``sharp`` saturates to
    white wherever a pixel is brighter than about 3/s grey levels and to black on the dark side of
    edges: the effect is a washed-out image with dark-edged detail. Not the identity at s = 0,
    where the reference takes its blur branch (a 3x3 Gaussian, blended the same way).
    16-bit integer arithmetic in row bands; within one grey level of the float computation.
    """
    del rng  # deterministic
    h = image.shape[0]
    out = np.empty_like(image)
    for top in range(0, h, SHARPEN_BAND_ROWS):
        bottom = min(h, top + SHARPEN_BAND_ROWS)
        rows = _band_with_halo(image, top, bottom).astype(np.int16)
        centre = rows[1:-1]
        total = _sharpened_x48(rows, 80.0 * s) if s > 0 else _gaussian3x3_x48(rows)
        total += (centre * np.int16(112)).view(np.uint16)  # 160·(0.7·img + 0.3·sharp) ...
        total += np.uint16(80)
        total //= np.uint16(160)  # ... rounded half up
        out[top:bottom] = total
    return out


def _band_with_halo(image: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """Rows top-1 .. bottom of the image, reflect-101 beyond its first and last row."""
    h = image.shape[0]
    if top >= 1 and bottom + 1 <= h:
        return image[top - 1:bottom + 1]
    rows = np.arange(top - 1, bottom + 1)
    rows[rows < 0] = 1
    rows[rows >= h] = h - 2
    return image[np.clip(rows, 0, h - 1)]


def _horizontal_neighbours(plane: np.ndarray) -> np.ndarray:
    """Left plus right neighbour of every pixel, reflect-101 at the side edges."""
    total = np.empty_like(plane)
    np.add(plane[:, :-2], plane[:, 2:], out=total[:, 1:-1])
    total[:, 0] = plane[:, 1] * np.int16(2)
    total[:, -1] = plane[:, -2] * np.int16(2)
    return total


def _sharpened_x48(rows: np.ndarray, gain: float) -> np.ndarray:
    """48·saturate(gain·sharpen) for the inner rows of the int16 ``rows``, as uint16 (<= 12240)."""
    centre = rows[1:-1]
    response = centre * np.int16(5)
    response -= rows[:-2]
    response -= rows[2:]
    response -= _horizontal_neighbours(centre)
    # At ``top`` and beyond the product saturates at 255; at 0 and below it is 0.
    top = int(math.ceil(255.5 / gain)) + 1
    np.clip(response, 0, top, out=response)
    response = response.view(np.uint16)
    if gain >= 8:  # top·48·gain < 2^16; the rounding happens once, in the final blend
        response *= np.uint16(round(gain * 48))
        np.minimum(response, np.uint16(48 * 255), out=response)
        return response
    table = (48 * np.clip(np.rint(np.arange(top + 1) * gain), 0, 255)).astype(np.uint16)
    return np.take(table, response)


def _gaussian3x3_x48(rows: np.ndarray) -> np.ndarray:
    """48·(OpenCV's sigma-0 3x3 Gaussian, [1, 2, 1]/4 per axis, rounded) for the inner rows."""
    columns = rows[:-2] + rows[2:] + rows[1:-1] * np.int16(2)
    total = _horizontal_neighbours(columns) + columns * np.int16(2)
    total += np.int16(8)
    total >>= np.int16(4)
    return (total * np.int16(48)).view(np.uint16)


@functools.lru_cache(maxsize=64)
def _stamp_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=1)
def _cap_height_per_pixel_of_size() -> float:
    """Cap height of the default font as a fraction of its nominal size."""
    font = _stamp_font(100)
    left, top, right, bottom = font.getbbox("X", anchor="ls")
    return max(1.0, -top) / 100.0


def graffiti(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """int(10s) random coloured lines (thickness 1..max(1, int(5s))); s > 0.55 adds a red stamp.

    The stamp is one of X, FAKE, COPY, VOID, COPYRIGHT or a number in [1, 100], drawn with Pillow's
    default font at the cap height of OpenCV's Hershey font at scale max(0.5, 5s), placed at random
    like the reference (it may run off the right edge). Where the reference would skip a stamp that
    is too tall for the image, the font is shrunk to fit; below 6 px it is skipped.
    """
    h, w = image.shape[:2]
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    n = int(10 * s)
    colours = rng.integers(0, 256, size=(n, 3)).tolist()
    ends = rng.integers(0, [w, h, w, h], size=(n, 4)).tolist()
    thicknesses = rng.integers(1, max(1, int(5 * s)) + 1, size=n).tolist()
    for colour, (x1, y1, x2, y2), thickness in zip(colours, ends, thicknesses):
        draw.line([(x1, y1), (x2, y2)], fill=tuple(colour), width=thickness)
    if s > 0.55:
        words = GRAFFITI_WORDS + (str(int(rng.integers(1, 101))),)
        text = words[int(rng.integers(0, len(words)))]
        _stamp(draw, text, max(0.5, 5 * s), h, w, rng)
    return np.asarray(canvas)


def _stamp(draw: ImageDraw.ImageDraw, text: str, scale: float, h: int, w: int,
           rng: np.random.Generator) -> None:
    """Draw ``text`` in red at a random place, its baseline at least text height + 10 px down."""
    size = max(1, round(HERSHEY_CAP_HEIGHT * scale / _cap_height_per_pixel_of_size()))
    while True:
        font = _stamp_font(size)
        left, top, right, _ = draw.textbbox((0, 0), text, font=font, anchor="ls")
        text_w, text_h = right - left, -top
        if h - 10 > text_h + 10:
            break
        smaller = int(size * (h - 21) / max(text_h, 1))
        if smaller < 6 or smaller >= size:
            return
        size = smaller
    x = int(rng.integers(0, max(1, w - text_w - 10) + 1))
    y = int(rng.integers(text_h + 10, h - 10 + 1))
    draw.text((x, y), text, fill=STAMP_RGB, font=font, anchor="ls")


def watermark_rectangles(h: int, w: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """Bool HxW mask of int(1+15s) filled rectangles, 50..200 px wide and 20..80 px tall.

    Sizes are the reference's for images of 100 px and more; smaller images scale them down
    by min(h, w)/100 (the reference cannot place them at all below 50 px).
    """
    f = min(1.0, min(h, w) / 100.0)
    min_w, max_w = max(1, round(50 * f)), max(1, round(200 * f))
    min_h, max_h = max(1, round(20 * f)), max(1, round(80 * f))
    n = int(1 + 15 * s)
    corners = rng.integers(0, [max(0, w - min_w) + 1, max(0, h - min_w) + 1], size=(n, 2))
    sizes = rng.integers([min_w, min_h], [max_w + 1, max_h + 1], size=(n, 2))
    mask = np.zeros((h, w), dtype=bool)
    for (x, y), (rect_w, rect_h) in zip(corners.tolist(), sizes.tolist()):
        mask[y:y + rect_h + 1, x:x + rect_w + 1] = True  # cv2.rectangle corners are inclusive
    return mask


def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image border does not count)."""
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def watermark_damage(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """int(1+15s) rectangles inpainted and blended with weight s; s > 0.5 darkens their edges ×0.8.

    The inpainting is a push-pull interpolation (see ``inpaint.py``) instead of OpenCV's Telea
    method; the edge line is the rectangles' inner boundary instead of Canny's output on the mask.
    """
    if s == 0:  # the repaired image is blended with weight s
        return image.copy()
    h, w = image.shape[:2]
    mask = watermark_rectangles(h, w, s, rng)
    repaired = inpaint.fill_holes(image, mask)  # equal to image outside the mask
    out = filters.weighted_sum(image, 1.0 - s, repaired, s)
    if s > 0.5:
        edge = _inner_boundary(mask)
        out[edge] = (out[edge] * 0.8).astype(np.uint8)
    return out
