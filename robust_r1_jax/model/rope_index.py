"""M-RoPE position ids for the language model, as jittable array code with static shapes (and its NumPy twin).

Qwen2.5-VL gives every text token one position (the same in its temporal, height and width rows) and every
image token a 3-D position: an image block that starts at position ``p`` covers ``t = p + frame``,
``h = p + row``, ``w = p + col`` over its merged grid (row-major), and the text after it continues at
``p + max(grid_h, grid_w) / merge``. This module computes exactly what transformers'
``Qwen2_5_VLModel.get_rope_index`` computes for images, without a Python loop over tokens or images, so the
whole thing runs under ``jax.jit`` with one compilation per (batch, sequence, number of image slots). The rule
is written once against an array namespace: :func:`host_mrope_position_ids` runs it in NumPy for the data
workers, which must not start JAX.

The relation to transformers' ``rope_deltas``::

    next_position[b] = max position over the real tokens of row b + 1     (the first generated token's position)
    rope_deltas[b]   = next_position[b] - (number of real tokens in row b)

so during decoding the k-th generated token (k = 0, 1, ...) sits at ``next_position + k`` in all three rows.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def text_position_ids(attention_mask) -> jnp.ndarray:
    """Ordinary positions for a text-only batch: ``cumsum(mask) - 1`` on real tokens, 0 on padding; [3, B, S].

    Same as transformers' generation path (``_prepare_position_ids_for_generation``), which works for left and
    right padding alike.
    """
    mask = jnp.asarray(attention_mask).astype(bool)
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    positions = jnp.where(mask, positions, 0).astype(jnp.int32)
    return jnp.broadcast_to(positions[None], (3, *positions.shape))


def generation_position_ids(next_position, step) -> jnp.ndarray:
    """Positions [3, B, 1] of the token generated at decode ``step`` (0 for the first one after the prompt)."""
    positions = jnp.asarray(next_position, jnp.int32) + jnp.asarray(step, jnp.int32)
    return jnp.broadcast_to(positions[None, :, None], (3, positions.shape[0], 1))


def mrope_position_ids(input_ids, image_grid_thw, attention_mask=None, *, image_token_id: int,
                       spatial_merge_size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """3-D rotary positions for a batch of text with images; returns ``(position_ids [3, B, S], next_position [B])``.

    ``image_grid_thw`` [num_images, 3] lists every image of the batch in order (row-major over batch, then
    sequence); rows of zeros are empty slots and are skipped, and slots past the last image in the text are
    ignored. Image tokens are the real (unmasked) tokens equal to ``image_token_id``; the i-th of them, counted
    over the whole batch, belongs to the image whose token range ``[sum of earlier counts, + t*h*w/merge^2)``
    contains i. Padding positions get 0, as in transformers. ``attention_mask`` None means every token is real.

    Where transformers fails (more image tokens than the grids account for, an image's tokens split by text)
    the result here is meaningless; :func:`check_image_tokens` reports those layouts on the host.
    """
    return _mrope_position_ids(jnp, input_ids, image_grid_thw, attention_mask, image_token_id, spatial_merge_size)


def host_mrope_position_ids(input_ids, image_grid_thw, attention_mask=None, *, image_token_id: int,
                            spatial_merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mrope_position_ids` in NumPy, after :func:`check_image_tokens`: int32 ``[3, B, S]`` and ``[B]``.

    For data workers: a ``jnp`` call there would start a JAX backend in every worker process (claiming the
    trainer's TPU chips, or preallocating GPU memory), so they run the same rule on NumPy arrays. Raises
    ``ValueError`` where the image tokens do not match the grids.
    """
    check_image_tokens(input_ids, image_grid_thw, attention_mask, image_token_id=image_token_id,
                       spatial_merge_size=spatial_merge_size)
    return _mrope_position_ids(np, input_ids, image_grid_thw, attention_mask, image_token_id, spatial_merge_size)


def _mrope_position_ids(xp, input_ids, image_grid_thw, attention_mask, image_token_id: int,
                        spatial_merge_size: int):
    """The one M-RoPE rule, written against the array namespace ``xp`` (``jax.numpy`` or ``numpy``)."""
    input_ids = xp.asarray(input_ids)
    batch, seq = input_ids.shape
    if attention_mask is None:
        real = xp.ones((batch, seq), bool)
    else:
        real = xp.asarray(attention_mask).astype(bool)

    grid = xp.asarray(image_grid_thw, xp.int32).reshape(-1, 3)
    # A trailing empty slot keeps the gathers below valid when the batch has no image slots at all.
    grid = xp.concatenate([grid, xp.zeros((1, 3), xp.int32)], axis=0)
    frames = grid[:, 0]
    rows = grid[:, 1] // spatial_merge_size
    cols = grid[:, 2] // spatial_merge_size
    tokens_per_image = frames * rows * cols
    image_end = xp.cumsum(tokens_per_image)
    image_start = image_end - tokens_per_image

    is_image = (input_ids == image_token_id) & real
    # Ordinal of each image token over the whole batch; images are consumed across rows in order.
    ordinal = (xp.cumsum(is_image.reshape(-1).astype(xp.int32)) - 1).reshape(batch, seq)
    # The image of each token is the number of image ends at or before its ordinal (searchsorted, side
    # "right"), which skips empty slots: their end equals the previous end, so no ordinal falls inside them.
    # There are few image slots, so comparing against all of them beats a binary search (and compiles faster).
    image = (image_end[:, None, None] <= ordinal[None]).sum(axis=0, dtype=xp.int32)
    image = xp.clip(image, 0, grid.shape[0] - 1)
    offset = ordinal - image_start[image]
    plane = xp.maximum(rows[image] * cols[image], 1)
    width = xp.maximum(cols[image], 1)
    frame = offset // plane
    row = (offset % plane) // width
    col = offset % width

    # How far each token moves the running position: 1 per text token, max(h, w) once per image (on its
    # last token), nothing on padding. The exclusive cumsum is then the block start for every image token.
    is_last_of_image = offset == tokens_per_image[image] - 1
    image_advance = xp.where(is_last_of_image, xp.maximum(rows[image], cols[image]), 0)
    advance = xp.where(is_image, image_advance, real.astype(xp.int32))
    start = xp.cumsum(advance, axis=1) - advance

    zero = xp.zeros_like(start)
    position_ids = xp.stack([
        start + xp.where(is_image, frame, zero),
        start + xp.where(is_image, row, zero),
        start + xp.where(is_image, col, zero),
    ])
    position_ids = xp.where(real[None], position_ids, 0).astype(xp.int32)
    # A row without real tokens gets next_position 0.
    highest = xp.where(real, position_ids.max(axis=0), -1).max(axis=1)
    return position_ids, (highest + 1).astype(xp.int32)


def check_image_tokens(input_ids, image_grid_thw, attention_mask=None, *, image_token_id: int,
                       spatial_merge_size: int) -> None:
    """Host-side check that the image tokens match the grids: a clear ``ValueError`` where they do not.

    Every non-empty grid row needs exactly ``t*h*w/merge^2`` consecutive real image tokens (padding may not
    interrupt them), in order over the batch, and no image token may be left over.
    """
    ids = np.asarray(input_ids)
    real = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    counts = [int(t * (h // spatial_merge_size) * (w // spatial_merge_size)) for t, h, w in grid if t * h * w]
    runs = []  # (batch row, length) of each maximal run of real image tokens
    for b in range(ids.shape[0]):
        kept = ids[b][real[b]] == image_token_id
        edges = np.flatnonzero(np.diff(np.concatenate([[0], kept.astype(np.int8), [0]])))
        runs += [(b, int(stop - start)) for start, stop in zip(edges[::2], edges[1::2])]
    total_tokens, total_expected = sum(n for _, n in runs), sum(counts)
    if total_tokens != total_expected:
        uncovered = (f": {total_tokens - total_expected} image tokens are not covered by any image grid"
                     if total_tokens > total_expected else "")
        raise ValueError(f"the batch has {total_tokens} image tokens (id {image_token_id}) but image_grid_thw "
                         f"accounts for {total_expected} ({len(counts)} images with {counts} tokens each)"
                         f"{uncovered}")
    # Each run must be a whole number of consecutive images.
    remaining = list(counts)
    for b, length in runs:
        while length > 0:
            if remaining[0] > length:
                raise ValueError(f"row {b}: a run of image tokens ends inside an image that needs "
                                 f"{remaining[0]} tokens (the run has {length} left): its tokens are split "
                                 f"by text")
            length -= remaining.pop(0)
