"""A training config checked as a whole before any heavy work (tokenizer, model, compilation, data).

Every problem found becomes one line naming the field, its value and what would work; ``ConfigError`` carries
them all, so one attempt shows everything to fix (``main`` prints the lines alone, without a traceback).
"""
from __future__ import annotations

import os

from robust_r1_jax.model import config as model_config


class ConfigError(ValueError):
    """One or more config problems; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n" + "\n".join(f"  {p}" for p in self.problems))


def _is_local(path: str) -> bool:
    return "://" not in path


def _positive(config, field: str) -> list[str]:
    section, key = field.split(".")
    value = config[section][key]
    return [] if value >= 1 else [f"config.{field}={value}: must be at least 1"]


def schedule_problems(config) -> list[str]:
    problems = []
    if config.train.steps < 1:
        problems.append(f"config.train.steps={config.train.steps}: train at least 1 step (a run of "
                        f"{config.train.steps} steps would export the untrained model)")
    for field in ("train.checkpoint_every", "train.log_every", "train.keep", "train.grad_accum"):
        problems += _positive(config, field)
    if config.train.get("max_consecutive_skips", 0) < 0:
        problems.append(f"config.train.max_consecutive_skips={config.train.max_consecutive_skips}: must be >= 0 "
                        f"(0 never stops)")
    return problems


def path_problems(config) -> list[str]:
    problems = []
    dataset_dir = config.data.dataset_dir
    if not dataset_dir:
        problems.append("config.data.dataset_dir is required (a robust_r1 dataset; build one with configs/synth.py)")
    elif _is_local(dataset_dir) and not os.path.isdir(dataset_dir):
        problems.append(f"config.data.dataset_dir={dataset_dir!r} does not exist (build one with configs/synth.py)")
    elif _is_local(dataset_dir):
        from robust_r1_jax.data import tfds_builder
        try:
            tfds_builder.find_dataset_dir(dataset_dir)
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"config.data.{error}")
    from robust_r1_jax.model.config import SMALL_PRESETS  # here: validating a config needs no model otherwise
    if not config.model.init_from and config.model.preset not in SMALL_PRESETS:
        problems.append(f"config.model.init_from is required for the {config.model.preset!r} preset: a Hugging "
                        f"Face directory, an exported model or a training checkpoint to start from")
    elif not config.model.init_from and not config.data.tokenizer:
        problems.append("config.data.tokenizer (a tokenizer directory) is required when model.init_from is empty")
    for field, value in (("model.init_from", config.model.init_from), ("data.tokenizer", config.data.tokenizer)):
        if value and _is_local(value) and not os.path.exists(value):
            problems.append(f"config.{field}={value!r} does not exist")
    if config.data.get("prompt_style", "project") not in ("project", "upstream"):  # data/rows.py PROMPT_STYLES
        problems.append(f"config.data.prompt_style={config.data.prompt_style!r}: expected 'project' or 'upstream'")
    return problems


def batch_problems(config, mesh, process_count: int) -> list[str]:
    """The global batch must split evenly over the mesh's batch axes (data x fsdp), the processes that feed them,
    and the gradient-accumulation micro-batches."""
    problems, batch = [], config.data.global_batch_size
    if batch < 1:
        return [f"config.data.global_batch_size={batch}: must be at least 1"]
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch % shards:
        problems.append(f"config.data.global_batch_size={batch} is not divisible by the {shards} batch shards of "
                        f"the mesh (data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} over "
                        f"{mesh.devices.size} devices): use a multiple of {shards}")
    if batch % process_count:
        problems.append(f"config.data.global_batch_size={batch} is not divisible by the {process_count} processes")
    accum = config.train.grad_accum
    if accum >= 1 and batch % accum:
        problems.append(f"config.data.global_batch_size={batch} is not divisible by config.train.grad_accum={accum}")
    return problems


def sampling_problems(config, section: str = "sampling") -> list[str]:
    """The impossible values of ``config.<section>`` (``model.sampling.problems``); none when the config has no
    such section (SFT)."""
    from robust_r1_jax.model import sampling
    return sampling.problems(config[section], section) if section in config else []


def check_sampling(config, sections: tuple[str, ...] = ("sampling",), extra: tuple[str, ...] = ()) -> None:
    """Raises ``ConfigError`` listing every impossible sampling setting (and the ``extra`` problems a mode found)
    of a mode that samples (eval, generate, the playground, the demo) before any model loads."""
    problems = [p for section in sections for p in sampling_problems(config, section)] + list(extra)
    if problems:
        raise ConfigError(problems)


def check_training_config(config, mesh, process_count: int, extra: tuple[str, ...] = ()) -> None:
    """Raises ``ConfigError`` listing every problem of an SFT or GRPO config on this mesh: the schedule, paths,
    batch, the sampling section (GRPO's rollouts) and the ``extra`` problems of the loop (GRPO's section)."""
    problems = (schedule_problems(config) + path_problems(config) + batch_problems(config, mesh, process_count)
                + sampling_problems(config) + list(extra))
    if problems:
        raise ConfigError(problems)


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def _size(cfg) -> tuple[int, int, int]:
    return cfg.text.num_hidden_layers, cfg.text.hidden_size, cfg.text.intermediate_size


def _shape(cfg) -> tuple[str, int, int, int]:
    return (cfg.model_type, *_size(cfg))


def recipe_for(preset: str, stage: str) -> str:
    """The shipped recipe of a sized preset for ``stage`` ("sft" / "grpo"), "" when none is written: the configs
    folder names them ``<stage>_<model_type>_<size>.py`` (configs/sft_qwen2_5_vl_3b.py, grpo_qwen3_vl_4b.py)."""
    name = f"{stage}_{model_config.preset(preset).model_type}_{model_config.preset_size(preset)}.py"
    return f"configs/{name}" if os.path.isfile(os.path.join(CONFIGS_DIR, name)) else ""


def _family_recipe(model_type: str, stage: str) -> str:
    """A shipped ``stage`` recipe of the family (the first sized preset that has one), "" when none."""
    return next((recipe for name in model_config.sized_presets()
                 if model_config.preset(name).model_type == model_type and (recipe := recipe_for(name, stage))), "")


def model_size_problems(config, planned, kind: str) -> list[str]:
    """A recipe written for a released model (``model.preset`` outside ``model_config.SMALL_PRESETS``) whose
    ``model.init_from`` holds another family (``model_type``) or size (layers x hidden): its batch, mesh and memory
    plan were written for the preset, so the run stops before any weight loads, naming the folder's family and the
    recipe written for it (or the family's recipe to copy when no recipe has that size). ``planned`` is the model
    config read from ``init_from`` (``train.run.planned_model_config``); ``kind`` "sft" or "rl" picks the recipe."""
    preset = config.model.preset
    if not config.model.init_from or preset in model_config.SMALL_PRESETS or preset not in model_config.PRESETS:
        return []
    expected = model_config.preset(preset)
    if _shape(planned) == _shape(expected):
        return []
    stage = "sft" if kind == "sft" else "grpo"
    layers, hidden, _ = _size(planned)
    family = model_config.FAMILY_NAMES.get(planned.model_type, planned.model_type)
    match = next((name for name in model_config.sized_presets()
                  if _shape(model_config.preset(name)) == _shape(planned)), None)
    held = f"a {model_config.preset_label(match)} model" if match else f"a {family} model"
    recipe = recipe_for(match, stage) if match else ""
    if recipe:
        advice = f"use {recipe}"
    else:
        what = f"{model_config.preset_label(match)}" if match else f"a {family} model of that size"
        template = _family_recipe(planned.model_type, stage)
        copy = f"copy {template}" if template else "copy one"
        advice = f"no recipe here is written for {what}: {copy} and size its mesh and batch for it"
    return [f"config.model.init_from={config.model.init_from!r} holds {held} ({layers} layers x {hidden}), but this "
            f"recipe is written for the {preset!r} preset ({model_config.preset_label(preset)}, {_size(expected)[0]} "
            f"layers x {_size(expected)[1]}): "
            f"{advice}"]
