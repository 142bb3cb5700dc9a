"""The entry point: convert and inspect modes end to end, and config errors."""
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "model"))
from hf_reference import hf_model, tiny_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "robust_r1_jax.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf") / "tiny")
    hf_model(tiny_config(), seed=7).save_pretrained(path)
    return path


def test_convert_both_ways_and_inspect(hf_dir, tmp_path):
    from robust_r1_jax.model import hf
    orbax_dir, back = str(tmp_path / "orbax"), str(tmp_path / "back")
    out = _main("--config=configs/convert.py", f"--config.convert.src={hf_dir}", f"--config.convert.dst={orbax_dir}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hf->orbax" in out.stdout
    out = _main("--config=configs/convert.py", f"--config.convert.src={orbax_dir}", f"--config.convert.dst={back}")
    assert out.returncode == 0 and "orbax->hf" in out.stdout, out.stderr[-2000:]
    ids = np.arange(12)[None]
    np.testing.assert_array_equal(np.asarray(hf.load(back)(ids)), np.asarray(hf.load(hf_dir)(ids)))
    out = _main("--config=configs/inspect.py", f"--config.inspect.path={orbax_dir}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "language: 107,072" in out.stdout and "visual: 94,208" in out.stdout and "total: 201,280" in out.stdout
    # the exported HF directory is readable by everyone (safetensors alone writes 0600)
    assert {oct(os.stat(os.path.join(back, f)).st_mode & 0o777) for f in os.listdir(back)} == {"0o644"}


def test_inspect_without_a_path_says_which_flag_to_set():
    out = _main("--config=configs/inspect.py")
    assert out.returncode != 0 and "--config.inspect.path=DIR" in out.stderr


def test_a_3b_recipe_without_init_from_names_the_missing_field(tmp_path):
    out = _main("--config=configs/sft_qwen2_5_vl_3b.py", f"--config.workdir={tmp_path / 'w'}", "--config.mesh.fsdp=1")
    assert out.returncode != 0 and "config.model.init_from is required for the '3b' preset" in out.stderr


def test_misspelt_config_key_is_a_clear_error():
    out = _main("--config=configs/convert.py", "--config.convert.srcc=/x")
    assert out.returncode != 0
    assert 'Did you mean "src"' in out.stderr


def test_convert_from_a_folder_without_a_checkpoint(tmp_path):
    out = _main("--config=configs/convert.py", f"--config.convert.src={tmp_path}", f"--config.convert.dst={tmp_path}/o")
    assert out.returncode != 0
    assert "holds neither a Hugging Face checkpoint" in out.stderr
