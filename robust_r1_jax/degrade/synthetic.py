"""Procedural natural-looking RGB images for tests and benchmarks (no downloads).

A smooth two-colour gradient, low-frequency colour variation, a few shaded shapes with soft edges
and a fine texture: enough structure for blur, compression and mean shift to have something to do.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def textured_scene(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic uint8 HxWx3 scene for ``seed``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (x * math.cos(angle) + y * math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    top, bottom = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    image = top + (bottom - top) * ramp[..., None]

    # Low-frequency variation: a coarse random field upsampled smoothly.
    coarse = rng.uniform(-25, 25, size=(4, 4, 3)).astype(np.float32)
    for c in range(3):
        field = Image.fromarray(coarse[..., c]).resize((width, height), Image.Resampling.BICUBIC)
        image[..., c] += np.asarray(field)

    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 7))):
        colour = tuple(int(v) for v in rng.integers(20, 236, size=3))
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx = rng.uniform(0.08, 0.3) * width
        ry = rng.uniform(0.08, 0.3) * height
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        elif kind == 1:
            draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            corners = [(cx + rx * math.cos(a), cy + ry * math.sin(a))
                       for a in rng.uniform(0, 2 * math.pi, size=3)]
            draw.polygon(corners, fill=colour)
    canvas = canvas.filter(ImageFilter.GaussianBlur(0.8))

    # Fine texture, softened so it reads as surface grain rather than sensor noise.
    grain = rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
    grain = np.asarray(Image.fromarray(np.clip(grain + 128, 0, 255).astype(np.uint8))
                       .filter(ImageFilter.GaussianBlur(1.0))).astype(np.float32) - 128
    shaded = np.asarray(canvas).astype(np.float32) * (0.9 + 0.1 * ramp[..., None]) + grain
    return np.clip(shaded + 0.5, 0, 255).astype(np.uint8)
