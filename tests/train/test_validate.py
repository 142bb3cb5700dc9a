"""train/validate.py's path checks: a dataset_dir that exists but holds no dataset is named before any heavy work."""
from robust_r1_jax.train import sft, validate


def _config(dataset_dir, tokenizer):
    config = sft.default_config()
    config.data.dataset_dir = str(dataset_dir)
    config.data.tokenizer = str(tokenizer)
    config.model.preset = "tiny"
    return config


def test_a_folder_without_a_dataset_is_a_config_problem(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "notes").mkdir()
    assert validate.path_problems(_config(tmp_path / "notes", tmp_path / "tok")) == [
        f"config.data.dataset_dir {tmp_path / 'notes'} holds no TFDS dataset (no dataset_info.json in it or in the "
        f"three folder levels below); build one with configs/synth.py"]


def test_synth_s_workdir_is_a_dataset_dir(tmp_path):
    (tmp_path / "tok").mkdir()
    versioned = tmp_path / "work" / "tfds" / "robust_r1" / "1.0.0"
    versioned.mkdir(parents=True)
    (versioned / "dataset_info.json").write_text("{}")
    assert validate.path_problems(_config(tmp_path / "work", tmp_path / "tok")) == []
