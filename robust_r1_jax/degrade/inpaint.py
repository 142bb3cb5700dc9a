"""Hole filling for watermark damage: a push-pull (pyramid) interpolation in NumPy and Pillow.

Stands in for ``cv2.inpaint(..., INPAINT_TELEA)``: both fill a hole with a smooth continuation of the
colours around it. Push: halve the image and a known-pixel weight by 2x2 sums until no hole is left.
Pull: from the coarsest level down, blend each level's normalised known colour with the bilinear
upsampling of the coarser estimate, trusting a cell in proportion to its known weight (capped at 1).
At full resolution a hole pixel has weight 0, so it simply takes the upsampled half-resolution
estimate. Cost is linear in the pixel count, whatever the hole size.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def fill_holes(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Copy of the uint8 HxWx3 ``image`` whose ``hole`` pixels (HxW bool) are interpolated.

    Known pixels are unchanged. If every pixel is a hole nothing is known to continue, so the
    hole takes the image's mean colour.
    """
    known = ~hole
    if known.all():
        return image.copy()
    if not known.any():
        mean = np.rint(image.reshape(-1, image.shape[2]).mean(axis=0))
        return np.broadcast_to(mean.astype(np.uint8), image.shape).copy()
    # Planar (channel-first) floats: the weights then broadcast over the leading axis, which
    # NumPy does much faster than over a trailing axis of 3.
    weight0 = known.astype(np.float32)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    planes *= weight0
    sums, weights = [_halve(planes)], [_halve(weight0)]
    while not (weights[-1] > 0).all():
        sums.append(_halve(sums[-1]))
        weights.append(_halve(weights[-1]))
    estimate = sums[-1] / weights[-1]
    for level in range(len(sums) - 2, -1, -1):
        coarse = _double(estimate, weights[level].shape)
        trust = np.minimum(weights[level], 1.0)
        mean = sums[level] / np.maximum(weights[level], 1e-12)
        estimate = mean * trust + coarse * (1.0 - trust)
    half = np.clip(np.rint(estimate), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    h, w = hole.shape
    upsampled = Image.fromarray(np.ascontiguousarray(half)).resize((w, h), Image.Resampling.BILINEAR)
    where_hole = Image.fromarray(hole.astype(np.uint8) * np.uint8(255))
    return np.asarray(Image.composite(upsampled, Image.fromarray(image), where_hole))


def _halve(array: np.ndarray) -> np.ndarray:
    """2x2 block sums over the last two axes, zero-padding odd edges (zeros carry no weight)."""
    h, w = array.shape[-2:]
    if h % 2 or w % 2:
        array = np.pad(array, [(0, 0)] * (array.ndim - 2) + [(0, h % 2), (0, w % 2)])
    return array[..., 0::2, 0::2] + array[..., 1::2, 0::2] + array[..., 0::2, 1::2] + array[..., 1::2, 1::2]


def _double(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear 2x upsampling over the last two axes (cell-centre aligned, edges clamped),
    cropped to ``shape``."""
    rows = _double_axis(array, array.ndim - 2)[..., :shape[0], :]
    return _double_axis(rows, rows.ndim - 1)[..., :shape[1]]


def _double_axis(array: np.ndarray, axis: int) -> np.ndarray:
    """Output 2i is 3/4 of input i plus 1/4 of i-1, output 2i+1 3/4 of i plus 1/4 of i+1."""
    def at(index: slice) -> tuple[slice, ...]:
        key = [slice(None)] * array.ndim
        key[axis] = index
        return tuple(key)

    shape = list(array.shape)
    shape[axis] *= 2
    out = np.empty(shape, dtype=np.float32)
    quarter = array * np.float32(0.25)
    even, odd = out[at(slice(0, None, 2))], out[at(slice(1, None, 2))]
    np.multiply(array, np.float32(0.75), out=even)
    np.multiply(array, np.float32(0.75), out=odd)
    even[at(slice(1, None))] += quarter[at(slice(None, -1))]
    even[at(slice(0, 1))] += quarter[at(slice(0, 1))]
    odd[at(slice(None, -1))] += quarter[at(slice(1, None))]
    odd[at(slice(-1, None))] += quarter[at(slice(-1, None))]
    return out
