"""The one way every mode (sft, rl, eval, generate, convert, inspect, demo) loads a model, a tokenizer with its
image settings, and checks that the two belong together.

A model directory is one of three layouts, told apart by its files:

* a Hugging Face directory: ``config.json`` + safetensors (``model.hf``);
* an orbax model checkpoint: ``model_config.json`` + ``params/`` (``model.orbax_io``);
* a training checkpoint folder: numbered step directories holding the orbax items ``state`` and ``meta``
  (written by ``train.checkpoint.Checkpointer``). Its layout is data here (the item names below, which the
  trainer imports), so this module needs nothing from ``train``.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from robust_r1_jax import parallel
from robust_r1_jax.model import assets, hf, orbax_io, stacking
from robust_r1_jax.model.config import MissingModelFiles, ModelConfig, ModelFolderError
from robust_r1_jax.model.processor import ImageProcessor, Processor, load_tokenizer
from robust_r1_jax.model.vlm import Qwen25VL

# The items of one training checkpoint step, and the two parameter halves inside its train state.
STATE, DATA, META = "state", "data", "meta"
PARAMETER_HALVES = ("trainable", "frozen")

# A tokenizer folder needs one of these besides tokenizer_config.json: a fast tokenizer, a byte-level BPE's
# vocabulary (merges.txt beside it) or a sentencepiece model.
TOKENIZER_VOCABULARIES = ("tokenizer.json", "vocab.json", "tokenizer.model")

# Special token -> the model config field that must hold its id (small presets take them from the tokenizer).
TOKEN_FIELDS = {"<|image_pad|>": "image_token_id", "<|vision_start|>": "vision_start_token_id",
                "<|vision_end|>": "vision_end_token_id", "<|im_end|>": "eos_token_id",
                "<|endoftext|>": "bos_token_id", "<|video_pad|>": "video_token_id"}


# ---- what a directory holds ---------------------------------------------------------------------------------------
def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def is_orbax_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, orbax_io.CONFIG_FILE))


def is_training_checkpoint(path: str) -> bool:
    """True for a training workdir's checkpoint folder (numbered step directories written by orbax)."""
    if not os.path.isdir(path):
        return False
    return any(name.isdigit() and os.path.isdir(os.path.join(path, name, META)) for name in os.listdir(path))


def read_config(path: str, *, stored_dtype: bool = True) -> ModelConfig:
    """The model config of any of the three layouts, without reading weights; ``param_dtype`` is the dtype the
    weights are stored in (for a Hugging Face folder: its safetensors headers; ``stored_dtype=False`` reads
    config.json alone and keeps the default dtypes). ``ModelFolderError`` for an unsupported family, or
    ``MissingModelFiles`` for a Hugging Face folder without weight files when ``stored_dtype``."""
    if is_hf_dir(path):
        config = hf.model_config(path)  # an unsupported family is named before any weight file is looked for
        if not stored_dtype:
            return config
        stored = hf.stored_dtype(path)
        return config.replace(param_dtype=stored, dtype=stored)
    if is_training_checkpoint(path):
        return _training_meta(path)[0]
    if is_orbax_model(path):
        return orbax_io.read_config(path)
    raise _no_model(path)


def asset_sources(path: str) -> tuple[str, ...]:
    """The folders to take a model's tokenizer, processor and generation configs from, in order of preference
    (``model.assets.carry_over``): the folder itself, or for a training checkpoint folder the run's exported
    ``model/`` beside it, then the run's ``data.tokenizer`` and ``model.init_from`` as its saved config names them."""
    if not is_training_checkpoint(path):
        return (path,)
    run_config = _training_meta(path)[1]
    named = [run_config.get("data", {}).get("tokenizer", ""), run_config.get("model", {}).get("init_from", "")]
    exported = os.path.join(os.path.dirname(os.path.abspath(path)), "model")
    return tuple(p for p in (exported, *named) if p)


def _training_meta(path: str) -> tuple[ModelConfig, dict]:
    """The newest step's model config and run config (a dict; empty when it was not saved as JSON)."""
    manager = ocp.CheckpointManager(os.path.abspath(path), item_names=(STATE, DATA, META))
    try:
        step = manager.latest_step()
        meta = _saved_meta(manager, step, path)
    finally:
        manager.close()
    try:
        run_config = json.loads(meta.get("config") or "{}")
    except (TypeError, json.JSONDecodeError):
        run_config = {}
    return ModelConfig.from_dict(meta["model_config"]), run_config if isinstance(run_config, dict) else {}


# ---- models -------------------------------------------------------------------------------------------------------
def load_model(path: str, dtype: str | None = "float32", *, mesh: jax.sharding.Mesh | None = None,
               step: int | None = None) -> Qwen25VL:
    """The model in ``path`` (any of the three layouts), parameters and compute in ``dtype`` (None: as stored),
    placed on ``mesh`` by the logical-axis rules (None: this process's first device). ``step`` picks a training
    checkpoint's step (default: the newest). FileNotFoundError when ``path`` holds none of the layouts."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory not found: {path}")
    overrides = {} if dtype is None else dict(param_dtype=jnp.dtype(dtype).name, dtype=jnp.dtype(dtype).name)
    if is_hf_dir(path):
        hf.model_config(path)   # an unsupported family is named before the weight files are looked for
        return hf.load(path, dtype=dtype or hf.stored_dtype(path), mesh=mesh)
    if is_orbax_model(path):
        return orbax_io.restore(path, mesh=mesh, **overrides)
    if is_training_checkpoint(path):
        return _restore_training_model(path, step, mesh, overrides)
    raise _no_model(path)


def _no_model(path: str) -> FileNotFoundError:
    if not os.path.isdir(path):
        return FileNotFoundError(f"model directory not found: {path}")
    return FileNotFoundError(f"{path} holds neither a Hugging Face checkpoint (config.json), an orbax model "
                             f"checkpoint ({orbax_io.CONFIG_FILE}) nor a training checkpoint folder")


def _saved_meta(manager: ocp.CheckpointManager, step: int | None, path: str) -> dict:
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {path}")
    return manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]


def _saved_config(manager: ocp.CheckpointManager, step: int | None, path: str) -> ModelConfig:
    return ModelConfig.from_dict(_saved_meta(manager, step, path)["model_config"])


def _restore_training_model(path: str, step: int | None, mesh, overrides: dict) -> Qwen25VL:
    """The trained + frozen parameters of a training checkpoint, without the optimizer state."""
    manager = ocp.CheckpointManager(os.path.abspath(path), item_names=(STATE, DATA, META))
    try:
        step = manager.latest_step() if step is None else step
        config = _saved_config(manager, step, path).replace(**overrides)
        # Written on other devices (a pod slice, several processes): read onto this process's first device.
        fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        saved = manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(fallback_sharding=fallback)}))[STATE]
    finally:
        manager.close()
    values = {}
    for half in PARAMETER_HALVES:
        values.update(nnx.traversals.flatten_mapping(_unwrap_values(saved[half]), sep="."))
    try:  # either layer layout: stacked and unrolled parameters are converted to the config's
        model = stacking.load_flat(nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0))), values)
    except KeyError as e:
        raise ValueError(f"checkpoint {path} step {step} lacks parameters: {e.args[0]}") from e
    return parallel.shard_module(model, mesh) if mesh is not None else model


def _unwrap_values(tree):
    """Saved nnx states may keep each array under a ``value`` key: the plain nested dict of arrays."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {str(k): _unwrap_values(v) for k, v in tree.items()}
    return tree


def with_runtime_settings(model: Qwen25VL, **settings) -> Qwen25VL:
    """The same weights with other compute settings (``dtype``, ``remat``, ``attention_impl``, ``scan_layers``);
    the stored parameter dtype is kept. A change of ``scan_layers`` restacks the parameters (a transient copy),
    keeping them on the mesh they were on."""
    new_cfg = model.config.replace(**settings, param_dtype=model.config.param_dtype)
    if new_cfg == model.config:
        return model
    abstract = nnx.eval_shape(lambda: Qwen25VL(new_cfg, rngs=nnx.Rngs(0)))
    if new_cfg.scan_layers != model.config.scan_layers:
        return stacking.load_flat(abstract, stacking.flat_params(model), _mesh_of(model))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, nnx.to_pure_dict(nnx.state(model)))
    return nnx.merge(graphdef, state)


def _mesh_of(model: Qwen25VL) -> jax.sharding.Mesh | None:
    """The mesh the model's parameters are laid out on; None when they are not on a named sharding."""
    first = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
    sharding = getattr(first, "sharding", None)
    return sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None


# ---- tokenizer and image settings ---------------------------------------------------------------------------------
def load_processor(directory: str, *, min_pixels: int = 0, max_pixels: int = 0, name: str = "",
                   field: str = "") -> Processor:
    """The tokenizer of ``directory`` with its image settings (``preprocessor_config.json``, else Qwen2-VL's);
    a nonzero ``min_pixels`` / ``max_pixels`` overrides the directory's. ``name`` labels the error and ``field``
    (e.g. ``--config.data.tokenizer``) is the setting it tells the user to set. ``MissingModelFiles`` (a
    FileNotFoundError) when the folder
    holds no tokenizer or only a ``tokenizer_config.json`` without the vocabulary files it needs;
    ``ModelFolderError`` when its chat template cannot render an image turn (``check_chat_template``)."""
    owner = f" (model {name!r})" if name else ""
    hint = f"; set {field} to a folder that holds the model's tokenizer" if field else ""
    if not assets.has_tokenizer(directory):
        raise MissingModelFiles(f"no tokenizer (tokenizer.json or tokenizer_config.json) in {directory}{owner}{hint}")
    if not any(os.path.isfile(os.path.join(directory, f)) for f in TOKENIZER_VOCABULARIES):
        # transformers would try to convert a slow tokenizer and blame missing sentencepiece / tiktoken.
        raise MissingModelFiles(f"{directory}{owner} has tokenizer_config.json but none of the vocabulary files "
                                f"it needs ({', '.join(TOKENIZER_VOCABULARIES)}){hint}")
    overrides = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    processor = Processor(load_tokenizer(directory), ImageProcessor.from_pretrained(directory, **overrides),
                          directory=directory)
    check_chat_template(processor, f"{directory}{owner}", hint)
    return processor


def check_chat_template(processor: Processor, where: str, hint: str = "") -> None:
    """``ModelFolderError`` (one line) when the folder's chat template cannot render a user turn with one image:
    a text-only model's template (Qwen3's reads the message content as a string, so Jinja fails on the list of
    parts) would otherwise fail with Jinja's traceback at the first prompt of the run."""
    import jinja2

    try:
        processor.prompt("question", [1])
    except (jinja2.TemplateError, TypeError, ValueError) as e:
        raise ModelFolderError(
            f"{where}: its chat template cannot render a user turn with an image ({type(e).__name__}: {e}); "
            f"a text-only model's tokenizer cannot tokenise these rows{hint or ''}") from e


def token_fields(processor: Processor) -> dict[str, int]:
    """Model config fields (``image_token_id``, ...) set to the tokenizer's special token ids."""
    return {field: processor.token_ids[token] for token, field in TOKEN_FIELDS.items()
            if token in processor.token_ids}


def check_pairing(model, processor: Processor, name: str = "", *, model_dir: str = "", field: str = "") -> None:
    """The tokenizer must use the model's image token id, cut images as its vision tower takes them and fit its
    vocabulary. ``model`` is a model or its ``ModelConfig`` (checked before the weights load); ``model_dir`` is the
    folder the model comes from and ``field`` the setting that picks the tokenizer folder (e.g.
    ``--config.data.tokenizer``). ``ModelFolderError`` naming both folders: a tokenizer folder other than the model's
    is told to use the model's own processor (its preprocessor_config.json cuts images for that tower)."""
    config = model if isinstance(model, ModelConfig) else model.config
    problems = []
    if processor.image_token_id != config.image_token_id:
        problems.append(f"<|image_pad|> is {processor.image_token_id} in the tokenizer but "
                        f"{config.image_token_id} in the model")
    image, vision = processor.image_processor, config.vision
    ours = (image.patch_size, image.temporal_patch_size, image.merge_size)
    theirs = (vision.patch_size, vision.temporal_patch_size, vision.spatial_merge_size)
    if ours != theirs:
        # e.g. a Qwen3-VL model (16-px patches) read with a Qwen2.5-VL tokenizer folder (14-px patches)
        problems.append(f"the image processor cuts (patch, temporal patch, merge) = {ours} but the model's vision "
                        f"tower takes {theirs}")
    if len(processor.tokenizer) > config.text.vocab_size:
        problems.append(f"the tokenizer has {len(processor.tokenizer)} tokens, the model's vocabulary only "
                        f"{config.text.vocab_size}")
    if not problems:
        return
    owner = f"model {name!r}: " if name else ""
    tokenizer_dir = getattr(processor, "directory", "")
    where = (f"the tokenizer in {tokenizer_dir} does not belong to the model in {model_dir}" if tokenizer_dir and
             model_dir else "the tokenizer does not belong to this model")
    if tokenizer_dir and model_dir and os.path.realpath(tokenizer_dir) != os.path.realpath(model_dir):
        advice = (f"use the model's own processor: {field}={model_dir}" if field else
                  f"use the model's own processor (the tokenizer and preprocessor_config.json in {model_dir})")
    else:
        advice = "the folder's tokenizer and preprocessor_config.json must be the model's own"
    raise ModelFolderError(f"{owner}{where}: {'; '.join(problems)}; {advice}")
