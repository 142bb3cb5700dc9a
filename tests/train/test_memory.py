"""The per-device memory estimate made before any weight is read (train/memory.py): the TPU compiler's own figures
for the shipped recipes (configs/aot.py, recorded in WORKSPACE.md "Scale configs") within 25%, one error line
when a recipe cannot fit, and a recipe written for another model size stopped before loading."""
import os
import sys

import jax
import pytest

from robust_r1_jax import aot
from robust_r1_jax.model import config as model_config
from robust_r1_jax.train import memory, run, validate

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIB = 1024 ** 3

# recipe, overrides, chips of the slice, kind, the compiler's peak per chip in GiB of the recipe's largest program
# (libtpu 0.0.42.1 on this project's CPU host; WORKSPACE.md "Scale configs")
# the 3B SFT recipe before packing: 16 rows of 2048 tokens, one image each
UNPACKED_3B = ("data.packing=False", "data.global_batch_size=16", "data.seq_len=2048", "data.image_slots=1",
               "data.patch_bucket=1024")
COMPILED = [
    ("sft_qwen2_5_vl_3b.py:v5p8", (), 4, "sft", 64.2),
    ("sft_qwen2_5_vl_3b.py:v5p8", UNPACKED_3B, 4, "sft", 64.1),
    ("sft_qwen2_5_vl_3b.py:v5p8", UNPACKED_3B + ("model.remat=dots",), 4, "sft", 30.5),
    ("sft_qwen2_5_vl_3b.py:v6e8", (), 8, "sft", 15.6),
    ("sft_qwen2_5_vl_3b.py:v6e8", UNPACKED_3B, 8, "sft", 15.5),
    ("grpo_qwen2_5_vl_3b.py:v5p8", (), 4, "rl", 48.7),
    ("grpo_qwen2_5_vl_3b.py:v6e8", (), 8, "rl", 24.0),
    ("sft_qwen2_5_vl_7b.py:v5p16", ("model.remat=full",), 8, "sft", 18.1),
    ("sft_qwen2_5_vl_7b.py:v5p16", (), 8, "sft", 28.6),
    ("sft_qwen2_5_vl_7b.py:v6e16", (), 16, "sft", 14.3),
    ("grpo_qwen2_5_vl_7b.py:v6e16", (), 16, "rl", 22.8),
    ("grpo_qwen2_5_vl_7b.py:v5p16", (), 8, "rl", 46.1),
]


def recipe(spec, overrides=()):
    return aot.apply_overrides(aot.load_recipe(os.path.join(ROOT, "configs", spec)), overrides)


def abstract_mesh(chips):
    return jax.sharding.AbstractMesh((1, chips, 1), ("data", "fsdp", "tensor"))


@pytest.mark.slow   # building the abstract 3B and 7B models takes ~20 s each on this project's CPU machine
@pytest.mark.parametrize("spec, overrides, chips, kind, compiled_gib", COMPILED)
def test_the_estimate_is_within_25_percent_of_the_compilers_figure(spec, overrides, chips, kind, compiled_gib):
    config = recipe(spec, overrides)
    estimate = memory.estimate(config, aot.recipe_model_config(config), abstract_mesh(chips), kind, "tpu")
    assert abs(estimate.total / GIB / compiled_gib - 1) <= 0.25, estimate.describe()


@pytest.mark.slow
def test_what_the_states_cost_follows_from_the_parameter_counts():
    """3B SFT on 4 chips: 3.086B trained x (fp32 weight + 2 moments) / 4 and 0.669B frozen x 4 B / 4 (SPEC §5)."""
    config = recipe("sft_qwen2_5_vl_3b.py:v5p8")
    parts = memory.estimate(config, aot.recipe_model_config(config), abstract_mesh(4), "sft", "tpu").parts
    assert parts["trained parameters"] / 1e9 == pytest.approx(3.086 * 4 / 4, rel=0.01)
    assert parts["AdamW moments"] == 2 * parts["trained parameters"]
    assert parts["frozen parameters"] / 1e9 == pytest.approx(0.669 * 4 / 4, rel=0.01)


@pytest.mark.slow
def test_a_recipe_that_cannot_fit_is_one_line_with_estimate_memory_and_overrides_that_fit():
    config = recipe("sft_qwen2_5_vl_3b.py:v5p8")   # remat "none", 2 packed rows of 4096 tokens per chip
    cfg = aot.recipe_model_config(config)
    with pytest.raises(validate.ConfigError) as error:
        memory.check_fits(config, cfg, abstract_mesh(4), "sft", platform="tpu", available=(40 * GIB, "test chip"))
    (line,) = error.value.problems
    assert line.startswith("memory: the sft recipe needs about 65.1 GiB per device (train step: ")
    assert "but one device has 40.0 GiB (test chip, 4 devices); these overrides would fit: --config.model.remat=dots" \
        in line
    config.model.remat = "dots"
    assert memory.estimate(config, cfg.replace(remat="dots"), abstract_mesh(4), "sft", "tpu").total <= 40 * GIB


@pytest.mark.slow
def test_a_slice_too_small_for_any_setting_names_the_recipes_slices():
    """The issue's case: the 3B SFT recipe on one 24 GB CPU host (the XLA attention path, no flash kernel)."""
    config = recipe("sft_qwen2_5_vl_3b.py")
    cfg = aot.recipe_model_config(config, platform="cpu")
    with pytest.raises(validate.ConfigError) as error:
        memory.check_fits(config, cfg, abstract_mesh(1), "sft", platform="cpu",
                          available=(22 * GIB, "available host memory"))
    (line,) = error.value.problems
    assert ("but one device has 22.0 GiB (available host memory, 1 device); no remat, chunk, accumulation or "
            "length setting fits 1 device: run on the devices the recipe was written for (a scale variant") in line


@pytest.mark.slow
def test_grpo_overrides_shrink_the_log_prob_chunk_and_micro_batch_before_the_completions():
    config = recipe("grpo_qwen2_5_vl_3b.py:v6e8")
    cfg = aot.recipe_model_config(config)
    full = memory.estimate(config, cfg, abstract_mesh(8), "rl", "tpu").total
    flags = memory.fitting_overrides(config, cfg, abstract_mesh(8), "rl", int(full * 0.8), "tpu")
    assert flags == ["--config.grpo.logprob_chunk=64"]   # remat is "full" already; the numbers do not change
    # then the update in micro-batches of whole prompt groups (2 per chip here: at most 2), the loss unchanged
    flags = memory.fitting_overrides(config, cfg, abstract_mesh(8), "rl", int(full * 0.6), "tpu")
    assert flags == ["--config.grpo.logprob_chunk=64", "--config.grpo.update_microbatches=2"]
    flags = memory.fitting_overrides(config, cfg, abstract_mesh(8), "rl", int(full * 0.55), "tpu")
    assert flags[:2] == ["--config.grpo.logprob_chunk=64", "--config.grpo.update_microbatches=2"]
    assert flags[2].startswith("--config.sampling.max_new_tokens=")
    assert int(flags[2].split("=")[1]) < config.sampling.max_new_tokens


def test_a_7b_model_under_the_3b_recipe_stops_naming_the_7b_recipe():
    config = recipe("sft_qwen2_5_vl_3b.py")
    config.model.init_from = "/models/Qwen2.5-VL-7B-Instruct"
    (line,) = validate.model_size_problems(config, model_config.preset("7b"), "sft")
    assert line == ("config.model.init_from='/models/Qwen2.5-VL-7B-Instruct' holds a Qwen2.5-VL-7B model (28 layers "
                    "x 3584), but this recipe is written for the '3b' preset (Qwen2.5-VL-3B, 36 layers x 2048): use "
                    "configs/sft_qwen2_5_vl_7b.py")
    grpo = recipe("grpo_qwen2_5_vl_7b.py")
    grpo.model.init_from = "/runs/sft_3b/model"
    assert validate.model_size_problems(grpo, model_config.preset("3b"), "rl")[0].endswith(
        "use configs/grpo_qwen2_5_vl_3b.py")
    assert validate.model_size_problems(grpo, model_config.preset("7b"), "rl") == []


def test_the_planned_model_is_read_from_init_froms_own_config(tmp_path):
    """The size comes from the folder (model_config.json here), not from model.preset; nothing is loaded."""
    import json
    from robust_r1_jax.model import orbax_io
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / orbax_io.CONFIG_FILE).write_text(json.dumps(model_config.preset("7b").to_dict()))
    config = recipe("sft_qwen2_5_vl_3b.py:8xh100")
    config.model.init_from = str(folder)
    planned = run.planned_model_config(config)
    assert (planned.text.num_hidden_layers, planned.remat, planned.dtype) == (28, "dots", "bfloat16")
    with pytest.raises(validate.ConfigError, match="use configs/sft_qwen2_5_vl_7b.py"):
        run.check_model_fits(config, abstract_mesh(8), "sft")


def tiny_sft(tmp_path, **train):
    from robust_r1_jax.train import sft
    c = sft.default_config()
    c.workdir = str(tmp_path / "run")
    c.data.dataset_dir = c.data.tokenizer = str(tmp_path)
    c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 4, 384, 16
    for key, value in train.items():
        c.train[key] = value
    return c


def test_a_run_that_cannot_fit_stops_before_reading_anything(tmp_path, monkeypatch, capsys):
    """Through main.run_mode: one error line, exit 2, and neither tokenizer nor model was touched."""
    from robust_r1_jax import main
    from robust_r1_jax.model import loading
    touched = []
    monkeypatch.setattr(loading, "load_processor", lambda *a, **k: touched.append("tokenizer"))
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: touched.append("model"))
    monkeypatch.setattr(memory, "device_memory_bytes", lambda devices=None: (10_000_000, "test device memory"))
    monkeypatch.setattr(validate, "path_problems", lambda config: [])  # no dataset is built: not what is tested
    with pytest.raises(SystemExit) as stop:
        main.run_mode(tiny_sft(tmp_path))
    assert stop.value.code == 2 and touched == []
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "invalid config:" and len(err) == 2
    assert err[1].startswith("error: memory: the sft recipe needs about ") and \
        "but one device has 0.0 GiB (test device memory, 1 device); " in err[1]
    monkeypatch.setattr(memory, "device_memory_bytes", lambda devices=None: (None, "unknown"))
    config = tiny_sft(tmp_path)
    run.check_model_fits(config, abstract_mesh(1), "sft")   # an unknown device memory does not stop a run
    monkeypatch.setattr(memory, "device_memory_bytes", lambda devices=None: (10_000_000, "test device memory"))
    run.check_model_fits(tiny_sft(tmp_path, memory_check=False), abstract_mesh(1), "sft")


def test_the_tiny_estimate_counts_every_part_of_the_step(tmp_path):
    from robust_r1_jax.train import sft
    config = tiny_sft(tmp_path)
    cfg = run.planned_model_config(config)
    est = memory.estimate(config, cfg, abstract_mesh(1), "sft", "cpu")
    n = memory.parameter_elements(cfg, config.train.freeze, abstract_mesh(1))
    assert est.parts["trained parameters"] == 4 * n["trained"] and est.parts["AdamW moments"] == 8 * n["trained"]
    rows, tokens = 4, 4 * 384
    assert est.parts["activations (remat none)"] == (
        tokens * cfg.text.num_hidden_layers * (13 * cfg.text.hidden_size + 6 * cfg.text.intermediate_size) * 4)
    assert est.parts["attention scores"] == 3 * rows * cfg.text.num_attention_heads * 384 * 384 * 4  # xla on CPU
    accumulated = config.copy_and_resolve_references()
    accumulated.train.grad_accum = 2
    assert memory.estimate(accumulated, cfg, abstract_mesh(1), "sft", "cpu").total < est.total
    assert sft.default_config().train.memory_check is True


def test_update_micro_batches_divide_the_updates_activations():
    """grpo.update_microbatches = M: one micro-batch's activations, layer and log-prob chunk (rows / M) beside a
    float32 gradient accumulator; the rest of the step unchanged."""
    from robust_r1_jax.rl import grpo
    config = grpo.default_config()
    config.data.global_batch_size, config.data.seq_len, config.data.patch_bucket = 4, 64, 16
    config.grpo.num_samples, config.sampling.max_new_tokens = 2, 64
    cfg = run.planned_model_config(config)
    whole = memory.estimate(config, cfg, abstract_mesh(1), "rl", "cpu")
    config.grpo.update_microbatches = 2
    half = memory.estimate(config, cfg, abstract_mesh(1), "rl", "cpu")
    assert whole.phase == half.phase == "update"
    n = memory.parameter_elements(cfg, config.train.freeze, abstract_mesh(1))
    assert whole.parts["activations (remat none)"] == 8 * 128 * cfg.text.num_hidden_layers * 4 * (
        13 * cfg.text.hidden_size + 6 * cfg.text.intermediate_size)   # 4 prompts x 2 rows of 64 + 64 tokens, fp32
    for part in ("activations (remat none)", "one layer's backward", "log-prob chunk"):
        assert half.parts[part] * 2 == whole.parts[part], part
    assert half.parts["gradient accumulator (fp32)"] == 4 * n["trained"]
    assert "gradient accumulator (fp32)" not in whole.parts
    assert {k: v for k, v in half.parts.items() if k in whole.parts and "activations" not in k and "backward" not in k
            and "chunk" not in k} == {k: v for k, v in whole.parts.items() if "activations" not in k
                                      and "backward" not in k and "chunk" not in k}


def test_a_mesh_the_devices_cannot_form_names_what_jax_sees_and_the_installs(tmp_path):
    """A GPU recipe variant started where only CPU jax is installed: one line, not a traceback."""
    config = tiny_sft(tmp_path)
    config.mesh.data, config.mesh.fsdp = 1, 8
    with pytest.raises(validate.ConfigError) as error:
        run.build_mesh(config)
    (line,) = error.value.problems
    assert line.startswith("config.mesh (data=1, fsdp=8, tensor=1): mesh {'data': 1, 'fsdp': 8, 'tensor': 1} needs 8 "
                           f"devices, have {jax.device_count()}; JAX sees {jax.device_count()} cpu device")
    assert line.endswith("on NVIDIA GPUs install requirements-gpu.txt, on TPU VMs requirements-tpu.txt "
                         '(WORKSPACE.md "Run")')


def hf_config_folder(tmp_path, cfg_or_json, name="model"):
    """A Hugging Face folder holding only config.json (no weights): all the pre-load checks read."""
    import json
    folder = tmp_path / name
    folder.mkdir()
    hf_json = cfg_or_json if isinstance(cfg_or_json, dict) else cfg_or_json.to_hf()
    (folder / "config.json").write_text(json.dumps(hf_json))
    return str(folder)


def fit_problems(config, chips, kind):
    """The lines of the ConfigError ``run.check_model_fits`` raises (it must raise)."""
    with pytest.raises(validate.ConfigError) as caught:
        run.check_model_fits(config, abstract_mesh(chips), kind)
    return caught.value.problems


def test_a_qwen3_vl_4b_folder_under_the_3b_recipe_names_its_family_and_recipe(tmp_path):
    config = recipe("sft_qwen2_5_vl_3b.py:v5p8")
    config.model.init_from = hf_config_folder(tmp_path, model_config.qwen3_vl_4b())
    assert fit_problems(config, 4, "sft") == [
        f"config.model.init_from={config.model.init_from!r} holds a Qwen3-VL-4B model (36 layers x 2560), but this "
        f"recipe is written for the '3b' preset (Qwen2.5-VL-3B, 36 layers x 2048): use configs/sft_qwen3_vl_4b.py"]


def test_the_qwen3_vl_4b_recipes_check_family_and_size_before_loading(tmp_path):
    grpo = recipe("grpo_qwen3_vl_4b.py")
    grpo.model.init_from = hf_config_folder(tmp_path, model_config.qwen2_5_vl_3b())
    assert fit_problems(grpo, 4, "rl") == [
        f"config.model.init_from={grpo.model.init_from!r} holds a Qwen2.5-VL-3B model (36 layers x 2048), but this "
        f"recipe is written for the 'qwen3_vl_4b' preset (Qwen3-VL-4B, 36 layers x 2560): use "
        f"configs/grpo_qwen2_5_vl_3b.py"]
    # the same shape in the other family is still another model
    same_size = model_config.qwen3_vl_4b().replace(model_type="qwen2_5_vl")
    (line,) = validate.model_size_problems(grpo, same_size, "rl")
    assert line.endswith("holds a Qwen2.5-VL model (36 layers x 2560), but this recipe is written for the "
                         "'qwen3_vl_4b' preset (Qwen3-VL-4B, 36 layers x 2560): no recipe here is written for a "
                         "Qwen2.5-VL model of that size: copy configs/grpo_qwen2_5_vl_3b.py and size its mesh and "
                         "batch for it")
    (line,) = validate.model_size_problems(grpo, model_config.qwen3_vl_8b(), "rl")
    assert line.endswith("no recipe here is written for Qwen3-VL-8B: copy configs/grpo_qwen3_vl_4b.py and size its "
                         "mesh and batch for it")
    assert validate.model_size_problems(grpo, model_config.qwen3_vl_4b(), "rl") == []


def test_a_mixture_of_experts_folder_is_one_config_line(tmp_path):
    config = recipe("sft_qwen3_vl_4b.py")
    folder = hf_config_folder(tmp_path, {"model_type": "qwen3_vl_moe"})
    config.model.init_from = folder
    assert fit_problems(config, 4, "sft") == [
        f"config.model.init_from: {folder}: config.json has model_type 'qwen3_vl_moe': Qwen3-VL mixture-of-experts "
        f"models (30B-A3B, 235B-A22B) are out of scope; use a dense model (Qwen2.5-VL-3B, Qwen2.5-VL-7B, "
        f"Qwen3-VL-2B, Qwen3-VL-4B, Qwen3-VL-8B)"]


def test_a_folder_without_weights_is_one_config_line(tmp_path):
    config = recipe("sft_qwen3_vl_4b.py")
    config.model.init_from = hf_config_folder(tmp_path, model_config.qwen3_vl_4b())
    config.train.memory_check = False
    assert fit_problems(config, 4, "sft") == [
        f"config.model.init_from: checkpoint {config.model.init_from} has a config.json but no weights: neither "
        f"model.safetensors nor model.safetensors.index.json found"]


def test_a_small_models_memory_line_shows_its_parts_in_mib():
    small = memory.Estimate("update", {"params": 40 * 2 ** 20, "grads": 40 * 2 ** 20, "rest": 10})
    assert small.describe() == "0.1 GiB per device (update: params 40.0 MiB, grads 40.0 MiB)"
    assert memory.Estimate("update", {"rest": 10}).describe() == "0.0 GiB per device (update)"
    assert memory.Estimate("train step", {"params": 7 * GIB, "opt": GIB // 2}).describe() == (
        "7.5 GiB per device (train step: params 7.0, opt 0.5)")


def test_a_tokenizer_folder_of_the_other_family_stops_before_the_weights_load(tmp_path):
    """grpo_tiny's demo tokenizer (Qwen2.5-VL's 14-px patches) with a Qwen3-VL folder (config.json only)."""
    import types
    config = recipe("grpo_tiny.py")
    cfg = model_config.qwen3_vl_tiny()
    config.model.init_from = hf_config_folder(tmp_path, cfg)
    processor = types.SimpleNamespace(
        image_token_id=cfg.image_token_id, tokenizer=[0] * cfg.text.vocab_size, directory="runs/demo/tokenizer",
        image_processor=types.SimpleNamespace(patch_size=14, temporal_patch_size=2, merge_size=2))
    with pytest.raises(model_config.ModelFolderError) as caught:
        run.build_model(config, processor, mesh=None)
    assert str(caught.value) == (
        f"the tokenizer in runs/demo/tokenizer does not belong to the model in {config.model.init_from}: the image "
        f"processor cuts (patch, temporal patch, merge) = (14, 2, 2) but the model's vision tower takes (16, 2, 2); "
        f"use the model's own processor: --config.data.tokenizer={config.model.init_from}")
