"""Impossible sampling settings are config errors, found with the rest of the config before any model loads, one
``error:`` line each, in every mode that samples (rl, eval, generate, demo, web)."""
import importlib.util
import os
import subprocess
import sys

import pytest

from robust_r1_jax import main
from robust_r1_jax.eval import inference
from robust_r1_jax.model import sampling
from robust_r1_jax.train import run as train_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAD = dict(max_new_tokens=0, temperature=-1.0, top_p=0.0, top_k=-1)
LINES = ["config.{s}.max_new_tokens=0: must be a whole number of tokens, at least 1",
         "config.{s}.temperature=-1.0: must be a finite number >= 0 (0 = greedy decoding)",
         "config.{s}.top_p=0.0: must be in (0, 1] (1 = off; 0 would keep no token)",
         "config.{s}.top_k=-1: must be a whole number >= 0 (0 = off)"]


def _config(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the config check must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")
    monkeypatch.setattr(inference, "load_model", refuse)
    monkeypatch.setattr(train_run, "build_model", refuse)
    monkeypatch.setattr(train_run, "load_processor", refuse)


def _errors(config, capsys) -> list[str]:
    with pytest.raises(SystemExit) as stopped:
        main.run_mode(config)
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line.removeprefix("error: ") for line in err.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("mode", ["eval_robust", "generate", "web", "demo"])
def test_each_sampling_mode_lists_every_bad_setting_before_loading(mode, no_model, capsys, tmp_path):
    config = _config(mode)
    section = config.rl.sampling if mode == "demo" else config.sampling
    for field, value in BAD.items():
        section[field] = value
    if mode == "generate":
        config.image, config.question = str(tmp_path / "missing.png"), "q"
    config.workdir = str(tmp_path / "w")
    assert _errors(config, capsys) == [line.format(s="rl.sampling" if mode == "demo" else "sampling")
                                       for line in LINES]
    assert not (tmp_path / "w").exists()


def test_rl_lists_sampling_and_grpo_problems_with_the_rest_of_the_config(no_model, capsys, tmp_path):
    config = _config("grpo_qwen2_5_vl_3b")
    for field, value in BAD.items():
        config.sampling[field] = value
    config.grpo.overlong = "clip"
    config.workdir = str(tmp_path / "w")
    config.data.dataset_dir = str(tmp_path / "missing")
    errors = _errors(config, capsys)
    assert errors[-5:] == [line.format(s="sampling") for line in LINES] + [
        "config.grpo.overlong='clip': must be one of none, mask, soft_penalty"]
    assert any("dataset_dir" in line for line in errors[:-5])   # reported together with the rest


def test_a_model_folders_impossible_setting_is_named_with_its_file(tmp_path):
    from robust_r1_jax.eval import generate
    shipped = sampling.Shipped(str(tmp_path / "generation_config.json"), dict(temperature=0.7, top_p=0.0), ())
    user = sampling.unset_config()
    assert generate.shipped_problems(user, shipped) == [
        f"{tmp_path / 'generation_config.json'}: top_p=0.0: must be in (0, 1] (1 = off; 0 would keep no token)"]
    user.top_p = 0.9                       # the user's value wins: the file's is never used
    assert generate.shipped_problems(user, shipped) == []


def test_good_settings_pass_and_unset_ones_are_left_to_the_folder():
    assert sampling.problems(sampling.default_config()) == []
    assert sampling.problems(sampling.unset_config()) == []
    c = sampling.default_config(temperature=float("nan"), suppress_vision_tokens=False)
    assert sampling.problems(c) == ["config.sampling.temperature=nan: must be a finite number >= 0 (0 = greedy "
                                    "decoding)"]


def test_the_command_line_prints_one_error_line_per_setting(tmp_path):
    """What a user sees: `--config.sampling.top_p=0` on the eval mode ends at once, exit 2, no traceback."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "robust_r1_jax.main", "--config=configs/eval_robust.py",
                          "--config.sampling.top_p=0", "--config.sampling.top_k=-2"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("error: ")] == [
        "error: config.sampling.top_p=0.0: must be in (0, 1] (1 = off; 0 would keep no token)",
        "error: config.sampling.top_k=-2: must be a whole number >= 0 (0 = off)"]
