"""Packed SFT batches (data/packing.py, PipelineConfig.packing): first-fit by tokens, patches and images; every
example once per epoch with the tokens, loss mask, positions and image of its unpacked row; deterministic,
resumable, host-sharded; and the length-profile statistics aot and inspect report."""
import numpy as np
import pytest

from robust_r1_jax.data import packing, pipeline, tfds_builder
from robust_r1_jax.data.packing import RowBudget
from robust_r1_jax.data.rows import ExampleSize

import test_pipeline as tp   # the shapes examples, their tokenizer and the loader settings

SEQ_LEN = 1024


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tfds_builder.write_dataset({"train": tp._examples()}, str(tmp_path_factory.mktemp("packing_tfds")))
    return tfds_builder.data_source(path, "train")


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return tp.processor.__wrapped__(tp._examples(), tmp_path_factory)


def _loader(source, processor, **overrides):
    hosts = {k: overrides.pop(k) for k in ("process_index", "process_count") if k in overrides}
    config = tp._config(**{"batch_size": 2, "seq_len": SEQ_LEN, "image_slots": 4, "patch_bucket": 128,
                           "packing": True, **overrides})
    return pipeline.make_sft_loader(source, processor, config, **{"process_index": 0, "process_count": 1, **hosts})


def test_first_fit_fills_the_first_row_with_room_and_opens_a_batch_when_none_has():
    budget = RowBudget(seq_len=10, patch_bucket=8, image_slots=2)
    sizes = [ExampleSize(6, 4, 1), ExampleSize(5, 0, 0), ExampleSize(4, 4, 1), ExampleSize(3, 4, 1),
             ExampleSize(14, 0, 0), ExampleSize(2, 0, 0)]
    # 0 -> row 0; 1 does not fit row 0 (11 tokens) -> row 1; 2 -> row 0 (10 tokens); 3 -> row 1;
    # 4 (truncated to 10) fits neither -> next batch, row 0; 5 -> row 1 there
    assert list(packing.first_fit(iter(enumerate(sizes)), 2, budget)) == [[[0, 2], [1, 3]], [[4], [5]]]
    # the patch budget decides alone: 5 tokens fit but 8 + 4 patches do not
    tight = [ExampleSize(2, 8, 1), ExampleSize(2, 4, 1)]
    assert list(packing.first_fit(iter(enumerate(tight)), 1, budget)) == [[[0]], [[1]]]
    with pytest.raises(ValueError, match="more than one row holds"):
        list(packing.first_fit(iter([(7, ExampleSize(1, 9, 1))]), 1, budget))


def test_packed_rows_hold_every_example_once_exactly_as_its_unpacked_row(source, processor):
    with _loader(source, processor) as loader:
        batches = list(loader)
        assert loader.num_batches == len(batches)
    # the same image budget: packed rows give each image a slot of 128 / 4 patches
    with tp._sft(source, processor, batch_size=1, seq_len=SEQ_LEN, image_slots=1, patch_bucket=32) as alone:
        unpacked = {int(b["example_index"][0]): b for b in alone}
    assert sum(int(b["num_examples"].sum()) for b in batches) == tp.NUM_EXAMPLES
    assert len(batches) < tp.NUM_EXAMPLES // 2   # more than one example per row on average
    found = []
    for batch in batches:
        assert batch["input_ids"].shape == (2, SEQ_LEN) and batch["pixel_values"].shape[:3] == (2, 4, 32)
        for r in range(2):
            segments = batch["segment_ids"][r]
            image = 0
            for k in range(1, int(batch["num_examples"][r]) + 1):
                span = np.flatnonzero(segments == k)
                assert np.all(np.diff(span) == 1)
                ids = batch["input_ids"][r, span]
                match = [i for i, u in unpacked.items() if np.sum(u["attention_mask"]) == len(span)
                         and np.array_equal(u["input_ids"][0, :len(span)], ids)]
                assert len(match) == 1
                want = unpacked[match[0]]
                found.append(match[0])
                np.testing.assert_array_equal(batch["loss_mask"][r, span], want["loss_mask"][0, :len(span)])
                np.testing.assert_array_equal(batch["position_ids"][r][:, span],
                                              want["position_ids"][0][:, :len(span)])
                grids = want["image_grid_thw"][0][want["image_grid_thw"][0].any(-1)]
                assert len(grids) == 1
                patches = int(np.prod(grids[0]))
                np.testing.assert_array_equal(batch["image_grid_thw"][r, image], grids[0])
                np.testing.assert_array_equal(batch["pixel_values"][r, image, :patches],
                                              want["pixel_values"][0, :patches])
                assert not batch["pixel_values"][r, image, patches:].any()
                image += 1
            assert np.all(segments[segments > 0] >= 1) and batch["attention_mask"][r].sum() == (segments > 0).sum()
    assert sorted(found) == list(range(tp.NUM_EXAMPLES))


def test_packed_batches_resume_and_split_over_hosts(source, processor):
    with _loader(source, processor, num_epochs=2, seed=3) as loader:
        first = [next(loader) for _ in range(2)]
        state = loader.get_state()
        third = next(loader)
    assert state["packing"] is True and state["next_batch"] == 2
    with _loader(source, processor, num_epochs=2, seed=3) as resumed:
        resumed.set_state(state)
        tp._assert_same_batches([third], [next(resumed)])
    with _loader(source, processor, num_epochs=2, seed=3, packing=False) as unpacked:
        with pytest.raises(ValueError, match="different loader"):
            unpacked.set_state(state)
    # two hosts of 1 row each take rows 0 and 1 of the same global batches
    hosts = []
    for h in range(2):
        with _loader(source, processor, num_epochs=2, seed=3, batch_size=1, process_index=h,
                     process_count=2) as loader:
            hosts.append([next(loader) for _ in range(2)])
    for b in range(2):
        joined = {k: np.concatenate([hosts[0][b][k], hosts[1][b][k]]) for k in first[b]}
        tp._assert_same_batches([joined], [first[b]])


def test_packed_buckets_must_split_into_image_slots(source, processor):
    with pytest.raises(ValueError, match="patch_bucket=100 must be a multiple of image_slots x 4"):
        _loader(source, processor, patch_bucket=100)


def test_length_profile_statistics():
    sizes = packing.sample_sizes(packing.robust_r1_profile(), 4000)
    tokens = np.array([s.tokens for s in sizes])
    assert tokens.min() >= 644 and tokens.max() <= 974 and 790 < tokens.mean() < 830
    budget = RowBudget(seq_len=2048, patch_bucket=3072, image_slots=3)
    padded = packing.packing_stats(sizes, 16, budget, packing=False)
    packed = packing.packing_stats(sizes, 16, budget, packing=True)
    assert padded["examples_per_row"] == 1.0 and 0.59 < padded["padding_fraction"] < 0.62
    # two examples of 644-974 tokens per 2048-token row: a fifth is still padding; 4096-token rows of up to
    # five images (the 3B recipe) hold 4.8 examples and leave 6%
    assert 2.0 < packed["examples_per_row"] < 2.1 and 0.19 < packed["padding_fraction"] < 0.22
    assert padded["real_tokens"] == tokens[:4000 // 16 * 16].sum()
    long_rows = packing.packing_stats(sizes, 8, RowBudget(4096, 5 * 1024, 5), packing=True)
    assert 4.7 < long_rows["examples_per_row"] < 4.9 and long_rows["padding_fraction"] < 0.07
