"""TFDS builder: lossless read-back, identical bytes across runs, never half-written."""

import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from robust_r1_jax.data import tfds_builder
from robust_r1_jax.data.records import encode_image


def _example(index, image_format="png", shape=(33, 47, 3)):
    pixels = np.random.default_rng(index).integers(0, 256, shape, dtype=np.uint8)
    count = index % 4
    return pixels, {
        "id": f"ex-{index}",
        "image": encode_image(pixels, image_format),
        "question": f"Question {index}? ünïcode",
        "options": ["red", "green", "blue", "white"][: 2 + index % 3],
        "answer": index % 2,
        "chain": f"<TYPE>noise(0.{index % 10}0)<TYPE_END>\n...",
        "rationales": [f"because {index}"] * (index % 3),
        "degradation_types": ["noise", "darkness", "lens blur", "graffiti"][:count],
        "degradation_intensities": np.round(np.linspace(0.05, 0.95, count), 2).astype(np.float32),
        "degradation_seed": 1000 + index,
        "category": "colour",
        "source": f"file.json:{index + 1}",
    }


def _split(n, start=0, image_format="png"):
    return [_example(i, image_format) for i in range(start, start + n)]


def _tree_digest(path):
    digests = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as handle:
                digests[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def test_png_read_back_is_lossless_and_ordered(tmp_path):
    train, validation = _split(7), _split(3, start=100)
    path = tfds_builder.write_dataset(
        {"train": [e for _, e in train], "validation": (e for _, e in validation)}, str(tmp_path)
    )
    assert path == os.path.join(str(tmp_path), "robust_r1", "1.0.0")
    assert tfds_builder.split_sizes(path) == {"train": 7, "validation": 3}
    for split, written in (("train", train), ("validation", validation)):
        back = tfds_builder.read_examples(path, split)
        assert len(back) == len(written)
        for (pixels, example), read in zip(written, back):
            np.testing.assert_array_equal(read["image"], pixels)
            for field in ("id", "question", "options", "answer", "chain", "rationales", "degradation_types",
                          "degradation_seed", "category", "source"):
                assert read[field] == example[field], field
            np.testing.assert_array_equal(read["degradation_intensities"], example["degradation_intensities"])
            assert read["degradation_intensities"].dtype == np.float32
    raw = tfds_builder.read_examples(path, "train", decode_images=False)
    assert raw[0]["image"] == train[0][1]["image"]  # the stored bytes are exactly what was written


def test_jpeg_read_back_equals_pil_decode_of_written_bytes(tmp_path):
    train = _split(3, image_format="jpeg")
    path = tfds_builder.write_dataset({"train": [e for _, e in train]}, str(tmp_path), image_format="jpeg")
    for (_, example), read in zip(train, tfds_builder.read_examples(path, "train")):
        expected = np.asarray(Image.open(io.BytesIO(example["image"])).convert("RGB"))
        np.testing.assert_array_equal(read["image"], expected)


def test_two_runs_give_identical_bytes(tmp_path):
    first = tfds_builder.write_dataset({"train": [e for _, e in _split(5)]}, str(tmp_path / "a"))
    second = tfds_builder.write_dataset({"train": [e for _, e in _split(5)]}, str(tmp_path / "b"))
    digests = _tree_digest(first)
    assert any(name.startswith("robust_r1-train.array_record") for name in digests)
    assert "dataset_info.json" in digests and "features.json" in digests
    assert digests == _tree_digest(second)


def test_readable_by_tfds_name_and_grain(tmp_path):
    import grain
    import tensorflow_datasets as tfds

    tfds_builder.write_dataset({"train": [e for _, e in _split(4)]}, str(tmp_path))
    source = tfds.data_source("robust_r1", split="train", data_dir=str(tmp_path))
    ids = list(grain.MapDataset.source(source).map(lambda e: e["id"].decode()))
    assert ids == [f"ex-{i}" for i in range(4)]


def _exploding(n_good):
    for index, (_, example) in enumerate(_split(n_good + 1)):
        if index == n_good:
            raise RuntimeError("injected failure")
        yield example


def test_failure_leaves_nothing_behind(tmp_path):
    data_dir = tmp_path / "out" / "tfds"
    with pytest.raises(RuntimeError, match="injected failure"):
        tfds_builder.write_dataset({"train": _exploding(3)}, str(data_dir))
    assert not os.path.exists(tmp_path / "out")  # every directory it created is gone again
    assert os.listdir(tmp_path) == []


def test_failure_keeps_previous_dataset_intact(tmp_path):
    path = tfds_builder.write_dataset({"train": [e for _, e in _split(2)]}, str(tmp_path))
    before = _tree_digest(path)
    with pytest.raises(RuntimeError, match="injected failure"):
        tfds_builder.write_dataset({"train": _exploding(3)}, str(tmp_path), overwrite=True)
    assert _tree_digest(path) == before
    assert sorted(os.listdir(os.path.dirname(path))) == ["1.0.0"]  # no staging directories left
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tfds_builder.write_dataset({"train": [e for _, e in _split(2)]}, str(tmp_path))
    replaced = tfds_builder.write_dataset({"train": [e for _, e in _split(6)]}, str(tmp_path), overwrite=True)
    assert tfds_builder.split_sizes(replaced) == {"train": 6}


def test_malformed_example_is_named(tmp_path):
    _, example = _example(3)
    example["degradation_intensities"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=rf"train example 0 \(id {example['id']!r}\): 3 degradation types but 1 "
                                         rf"intensities"):
        tfds_builder.write_dataset({"train": [example]}, str(tmp_path))
    _, example = _example(1)
    del example["chain"]
    with pytest.raises(ValueError, match=r"missing \['chain'\]"):
        tfds_builder.write_dataset({"train": [example]}, str(tmp_path))
    with pytest.raises(ValueError, match="unknown split"):
        tfds_builder.write_dataset({"test": []}, str(tmp_path))
    assert os.listdir(tmp_path) == []
