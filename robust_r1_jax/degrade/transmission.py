"""Transmission-stage degradations: what coding and transport do (JPEG, block swaps, scan lines).

Mean shift, the fourth transmission degradation, lives in ``meanshift.py``: it is an approximation
that needs its own explanation. Signatures as in ``capture.py``.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg_quality(s: float) -> int:
    """Reference quality map: clip(int(100 - 95s), 5, 100)."""
    return max(5, min(100, int(100 - s * 95)))


def jpeg_compression(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Encode and decode as baseline JPEG (Pillow/libjpeg, default 4:2:0 chroma subsampling).

    Not the identity at s = 0: quality 100 still subsamples chroma and rounds DCT coefficients.
    """
    del rng  # deterministic
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=jpeg_quality(s))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded if decoded.mode == "RGB" else decoded.convert("RGB"))


def block_exchange(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """int(35s) swaps of square blocks of min(32, int(5+30s)) px on the block grid.

    The block edge is capped at the image's shorter side so that tiny images (which crash the
    reference) still have one block.
    """
    h, w = image.shape[:2]
    size = min(32, int(5 + 30 * s), h, w)
    rows, cols = h // size, w // size
    out = image.copy()
    swaps = rng.integers(0, [rows, cols, rows, cols], size=(int(35 * s), 4))
    for i1, j1, i2, j2 in swaps.tolist():
        y1, x1, y2, x2 = i1 * size, j1 * size, i2 * size, j2 * size
        first = out[y1:y1 + size, x1:x1 + size].copy()
        out[y1:y1 + size, x1:x1 + size] = out[y2:y2 + size, x2:x2 + size]
        out[y2:y2 + size, x2:x2 + size] = first
    return out


def scan_line_geometry(s: float) -> tuple[int, int]:
    """(period, band height) in rows: max(3, int(20/(s+0.1))) and max(5, int(7s))."""
    return max(3, int(20 / (s + 0.1))), max(5, int(7 * s))


def scan_lines(image: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Every ``period`` rows a band ``height`` rows tall is scaled by 0.01 (truncated: 0..2).

    Not the identity at s = 0: the reference still blanks 5 rows every 200.
    """
    del rng  # deterministic
    period, height = scan_line_geometry(s)
    in_band = (np.arange(image.shape[0]) % period) < height
    out = image.copy()
    out[in_band] = image[in_band] // 100  # == floor(v * 0.01) for every uint8 v
    return out
