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


def test_misspelt_config_key_is_one_clear_line():
    out = _main("--config=configs/convert.py", "--config.convert.srcc=/x")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: --config.convert.srcc: the config has no field 'srcc'. "
                                  'Did you mean "src" instead of "srcc"?')


def test_an_unknown_config_variant_is_one_clear_line():
    out = _main("--config=configs/grpo_tiny.py:drgrpo")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: --config=configs/grpo_tiny.py:drgrpo: unknown variant 'drgrpo'; "
                                  "this config knows dapo, dr_grpo, gspo")


def test_a_key_that_lives_in_a_section_is_named_with_its_section():
    out = _main("--config=configs/generate.py", "--config.max_new_tokens=8")
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: --config.max_new_tokens: the config has no field 'max_new_tokens'. "
                                  "The config has it as --config.sampling.max_new_tokens.")


def test_unknown_key_message_lists_each_section_holding_the_field():
    import ml_collections
    from robust_r1_jax.main import unknown_key_message
    config = ml_collections.ConfigDict(dict(a=dict(steps=1), b=dict(c=dict(steps=2)), steps_x=3))
    assert unknown_key_message(AttributeError("'steps'"), ["x", "--config.steps=4"], config) == (
        "--config.steps: the config has no field 'steps'. The config has it as --config.a.steps or "
        "--config.b.c.steps.")
    assert unknown_key_message(AttributeError("'zzz'"), ["x", "--config.zzz=4"], config) == (
        "--config.zzz: the config has no field 'zzz'.")


def test_bad_input_that_ends_a_run_is_one_clear_line(tmp_path):
    """A generate image that is not an image (read before any model loads) and a synth source with no usable row:
    one ``error:`` line naming the file, exit 1, no traceback."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    out = _main("--config=configs/generate.py", f"--config.checkpoint={tmp_path / 'no_model'}",
                f"--config.image={notes}", "--config.question=q")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: {notes}: cannot read the image (cannot identify image file '{notes}')")
    tsv = tmp_path / "broken.tsv"
    tsv.write_text("index\timage\tquestion\tA\tB\tanswer\n0\t\tq?\ta\tb\tA\n")
    out = _main("--config=configs/synth.py", f"--config.workdir={tmp_path / 'synth'}",
                "--config.synth.source=vlmeval_tsv", f"--config.synth.source_path={tsv}",
                "--config.synth.num_train=1", "--config.synth.num_validation=0")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: synth.source='vlmeval_tsv' ({tsv}) has no usable row: 1 skipped: {tsv}:2: row index 0: image "
        f"column is empty")
    out = _main("--config=configs/synth.py", f"--config.workdir={tmp_path / 'synth'}", "--config.synth.source=sharegpt")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "error: unknown synth.source 'sharegpt'; known sources: shapes, aokvqa, robust_r1_jsonl, llamafactory, "
        "vlmeval_tsv")


def test_the_playground_without_a_demo_names_the_demo_command_in_one_line(tmp_path):
    """No checkpoint and no runs/demo where it is started: one error line that says what to run (exit 1)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "robust_r1_jax.main", f"--config={os.path.join(ROOT, 'configs', 'web.py')}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no checkpoint given (--config.checkpoint=...), so the demo model is used")
    assert last.endswith("Run the demo first: python -m robust_r1_jax.main --config=configs/demo.py")


def test_training_config_problems_are_listed_one_per_line_before_any_work(tmp_path):
    """Two simulated devices: a global batch of 3 does not split over them; every problem is named at once."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-m", "robust_r1_jax.main", "--config=configs/sft_tiny.py",
                          f"--config.workdir={tmp_path / 'w'}", "--config.train.steps=0",
                          f"--config.data.dataset_dir={tmp_path / 'missing'}", "--config.data.global_batch_size=3"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: config.train.steps=0: train at least 1 step (a run of 0 steps would export the untrained model)",
        f"error: config.data.dataset_dir={str(tmp_path / 'missing')!r} does not exist (build one with "
        f"configs/synth.py)",
        "error: config.data.tokenizer (a tokenizer directory) is required when model.init_from is empty",
        "error: config.data.global_batch_size=3 is not divisible by the 2 batch shards of the mesh (data=2 x "
        "fsdp=1 over 2 devices): use a multiple of 2"]
    assert "Traceback" not in out.stderr and not (tmp_path / "w").exists()  # nothing was built or written


ORBAX_UNDER_ABSL = """
import sys
from absl import app
import jax.numpy as jnp
from robust_r1_jax import main
from robust_r1_jax.train import checkpoint

def save_and_restore(argv):
    if argv[1] == "quiet":
        main.quiet_library_info()
    saver = checkpoint.Checkpointer(argv[2], keep=1)
    saver.save(1, {"a": jnp.ones(3)}, {}, {})
    saver.restore({"a": jnp.ones(3)})
    saver.close()

app.run(save_and_restore)
"""


def test_orbax_info_lines_are_quiet_under_main(tmp_path):
    def info_lines(*args):
        out = subprocess.run([sys.executable, "-c", ORBAX_UNDER_ABSL, *args], cwd=ROOT, capture_output=True,
                             text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return [line for line in out.stderr.splitlines() if line.startswith("I")]
    assert len(info_lines("loud", str(tmp_path / "a"))) > 10   # what orbax prints for one save and restore
    assert info_lines("quiet", str(tmp_path / "b")) == []


def test_convert_from_a_folder_without_a_checkpoint(tmp_path):
    out = _main("--config=configs/convert.py", f"--config.convert.src={tmp_path}", f"--config.convert.dst={tmp_path}/o")
    assert out.returncode != 0
    assert "holds neither a Hugging Face checkpoint" in out.stderr


def test_a_folder_no_mode_can_use_is_one_error_line(tmp_path):
    """A mixture-of-experts config.json under convert and inspect: one line, exit 2, no traceback."""
    (tmp_path / "moe").mkdir()
    (tmp_path / "moe" / "config.json").write_text('{"model_type": "qwen3_vl_moe"}')
    moe = str(tmp_path / "moe")
    refused = (f"error: {moe}: config.json has model_type 'qwen3_vl_moe': Qwen3-VL mixture-of-experts models "
               f"(30B-A3B, 235B-A22B) are out of scope; use a dense model (Qwen2.5-VL-3B, Qwen2.5-VL-7B, "
               f"Qwen3-VL-2B, Qwen3-VL-4B, Qwen3-VL-8B)")
    for args in ([f"--config={ROOT}/configs/inspect.py", f"--config.inspect.path={moe}"],
                 [f"--config={ROOT}/configs/convert.py", f"--config.convert.src={moe}",
                  f"--config.convert.dst={tmp_path / 'out'}"]):
        out = _main(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1] == refused
