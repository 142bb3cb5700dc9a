"""Issue 16 on the data side: one unusable item is skipped and named, never the end of a build.

Kind 1: images the degradation engine or the processor would refuse; kind 3: train-only datasets and
sources with no usable row. (Kind 2, text that is not UTF-8, is in test_sources.py; batch building in
test_pipeline.py.)
"""

import dataclasses
import os
import re

import numpy as np
import pytest

from robust_r1_jax.data import shapes, sources, synth, tfds_builder
from robust_r1_jax.data.records import Record, SourceError
from robust_r1_jax.model.processor import check_image_size, smart_resize



def small_config(workdir, **overrides):
    config = synth.default_config()
    config.workdir = str(workdir)
    config.synth.update({"num_train": 10, "num_validation": 4, "image_size": 48, "contact_sheet_size": 3, **overrides})
    return config


def _tsv(tmp_path, sizes, name="bench.tsv"):
    """A VLMEvalKit TSV whose row i (file line i + 2) holds a random image of sizes[i] = (height, width)."""
    records = []
    for i, (record, size) in enumerate(zip(shapes.make_records(len(sizes), seed=5, image_size=32), sizes)):
        pixels = np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
        records.append(dataclasses.replace(record, image_fn=lambda pixels=pixels: pixels))
    path = str(tmp_path / name)
    sources.write_vlmeval_tsv(records, path)
    return path, [r.id for r in records]


# ---- kind 1: what the processor or the degradation engine would refuse is skipped at build time ---------------

def test_check_image_size_gives_the_processors_own_reason():
    assert check_image_size(10, 2100) == "absolute aspect ratio must be smaller than 200, got 210.0"
    with pytest.raises(ValueError) as raised:
        smart_resize(10, 2100)
    assert str(raised.value) == check_image_size(10, 2100)
    assert check_image_size(0, 5) == "image size must be positive, got height=0, width=5"
    for height, width in ((1, 1), (10, 2000), (2000, 10), (224, 224)):
        assert check_image_size(height, width) is None
        smart_resize(height, width)  # what the check lets through, the processor takes


def test_synth_skips_and_names_images_the_processor_or_the_degrader_would_refuse(tmp_path):
    sizes = [(32, 32), (1, 1), (32, 40), (10, 2100), (60, 4000), (40, 32), (36, 36)]
    path, ids = _tsv(tmp_path, sizes)
    config = small_config(tmp_path / "work", source="vlmeval_tsv", source_path=path, num_train=5, num_validation=2,
                          max_image_side=448)
    summary = synth.run(config)
    assert summary["skipped"] == 3
    assert sum(summary["counts"].values()) == 4
    assert sorted(summary["skipped_items"]) == sorted([
        f"{path}:3 (id {ids[1]}): image of 1x1 px: smaller than the 8-px minimum side of the degradation engine",
        f"{path}:5 (id {ids[3]}): image of 448x2 px, 2100x10 before max_image_side=448: the Qwen2.5-VL processor "
        f"cannot take it: absolute aspect ratio must be smaller than 200, got 224.0",
        f"{path}:6 (id {ids[4]}): image of 448x7 px, 4000x60 before max_image_side=448: smaller than the 8-px "
        f"minimum side of the degradation engine",
    ])
    kept = [e["id"] for split in ("train", "validation") for e in tfds_builder.read_examples(summary["dataset_dir"], split)]
    assert sorted(kept) == sorted(ids[i] for i in (0, 2, 5, 6))


def test_with_on_error_raise_the_first_refused_image_stops_the_build_by_name(tmp_path):
    path, ids = _tsv(tmp_path, [(32, 32), (1, 1), (32, 32)])
    work = tmp_path / "work"
    config = small_config(work, source="vlmeval_tsv", source_path=path, num_train=3, num_validation=0,
                          on_error="raise", seed=1)
    with pytest.raises(SourceError, match=re.escape(f"{path}:3 (id {ids[1]}): image of 1x1 px: smaller than")):
        synth.run(config)
    assert not os.path.exists(work / "tfds" / "robust_r1")


def test_prebuilt_chains_keep_a_small_image_the_processor_takes(tmp_path):
    """Pre-degraded sources never reach the degradation engine, so only the processor's limit applies."""
    record = shapes.make_records(1, seed=0, image_size=32)[0]
    tiny = dataclasses.replace(record, image_fn=lambda: np.zeros((4, 6, 3), np.uint8), chain="<ANSWER>0<ANSWER_END>")
    settings = synth.SynthSettings(seed=0, min_degradations=1, max_degradations=2, image_format="png",
                                   max_image_side=0, keep_prebuilt_chains=True)
    assert synth.synthesize(tiny, "train", 0, settings, None).error is None
    banner = dataclasses.replace(tiny, image_fn=lambda: np.zeros((4, 900, 3), np.uint8))
    assert synth.synthesize(banner, "train", 0, settings, None).error == (
        f"{record.location} (id {record.id}): image of 900x4 px: the Qwen2.5-VL processor cannot take it: "
        f"absolute aspect ratio must be smaller than 200, got 225.0")


# ---- kind 3: train-only datasets and sources with no usable row ----------------------------------------------

def test_a_train_only_dataset_is_written_and_read(tmp_path):
    summary = synth.run(small_config(tmp_path, num_train=6, num_validation=0))
    assert summary["counts"] == {"train": 6, "validation": 0}
    path = summary["dataset_dir"]
    assert tfds_builder.split_sizes(path) == {"train": 6}
    assert len(tfds_builder.data_source(path, "train")) == 6
    with pytest.raises(ValueError) as raised:
        tfds_builder.data_source(path, "validation")
    assert str(raised.value) == f"{path} has no 'validation' split; it holds ['train']"


def test_the_writer_leaves_out_an_empty_split_and_refuses_when_all_are(tmp_path):
    example = {"id": "a", "image": b"", "question": "q", "options": ["x", "y"], "answer": 0, "chain": "c",
               "rationales": [], "degradation_types": [], "degradation_intensities": [], "degradation_seed": 0,
               "category": "", "source": "s"}
    summary_examples = tfds_builder.non_empty_splits({"train": iter([example]), "validation": iter([])})
    assert list(summary_examples) == ["train"] and list(summary_examples["train"]) == [example]
    with pytest.raises(ValueError) as raised:
        tfds_builder.write_dataset({"train": [], "validation": []}, str(tmp_path))
    assert str(raised.value) == "no split has any example (train, validation): nothing to write"
    assert not os.path.exists(tmp_path / "robust_r1")


def test_a_source_with_no_readable_row_names_itself_the_count_and_why(tmp_path):
    path = tmp_path / "broken.tsv"
    path.write_text("index\timage\tquestion\tA\tB\tanswer\n0\t@@@\tq?\ta\tb\tA\n1\t\tq?\ta\tb\tA\n")
    config = small_config(tmp_path / "work", source="vlmeval_tsv", source_path=str(path), num_train=2,
                          num_validation=0)
    with pytest.raises(SourceError) as raised:
        synth.run(config)
    assert str(raised.value) == (
        f"synth.source='vlmeval_tsv' ({path}) has no usable row: 2 skipped: {path}:2: row index 0: image column is "
        f"not valid base64 (Only base64 data is allowed); {path}:3: row index 1: image column is empty")


def test_a_source_whose_images_are_all_refused_names_itself_the_count_and_why(tmp_path):
    path, ids = _tsv(tmp_path, [(1, 1), (2, 3), (5, 5), (4, 4)])
    config = small_config(tmp_path / "work", source="vlmeval_tsv", source_path=path, num_train=3, num_validation=1)
    with pytest.raises(SourceError) as raised:
        synth.run(config)
    train_lines = [ids.index(r.id) + 2 for r in synth.split_records(config.synth)["train"]]  # in build order
    sizes = {2: "1x1", 3: "3x2", 4: "5x5", 5: "4x4"}
    assert str(raised.value) == (
        f"synth.source='vlmeval_tsv' ({path}): none of the 3 train records is usable (3 skipped: " + "; ".join(
            f"{path}:{line} (id {ids[line - 2]}): image of {sizes[line]} px: smaller than the 8-px minimum side of "
            f"the degradation engine" for line in train_lines) + ")")
    assert not os.path.exists(tmp_path / "work" / "tfds" / "robust_r1")


def test_a_source_too_short_for_the_requested_validation_split_says_so(tmp_path):
    path, _ = _tsv(tmp_path, [(32, 32), (32, 32)])
    config = small_config(tmp_path / "work", source="vlmeval_tsv", source_path=path, num_train=4, num_validation=2)
    with pytest.raises(SourceError) as raised:
        synth.run(config)
    assert str(raised.value) == (
        f"synth.source='vlmeval_tsv' ({path}) has 2 usable rows (0 skipped), none left for the validation split "
        f"after num_train=4; lower synth.num_train or set synth.num_validation=0 for a train-only dataset")
