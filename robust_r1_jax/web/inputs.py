"""What the page accepts and how it degrades it: uploads checked into uint8 RGB arrays with a readable message
for anything else, and the degraded image for the chosen type and intensity (the training engine, SPEC §2).

Every check raises ``InputProblem``, whose message is shown in the page as it is.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image, ImageOps

from robust_r1_jax import degrade

RANDOM = "random (seeded)"
CLEAN = "none (clean)"
CHOICES = (CLEAN, *degrade.NAMES, RANDOM)


class InputProblem(ValueError):
    """Bad input from the page: the message is written for the user."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """max_file_bytes: the upload's size; max_pixels: before decoding (decompression bombs); max_aspect: Qwen2.5-VL's
    processor refuses 200 and more; min_side: the degradations' smallest input; max_side: larger images are shrunk
    to it (the model's processor resizes to its own pixel budget anyway, and the degradations run in time)."""

    max_file_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_aspect: float = 20.0
    min_side: int = degrade.registry.MIN_SIDE
    max_side: int = 768


def check_image_array(image: np.ndarray, limits: Limits, name: str = "the image") -> np.ndarray:
    """uint8 RGB (H, W, 3) within ``limits``, shrunk to ``limits.max_side``; InputProblem otherwise."""
    height, width = image.shape[:2]
    if min(height, width) < limits.min_side:
        raise InputProblem(f"{name} is {width}x{height} pixels; both sides must be at least {limits.min_side}.")
    aspect = max(height, width) / min(height, width)
    if aspect > limits.max_aspect:
        raise InputProblem(f"{name} is {width}x{height} pixels, an aspect ratio of {aspect:.0f}:1; the app accepts "
                           f"up to {limits.max_aspect:g}:1. Crop it first.")
    if height * width > limits.max_pixels:
        raise InputProblem(f"{name} is {width}x{height} pixels ({height * width / 1e6:.0f} MP); the limit is "
                           f"{limits.max_pixels / 1e6:g} MP.")
    if max(height, width) > limits.max_side:
        scale = limits.max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)
    return np.ascontiguousarray(image)


def read_upload(path: str, limits: Limits) -> np.ndarray:
    """The uploaded file at ``path`` as uint8 RGB, turned upright by its EXIF orientation (a phone photo, as
    ``generate`` does); InputProblem naming the file when it is not a usable image."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise InputProblem(f"{name}: the upload could not be read ({error.strerror}).") from error
    if size > limits.max_file_bytes:
        raise InputProblem(f"{name} is {size / 2**20:.1f} MiB; the limit is {limits.max_file_bytes / 2**20:g} MiB.")
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > limits.max_pixels:  # before decoding: the header is enough
                raise InputProblem(f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); the limit "
                                   f"is {limits.max_pixels / 1e6:g} MP.")
            opened.load()
            image = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"), dtype=np.uint8)
    except InputProblem:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        # Pillow's message names the server's temporary copy (/tmp/gradio/<hash>/...): the page names the upload
        detail = str(error).replace(f"'{path}'", name).replace(path, name)
        raise InputProblem(f"{name} is not an image the app can read (PNG, JPEG, WebP, BMP, GIF, TIFF): "
                           f"{detail}") from error
    return check_image_array(image, limits, name)


@dataclasses.dataclass(frozen=True)
class Degradation:
    """What the page applies: ``applied`` lists (type, intensity) in physical order, empty for the clean image."""

    applied: tuple[tuple[str, float], ...]
    seed: int


def plan(choice: str, intensity: float, seed: int, random_types: tuple[int, int] = (1, 1)) -> Degradation:
    """The degradation for the page's controls: one named type at ``intensity`` (0 = clean), nothing, or types
    and intensities drawn by the training sampler from ``seed`` (``random_types`` = (min, max) count)."""
    seed = int(seed)
    if seed < 0:
        raise InputProblem(f"the seed must be a non-negative integer, got {seed}.")
    if choice == CLEAN:
        return Degradation((), seed)
    if choice == RANDOM:
        drawn = degrade.sample_training(seed, *random_types)
        return Degradation(tuple((str(n), round(float(s), 2)) for n, s in drawn), seed)
    if choice not in degrade.BY_NAME:
        raise InputProblem(f"unknown degradation {choice!r}; pick one of the list.")
    value = round(float(intensity), 2)
    if not 0.0 <= value <= 1.0:
        raise InputProblem(f"the intensity must be in [0, 1], got {intensity}.")
    return Degradation(((choice, value),) if value > 0 else (), seed)


def apply(image: np.ndarray, degradation: Degradation) -> np.ndarray:
    """The image with ``degradation.applied`` composed in order (SPEC §2; a copy when nothing is applied)."""
    if not degradation.applied:
        return image.copy()
    out, _ = degrade.compose(image, list(degradation.applied), seed=degradation.seed)
    return out
