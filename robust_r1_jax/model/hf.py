"""Hugging Face checkpoint I/O: ``config.json`` + safetensors (one file or sharded with an index).

``load`` streams tensor by tensor into an abstract (shape-only) model, each tensor converted to the target
dtype and, when a mesh is given, placed straight into its sharding; no full fp32 copy of the model is ever
held on the host. ``save`` writes the layout transformers writes (Qwen2.5-VL: ``visual.*``, ``model.*``, ``lm_head``;
Qwen3-VL: ``model.visual.*``, ``model.language_model.*``, ``lm_head``; ``RULES_BY_FAMILY`` maps the names both ways)
with the source's tokenizer, processor and generation configs, to a temporary directory renamed into place.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from huggingface_hub import split_state_dict_into_shards_factory
from safetensors import safe_open
from safetensors.numpy import save_file

from robust_r1_jax import atomic, parallel
from robust_r1_jax.model import assets, qwen3_vl, stacking
from robust_r1_jax.model.config import MissingModelFiles, ModelConfig, ModelFolderError, resolve_dtype
from robust_r1_jax.model.vlm import Qwen25VL


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor name pattern <-> one parameter path, with the layout change both ways."""
    hf: str          # regex over the normalised HF name; groups are layer indices
    ours: str        # parameter path template, "{0}" for the first group
    to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]


def _t(x, cfg):  # torch Linear [out, in] <-> our [in, out]
    return x.T


def _heads(n_heads: Callable[[ModelConfig], int], head_dim: Callable[[ModelConfig], int]):
    def to_ours(x, cfg):  # [H*D, E] -> [E, H, D]; bias [H*D] -> [H, D]
        return x.reshape(n_heads(cfg), head_dim(cfg), *x.shape[1:]).transpose(
            *range(2, x.ndim + 1), 0, 1) if x.ndim == 2 else x.reshape(n_heads(cfg), head_dim(cfg))

    def to_hf(x, cfg):
        return x.reshape(x.shape[0], -1).T if x.ndim == 3 else x.reshape(-1)
    return to_ours, to_hf


def _out_heads(n_heads, head_dim):
    def to_ours(x, cfg):  # [E, H*D] -> [H, D, E]
        return x.T.reshape(n_heads(cfg), head_dim(cfg), -1)

    def to_hf(x, cfg):
        return x.reshape(-1, x.shape[-1]).T
    return to_ours, to_hf


def _qkv():
    def to_ours(x, cfg):  # [3*E, E] -> [E, 3, H, D]; bias [3*E] -> [3, H, D]
        v = cfg.vision
        if x.ndim == 1:
            return x.reshape(3, v.num_heads, v.head_dim)
        return x.T.reshape(x.shape[1], 3, v.num_heads, v.head_dim)

    def to_hf(x, cfg):
        return x.reshape(-1) if x.ndim == 3 else x.reshape(x.shape[0], -1).T
    return to_ours, to_hf


def _patch():
    def to_ours(x, cfg):  # Conv3d [E, C, T, P, P] -> [C*T*P*P, E]
        return x.reshape(x.shape[0], -1).T

    def to_hf(x, cfg):
        v = cfg.vision
        return x.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return to_ours, to_hf


_same = (lambda x, cfg: x, lambda x, cfg: x)
_lin = (_t, _t)
_q = _heads(lambda c: c.text.num_attention_heads, lambda c: c.text.head_dim)
_kv = _heads(lambda c: c.text.num_key_value_heads, lambda c: c.text.head_dim)
_o = _out_heads(lambda c: c.text.num_attention_heads, lambda c: c.text.head_dim)
_vproj = _out_heads(lambda c: c.vision.num_heads, lambda c: c.vision.head_dim)

_TEXT = [
    (r"model\.embed_tokens\.weight", "language.embed", _same),
    (r"model\.norm\.weight", "language.norm.scale", _same),
    (r"lm_head\.weight", "language.lm_head.kernel", _lin),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", "language.layers.{0}.input_norm.scale", _same),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight",
     "language.layers.{0}.post_attention_norm.scale", _same),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.(?:weight|bias)", None, _q),
    (r"model\.layers\.(\d+)\.self_attn\.[kv]_proj\.(?:weight|bias)", None, _kv),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight", "language.layers.{0}.attn.o.kernel", _o),
    *[(rf"model\.layers\.(\d+)\.mlp\.{n}_proj\.weight", f"language.layers.{{0}}.mlp.{n}.kernel", _lin)
      for n in ("gate", "up", "down")],
]


def _merger(hf: str, ours: str) -> list:
    """A Qwen3-VL patch merger (LayerNorm, linear_fc1, linear_fc2) at ``hf`` <-> ours at ``ours``."""
    return [(rf"{hf}\.norm\.weight", f"{ours}.norm.scale", _same), (rf"{hf}\.norm\.bias", f"{ours}.norm.bias", _same),
            *[(rf"{hf}\.linear_fc{i}\.weight", f"{ours}.mlp.fc{i}.kernel", _lin) for i in (1, 2)],
            *[(rf"{hf}\.linear_fc{i}\.bias", f"{ours}.mlp.fc{i}.bias", _same) for i in (1, 2)]]


def _vision_blocks(norm_bias: bool, mlp: Sequence[tuple[str, str]]) -> list:
    """The ViT block rules (``visual.blocks.N``) both towers share: norm1 / norm2, the fused qkv and the output
    projection with biases, and the MLP's linears with biases. What differs: the norms' biases (Qwen3-VL's LayerNorm
    has them, Qwen2.5-VL's RMSNorm not) and ``mlp``, the (HF linear name, our linear name) pairs in order."""
    hf, ours = r"visual\.blocks\.(\d+)", "visual.blocks.{0}"
    norms = ("norm1", "norm2")
    return [
        *[(rf"{hf}\.{n}\.weight", f"{ours}.{n}.scale", _same) for n in norms],
        *[(rf"{hf}\.{n}\.bias", f"{ours}.{n}.bias", _same) for n in (norms if norm_bias else ())],
        (rf"{hf}\.attn\.qkv\.weight", f"{ours}.attn.qkv.kernel", _qkv()),
        (rf"{hf}\.attn\.qkv\.bias", f"{ours}.attn.qkv.bias", _qkv()),
        (rf"{hf}\.attn\.proj\.weight", f"{ours}.attn.proj.kernel", _vproj),
        (rf"{hf}\.attn\.proj\.bias", f"{ours}.attn.proj.bias", _same),
        *[(rf"{hf}\.mlp\.{h}\.weight", f"{ours}.mlp.{o}.kernel", _lin) for h, o in mlp],
        *[(rf"{hf}\.mlp\.{h}\.bias", f"{ours}.mlp.{o}.bias", _same) for h, o in mlp],
    ]


# Qwen3-VL: the tower of model/qwen3_vl.py, the Qwen2 text names plus q/k norms (no attention biases).
QWEN3_VL_RULES: tuple[Rule, ...] = tuple(Rule(h, o, *fns) for h, o, fns in [
    (r"visual\.patch_embed\.proj\.weight", "visual.patch_embed.kernel", _patch()),
    (r"visual\.patch_embed\.proj\.bias", "visual.patch_embed.bias", _same),
    (r"visual\.pos_embed\.weight", "visual.pos_embed", _same),
    *_vision_blocks(norm_bias=True, mlp=[(f"linear_fc{i}", f"fc{i}") for i in (1, 2)]),
    *_merger(r"visual\.merger", "visual.merger"),
    *_merger(r"visual\.deepstack_merger_list\.(\d+)", "visual.deepstack_mergers.{0}"),
    *_TEXT,
    *[(rf"model\.layers\.(\d+)\.self_attn\.{n}_norm\.weight", f"language.layers.{{0}}.attn.{n}_norm.scale", _same)
      for n in ("q", "k")],
])

RULES: tuple[Rule, ...] = tuple(Rule(h, o, *fns) for h, o, fns in [
    (r"visual\.patch_embed\.proj\.weight", "visual.patch_embed.kernel", _patch()),
    *_vision_blocks(norm_bias=False, mlp=[(f"{n}_proj", n) for n in ("gate", "up", "down")]),
    (r"visual\.merger\.ln_q\.weight", "visual.merger.norm.scale", _same),
    (r"visual\.merger\.mlp\.0\.weight", "visual.merger.fc1.kernel", _lin),
    (r"visual\.merger\.mlp\.0\.bias", "visual.merger.fc1.bias", _same),
    (r"visual\.merger\.mlp\.2\.weight", "visual.merger.fc2.kernel", _lin),
    (r"visual\.merger\.mlp\.2\.bias", "visual.merger.fc2.bias", _same),
    *_TEXT,
])

RULES_BY_FAMILY = {"qwen2_5_vl": RULES, "qwen3_vl": QWEN3_VL_RULES}


def normalise_name(name: str) -> str:
    """transformers 5 module names (``model.visual``, ``model.language_model``) -> the checkpoint layout."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def _our_path(rule: Rule, match: re.Match, hf_name: str) -> str:
    if rule.ours is not None:
        return rule.ours.format(*match.groups())
    proj = re.search(r"self_attn\.([qkv])_proj\.(weight|bias)", hf_name)
    leaf = "kernel" if proj.group(2) == "weight" else "bias"
    return f"language.layers.{match.group(1)}.attn.{proj.group(1)}.{leaf}"


def match_rule(hf_name: str, rules: Sequence[Rule] = RULES) -> tuple[Rule, str] | None:
    name = normalise_name(hf_name)
    for rule in rules:
        m = re.fullmatch(rule.hf, name)
        if m:
            return rule, _our_path(rule, m, name)
    return None


# ---- reading ---------------------------------------------------------------------------------------------------
def read_config(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} is not a Hugging Face checkpoint directory: no config.json")
    with open(cfg_path) as f:
        return json.load(f)


def model_config(path: str, **overrides) -> ModelConfig:
    """The ``ModelConfig`` of the folder's ``config.json`` (no weight read); ``ModelFolderError`` naming the folder
    when its family is one this package does not implement."""
    try:
        return ModelConfig.from_hf(read_config(path), **overrides)
    except ModelFolderError as error:
        raise ModelFolderError(f"{path}: {error}") from error


def weight_files(path: str) -> dict[str, str]:
    """tensor name -> safetensors file, from the index when sharded; every listed shard must exist
    (``MissingModelFiles``, a FileNotFoundError, otherwise)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        missing = sorted({s for s in weight_map.values() if not os.path.isfile(os.path.join(path, s))})
        if missing:
            raise MissingModelFiles(f"checkpoint {path}: shard(s) listed in model.safetensors.index.json are "
                                    f"missing: {', '.join(missing)}")
        return {k: os.path.join(path, s) for k, s in weight_map.items()}
    single = os.path.join(path, "model.safetensors")
    if not os.path.isfile(single):
        raise MissingModelFiles(f"checkpoint {path} has a config.json but no weights: neither model.safetensors nor "
                             f"model.safetensors.index.json found")
    with safe_open(single, framework="numpy") as f:
        return {k: single for k in f.keys()}


def stored_dtype(path: str) -> str:
    """The dtype the folder's floating-point tensors are stored in (read from the safetensors headers, not from
    ``config.json``, which may say otherwise); the most common one when they differ, by tensor count."""
    counts: dict[str, int] = {}
    files = weight_files(path)
    for file in sorted(set(files.values())):
        with safe_open(file, framework="numpy") as f:
            for name in f.keys():
                kind = f.get_slice(name).get_dtype()
                counts[kind] = counts.get(kind, 0) + 1
    floating = {k: n for k, n in counts.items() if k.startswith(("F", "BF"))} or counts
    return _SAFETENSORS_DTYPES.get(max(floating, key=floating.get), "float32")


# safetensors header dtype -> numpy / JAX name
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def abstract_model(config: ModelConfig) -> Qwen25VL:
    """The model ``config`` describes (either family), shapes only (``nnx.eval_shape``)."""
    return nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0)))


def load(path: str, dtype=jnp.float32, *, mesh: jax.sharding.Mesh | None = None,
         config_overrides: dict | None = None) -> Qwen25VL:
    """A ``Qwen25VL`` with the weights of a local Hugging Face directory, parameters stored in ``dtype``."""
    param_dtype = resolve_dtype(dtype)
    overrides = dict(config_overrides or {})
    overrides.setdefault("param_dtype", jnp.dtype(param_dtype).name)
    overrides.setdefault("dtype", jnp.dtype(param_dtype).name)
    config = model_config(path, **overrides)
    model = abstract_model(config)
    graphdef, state = nnx.split(model)
    targets = _per_layer_targets(state)
    files = weight_files(path)

    problems, unexpected, seen = [], [], set()
    pending: dict[int, dict[int, np.ndarray]] = {}   # id(stacked parameter) -> its layers read so far
    by_file: dict[str, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in sorted(by_file.items()):
        with safe_open(file, framework="numpy") as f:
            for name in sorted(names):
                hit = match_rule(name, RULES_BY_FAMILY[config.model_type])
                if hit is None:
                    unexpected.append(name)
                    continue
                rule, ours = hit
                if ours == "language.lm_head.kernel" and config.text.tie_word_embeddings:
                    continue  # tied: the embedding is the head
                if ours not in targets:
                    unexpected.append(name)
                    continue
                var, layer = targets[ours]
                want_shape = tuple(var.value.shape)[0 if layer is None else 1:]
                raw = f.get_tensor(name)
                try:
                    value = rule.to_ours(raw, config)
                except ValueError:
                    value = None
                seen.add(ours)
                if value is None or tuple(value.shape) != want_shape:
                    problems.append(f"{name}: shape {tuple(raw.shape)} does not fit {ours} {want_shape}")
                    continue
                value = value.astype(jnp.dtype(var.value.dtype))
                if layer is None:
                    _place(var, value, mesh)
                    continue
                # Stacked layout: each layer's tensor waits until all of its parameter's layers are read.
                layers = pending.setdefault(id(var), {})
                layers[layer] = value
                if len(layers) == var.value.shape[0]:
                    _place(var, np.stack([layers.pop(i) for i in range(len(layers))]), mesh)
    missing = sorted(set(targets) - seen)
    if missing or unexpected or problems:
        lines = [f"checkpoint {path} does not match the {config.model_type} model built from its config.json:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {', '.join(sorted(unexpected))}")
        if problems:
            lines.append(f"  mis-shaped ({len(problems)}): " + "; ".join(problems))
        raise ValueError("\n".join(lines))
    return nnx.merge(graphdef, state)


def _per_layer_targets(state) -> dict[str, tuple[nnx.Variable, int | None]]:
    """Per-layer parameter path (the rules' names) -> (variable, layer index in it, None when not stacked)."""
    targets = {}
    for p, var in nnx.to_flat_state(state):
        path = ".".join(map(str, p))
        if stacking.is_stacked(path):
            targets.update({stacking.unrolled_name(path, i): (var, i) for i in range(var.value.shape[0])})
        else:
            targets[path] = (var, None)
    return targets


def _place(var: nnx.Variable, value: np.ndarray, mesh) -> None:
    if mesh is None:
        var.value = jnp.asarray(value)
        return
    axes = var.get_metadata().get("logical_axes")
    var.value = jax.device_put(value, parallel.named_sharding(mesh, axes, value.shape))


# ---- writing ---------------------------------------------------------------------------------------------------
def hf_tensors(model: Qwen25VL):
    """Yields (hf_name, numpy array) for every parameter, in the checkpoint layout (stacked layers one by one)."""
    config = model.config
    _, state = nnx.split(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        ours = ".".join(map(str, path))
        if not stacking.is_stacked(ours):
            yield _hf_tensor(ours, var.value, config)
            continue
        for i in range(var.value.shape[0]):
            yield _hf_tensor(stacking.unrolled_name(ours, i), var.value[i], config)


def _hf_tensor(ours: str, value: jax.Array, config: ModelConfig) -> tuple[str, np.ndarray]:
    rules = RULES_BY_FAMILY[config.model_type]
    name = hf_name_for(ours, rules)
    rule, _ = match_rule(name, rules)
    if config.model_type == qwen3_vl.MODEL_TYPE:
        name = qwen3_vl.checkpoint_name(name)
    return name, rule.to_hf(np.asarray(jax.device_get(value)), config)


def hf_name_for(ours: str, rules: Sequence[Rule] = RULES) -> str:
    """Our parameter path -> the normalised HF tensor name (the rules read backwards)."""
    for rule in rules:
        template = rule.ours or "language.layers.{0}.attn.{proj}.{leaf}"
        pattern = re.escape(template).replace(r"\{0\}", r"(\d+)").replace(r"\{proj\}", "([qkv])") \
            .replace(r"\{leaf\}", "(kernel|bias)")
        m = re.fullmatch(pattern, ours)
        if not m:
            continue
        if rule.ours is None:
            layer, proj, leaf = m.groups()
            name = f"model.layers.{layer}.self_attn.{proj}_proj.{'weight' if leaf == 'kernel' else 'bias'}"
            if re.fullmatch(rule.hf, name):
                return name
            continue
        hf = rule.hf.replace("\\.", ".").replace("(?:weight|bias)", "weight")
        for g in m.groups():
            hf = hf.replace(r"(\d+)", g, 1)
        return hf
    raise KeyError(f"no Hugging Face name for parameter {ours}")


# The transformers release whose Qwen2.5-VL config.json layout ``ModelConfig.to_hf`` writes and whose loaders the
# exports are tested against (requirements.txt pins it; tests/model/test_export.py checks the two agree). It goes
# into config.json as ``save_pretrained`` does: without it transformers >= 5 takes a local tokenizer for one with
# Mistral's broken pre-tokenizer regex and warns, advising ``fix_mistral_regex=True``, which would change Qwen's
# tokenisation.
TRANSFORMERS_VERSION = "5.17.0"

# transformers' save_pretrained shards at 50GB since v5; the hub's own default (and most hub checkpoints, the
# Qwen2.5-VL ones included) at 5GB, which also keeps single files under object stores' upload limits.
MAX_SHARD_SIZE = "5GB"


def save(model: Qwen25VL, path: str, *, max_shard_size: int | str = MAX_SHARD_SIZE, dtype=None,
         asset_sources: Sequence[str] = (), image_processor=None) -> None:
    """Writes a complete Hugging Face model folder at ``path``: ``config.json`` (with ``dtype``), the weights as
    ``model.safetensors`` or, above ``max_shard_size`` (bytes or "5GB"), shards plus
    ``model.safetensors.index.json`` split as ``save_pretrained`` splits them (huggingface_hub's splitter), and the
    tokenizer, chat template, processor and generation configs carried over from ``asset_sources``
    (``model.assets.carry_over``). ``dtype`` (None: the model's parameter dtype) is the stored dtype;
    ``config.json`` also names ``transformers_version`` (``TRANSFORMERS_VERSION``).

    The folder is filled beside ``path`` and renamed into place (``atomic.replace_dir``): an existing folder stays
    whole and loadable until the new one is complete. Files get the modes ``open()`` gives (0644 under umask 022).
    """
    out_dtype = jnp.dtype(resolve_dtype(model.config.param_dtype if dtype is None else dtype))

    def fill(tmp: str) -> None:
        tensors = {name: np.ascontiguousarray(value.astype(out_dtype)) for name, value in hf_tensors(model)}
        split = split_state_dict_into_shards_factory(tensors, get_storage_size=lambda a: a.nbytes,
                                                     filename_pattern="model{suffix}.safetensors",
                                                     max_shard_size=max_shard_size)
        for filename, names in split.filename_to_tensors.items():
            save_file({n: tensors[n] for n in names}, os.path.join(tmp, filename), metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": {**split.metadata, "total_size": sum(a.nbytes for a in tensors.values())},
                     "weight_map": dict(sorted(split.tensor_to_filename.items()))}
            _write_json(os.path.join(tmp, "model.safetensors.index.json"), index)
        _write_json(os.path.join(tmp, "config.json"), {**model.config.to_hf(), "dtype": out_dtype.name,
                                                       "transformers_version": TRANSFORMERS_VERSION})
        assets.carry_over(tmp, asset_sources, model.config, image_processor)
        atomic.share_tree(tmp)  # safetensors writes 0600: an exported model is for every reader

    atomic.replace_dir(path, fill)


def _write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
