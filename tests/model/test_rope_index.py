"""M-RoPE position ids against transformers' Qwen2_5_VLModel.get_rope_index."""
import jax
import numpy as np
import pytest
import torch
import transformers

from robust_r1_jax.model.config import tiny
from robust_r1_jax.model.rope_index import (check_image_tokens, generation_position_ids, host_mrope_position_ids,
                                            mrope_position_ids, text_position_ids)

CFG = tiny()
IMAGE = CFG.image_token_id
MERGE = CFG.vision.spatial_merge_size
PAD = CFG.bos_token_id
# Jitted once here: run op by op, each new shape recompiles every primitive and the file gets slow.
mrope_jit = jax.jit(mrope_position_ids, static_argnames=("image_token_id", "spatial_merge_size"))


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    config = transformers.Qwen2_5_VLConfig(**CFG.to_hf())
    return transformers.Qwen2_5_VLForConditionalGeneration(config).eval()


def sequence(*parts, rng):
    """Token ids from parts: an int is that many text tokens, a (t, h, w) grid is a framed image."""
    ids = []
    for part in parts:
        if isinstance(part, int):
            ids += rng.integers(0, CFG.text.vocab_size - 16, part).tolist()
        else:
            t, h, w = part
            ids += [CFG.vision_start_token_id] + [IMAGE] * (t * h * w // MERGE ** 2) + [CFG.vision_end_token_id]
    return ids


def bare_image(t, h, w):
    return [IMAGE] * (t * h * w // MERGE ** 2)


def batch(rows, side):
    """Pad rows of ids to one length on the left or the right; returns (ids, mask) int64 arrays."""
    length = max(map(len, rows))
    ids = np.full((len(rows), length), PAD, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[b, span], mask[b, span] = row, 1
    return ids, mask


def transformers_positions(model, ids, grid, mask):
    ids_t = torch.as_tensor(ids)
    with torch.no_grad():
        positions, deltas = model.model.get_rope_index(
            ids_t, mm_token_type_ids=(ids_t == IMAGE).int(), image_grid_thw=torch.as_tensor(grid),
            attention_mask=None if mask is None else torch.as_tensor(mask))
    return positions.numpy(), deltas.numpy()[:, 0]


def assert_matches(model, ids, grid, mask, reference_grid=None, spare_slots=False):
    expected, deltas = transformers_positions(model, ids, grid if reference_grid is None else reference_grid, mask)
    positions, next_position = mrope_jit(ids, grid, mask, image_token_id=IMAGE, spatial_merge_size=MERGE)
    assert positions.dtype == np.int32 and next_position.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(positions), expected)
    real = np.ones_like(ids) if mask is None else mask
    np.testing.assert_array_equal(np.asarray(next_position) - real.sum(axis=1), deltas)
    # The NumPy path runs the same rule; it checks the layout first, and spare slots do not pass that check.
    if spare_slots:
        with pytest.raises(ValueError, match="accounts for"):
            host_mrope_position_ids(ids, grid, mask, image_token_id=IMAGE, spatial_merge_size=MERGE)
    else:
        host, host_next = host_mrope_position_ids(ids, grid, mask, image_token_id=IMAGE, spatial_merge_size=MERGE)
        assert host.dtype == np.int32 and host_next.dtype == np.int32 and isinstance(host, np.ndarray)
        np.testing.assert_array_equal(host, expected)
        np.testing.assert_array_equal(host_next, np.asarray(next_position))
    # The image blocks must really be 3-D, or the comparison proves little.
    assert (expected[1] != expected[2]).any()
    return np.asarray(positions), np.asarray(next_position)


def test_one_image(reference):
    rng = np.random.default_rng(0)
    ids = np.array([sequence(5, (1, 4, 6), 7, rng=rng)])
    grid = np.array([[1, 4, 6]])
    positions, next_position = assert_matches(reference, ids, grid, None)
    # Text after a 2x3 merged grid starting at 6 (<|vision_end|> first) continues at 6 + max(2, 3) = 9.
    assert positions[:, 0, 6].tolist() == [6, 6, 6] and positions[:, 0, 11].tolist() == [6, 7, 8]
    assert positions[:, 0, 12].tolist() == [9, 9, 9]
    assert next_position.tolist() == [17]


def test_two_images_of_different_sizes(reference):
    rng = np.random.default_rng(1)
    ids = np.array([sequence(3, (1, 4, 6), 2, (1, 8, 4), 4, rng=rng)])
    assert_matches(reference, ids, np.array([[1, 4, 6], [1, 8, 4]]), None)
    assert_matches(reference, ids, np.array([[1, 4, 6], [1, 8, 4]]), np.ones_like(ids))


def test_left_padded_batch_with_a_text_only_row(reference):
    rng = np.random.default_rng(2)
    rows = [sequence(4, (1, 6, 4), 3, (1, 4, 4), 2, rng=rng), sequence(6, (1, 4, 8), 9, rng=rng),
            sequence(7, rng=rng)]
    ids, mask = batch(rows, "left")
    assert (mask == 0).any(axis=1).sum() == 2
    positions, _ = assert_matches(reference, ids, np.array([[1, 6, 4], [1, 4, 4], [1, 4, 8]]), mask)
    assert (positions[:, mask == 0] == 0).all()


def test_right_padding(reference):
    rng = np.random.default_rng(3)
    rows = [sequence(2, (1, 4, 4), 2, rng=rng), sequence(5, (1, 8, 6), 11, rng=rng)]
    ids, mask = batch(rows, "right")
    assert_matches(reference, ids, np.array([[1, 4, 4], [1, 8, 6]]), mask)


def test_odd_merged_grids(reference):
    rng = np.random.default_rng(4)
    ids = np.array([sequence(3, (1, 6, 10), 5, (1, 10, 6), 2, (1, 2, 2), 1, rng=rng)])
    positions, _ = assert_matches(reference, ids, np.array([[1, 6, 10], [1, 10, 6], [1, 2, 2]]), None)
    # A 3x5 merged grid starting at 4: last token at (4, 4+2, 4+4), text continues at 4 + 5.
    assert positions[:, 0, 4 + 15 - 1].tolist() == [4, 6, 8] and positions[0, 0, 4 + 15] == 9


def test_images_at_the_very_start_and_end(reference):
    rng = np.random.default_rng(5)
    ids = np.array([bare_image(1, 4, 6) + sequence(3, rng=rng) + bare_image(1, 6, 4)])
    assert_matches(reference, ids, np.array([[1, 4, 6], [1, 6, 4]]), None)
    rows = [bare_image(1, 4, 4) + sequence(2, rng=rng) + bare_image(1, 4, 6),
            sequence(4, rng=rng) + bare_image(1, 4, 4)]
    for side in ("left", "right"):
        ids, mask = batch(rows, side)
        assert_matches(reference, ids, np.array([[1, 4, 4], [1, 4, 6], [1, 4, 4]]), mask)


def test_empty_grid_slots_are_skipped(reference):
    rng = np.random.default_rng(6)
    rows = [sequence(3, (1, 4, 6), 2, rng=rng), sequence(5, (1, 8, 4), 1, rng=rng)]
    ids, mask = batch(rows, "left")
    real_grid = np.array([[1, 4, 6], [1, 8, 4]])
    trailing = np.concatenate([real_grid, np.zeros((3, 3), np.int64)])
    # transformers never reaches trailing slots, so it agrees on the padded grid itself.
    assert_matches(reference, ids, trailing, mask)
    between = np.array([[0, 0, 0], [1, 4, 6], [0, 0, 0], [1, 8, 4], [0, 0, 0]])
    assert_matches(reference, ids, between, mask, reference_grid=real_grid)
    # Spare slots past the images used in the text are ignored too.
    assert_matches(reference, ids, np.concatenate([real_grid, [[1, 6, 6]]]), mask, spare_slots=True)


def test_one_compilation_for_different_grids(reference):
    rng = np.random.default_rng(7)
    traces = []

    @jax.jit
    def positions_of(ids, grid, mask):
        traces.append(1)
        return mrope_position_ids(ids, grid, mask, image_token_id=IMAGE, spatial_merge_size=MERGE)

    layouts = [((1, 4, 6), (1, 8, 4)), ((1, 6, 10), (1, 2, 2)), ((1, 4, 4), (1, 12, 2))]
    for first, second in layouts:
        rows = [sequence(3, first, 2, second, 2, rng=rng)]
        ids, mask = batch(rows, "left")
        # Pad every case to one static length and one number of grid slots.
        ids = np.pad(ids, ((0, 0), (48 - ids.shape[1], 0)), constant_values=PAD)
        mask = np.pad(mask, ((0, 0), (48 - mask.shape[1], 0)))
        grid = np.array([first, second, (0, 0, 0)])
        expected, deltas = transformers_positions(reference, ids, grid[:2], mask)
        positions, next_position = positions_of(ids.astype(np.int32), grid.astype(np.int32),
                                                mask.astype(np.int32))
        np.testing.assert_array_equal(np.asarray(positions), expected)
        np.testing.assert_array_equal(np.asarray(next_position) - mask.sum(1), deltas)
    assert len(traces) == 1


def test_text_positions_match_generation(reference):
    ids, mask = batch([[5, 6, 7, 8, 9], [5, 6], [7, 8, 9]], "left")
    expected = reference._prepare_position_ids_for_generation(
        torch.as_tensor(ids), {"attention_mask": torch.as_tensor(mask)})
    positions = np.asarray(text_position_ids(mask))
    assert positions.shape == (3, 3, 5)
    np.testing.assert_array_equal(positions, expected[1:].numpy())
    assert positions[0, 1].tolist() == [0, 0, 0, 0, 1]
    # With no images the 3-D function gives the same positions.
    mrope, next_position = mrope_jit(ids, np.zeros((1, 3), np.int32), mask, image_token_id=IMAGE,
                                     spatial_merge_size=MERGE)
    np.testing.assert_array_equal(np.asarray(mrope), positions)
    assert np.asarray(next_position).tolist() == [5, 2, 3]


def test_generation_positions_follow_next_position():
    positions = np.asarray(generation_position_ids(np.array([9, 4]), 2))
    assert positions.shape == (3, 2, 1) and positions[:, :, 0].tolist() == [[11, 6]] * 3


def test_check_image_tokens():
    rng = np.random.default_rng(8)
    ids = np.array([sequence(2, (1, 4, 6), 2, rng=rng)])
    check_image_tokens(ids, [[1, 4, 6], [0, 0, 0]], image_token_id=IMAGE, spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="6 image tokens .* accounts for 8"):
        check_image_tokens(ids, [[1, 4, 8]], image_token_id=IMAGE, spatial_merge_size=MERGE)
    # Two images of 3 tokens whose runs are 2 + 4: the totals agree but the first image is cut.
    split = np.array([[IMAGE, IMAGE, 1, IMAGE, IMAGE, IMAGE, IMAGE]])
    with pytest.raises(ValueError, match="row 0: a run of image tokens ends inside an image"):
        check_image_tokens(split, [[1, 2, 6], [1, 2, 6]], image_token_id=IMAGE, spatial_merge_size=MERGE)
    # Adjacent images in one run are fine.
    check_image_tokens(np.array([[1] + [IMAGE] * 6]), [[1, 2, 6], [1, 2, 6]], image_token_id=IMAGE,
                       spatial_merge_size=MERGE)


def test_numpy_positions_reject_split_image_tokens():
    ids = np.array([[5, 9, 9, 5, 9, 9, 5]])
    with pytest.raises(ValueError, match="split by text"):
        host_mrope_position_ids(ids, [[1, 2, 2]], np.ones((1, 7)), image_token_id=9, spatial_merge_size=1)
    with pytest.raises(ValueError, match="not covered"):
        host_mrope_position_ids(ids, [[1, 1, 2]], np.ones((1, 7)), image_token_id=9, spatial_merge_size=1)
