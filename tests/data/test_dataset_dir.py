"""data_source / find_dataset_dir: the versioned TFDS folder or the data folder above it (configs/sft_tiny.py)."""
import pytest

from robust_r1_jax.data import tfds_builder


def make_dataset(folder):
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")
    return str(folder)


def test_the_data_folder_above_the_versioned_one_is_accepted(tmp_path):
    versioned = make_dataset(tmp_path / "tfds" / "robust_r1" / "1.0.0")
    assert tfds_builder.find_dataset_dir(versioned) == versioned
    assert tfds_builder.find_dataset_dir(str(tmp_path / "tfds")) == versioned
    assert tfds_builder.find_dataset_dir(str(tmp_path / "tfds" / "robust_r1")) == versioned
    assert tfds_builder.find_dataset_dir(str(tmp_path)) == versioned  # synth's workdir


def test_no_dataset_or_several_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset_dir .*empty holds no TFDS dataset .* configs/synth.py"):
        (tmp_path / "empty").mkdir()
        tfds_builder.find_dataset_dir(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tfds_builder.find_dataset_dir(str(tmp_path / "missing"))
    make_dataset(tmp_path / "tfds" / "robust_r1" / "1.0.0")
    make_dataset(tmp_path / "tfds" / "robust_r1" / "1.1.0")
    with pytest.raises(ValueError, match=r"holds 2 datasets, name one: .*1.0.0, .*1.1.0"):
        tfds_builder.find_dataset_dir(str(tmp_path / "tfds"))
