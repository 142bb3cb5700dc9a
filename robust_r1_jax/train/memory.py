"""Per-device memory of a training recipe, estimated before any weight is read, and the check that stops a run that
cannot fit.

``estimate(config, model_config, mesh, kind)`` gives bytes per device at the peak of the step (for GRPO the
largest of its three phases: rollout, scoring, update):

* **states**, from the parameters' shapes and the logical-axis rules (``parallel.logical_to_spec``: a dimension
  the mesh does not divide is replicated): trained parameters and AdamW's two moments (optax keeps them in the
  parameter dtype), frozen parameters, the compute-dtype copy of every parameter (``ModelParts.merge_for_compute``),
  for GRPO the reference copy of the trained parameters; FSDP's all-gathered weights: two decoder layers (one in
  use, one prefetched) and the vocabulary matrix, in the compute dtype;
* **activations** at the recipe's remat, per token and decoder layer in the compute dtype: ``full`` keeps the
  layer input (h), ``dots`` the projection outputs and the input (4h + 2I + 2 kv; WORKSPACE.md "Where the memory
  goes"), ``none`` every intermediate (13h + 6I: the residual stream, the two RMSNorm inputs kept in fp32, q, k,
  v before and after the rotary embedding, attention and output projections, and the MLP's gate, up, SiLU with
  its fp32 sigmoid, and product); the frozen vision tower's forward over the rows' patch buckets;
* the largest **transient** beside them: the cross-entropy / log-prob chunk (fp32 logits, probabilities and their
  gradient plus the bf16 projection: 14 B per logit, rows x chunk x vocab), the layer being recomputed or
  differentiated (fused, about 2I + h values per token), or on the XLA attention path (no flash kernel) one
  layer's fp32 scores, probabilities and their gradient (3 x rows x heads x length^2 x 4 B);
* the peak is at the start of the backward pass (activations + transient) or at its end (every gradient, the
  activations freed), whichever is larger; GRPO's rollout holds the **KV cache** (layers x 2 x kv heads x head
  dim x compute bytes per token) and the sampler's logits, its scoring two log-prob chunks (policy, reference),
  its update the differentiated layer's working set beside the log-prob chunk; a micro-batched update
  (``grpo.update_microbatches`` = M) holds one micro-batch's activations, layer and chunk (rows / M) beside a
  float32 gradient accumulator.

The terms are the tensors the program holds; the totals were checked against the TPU compiler's own per-chip
figures for the shipped recipes (``configs/aot.py``, WORKSPACE.md "Scale configs": SFT within +9%, GRPO 2-19%
under; held within 25% by tests/train/test_memory.py). It is an estimate: XLA may fuse away or add temporaries.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax import parallel
from robust_r1_jax.model.config import ModelConfig
from robust_r1_jax.train import validate
from robust_r1_jax.train.optim import path_string

log = logging.getLogger(__name__)

GIB = 1024 ** 3
# Bytes per logit of a cross-entropy / log-prob chunk in the backward pass: fp32 logits, probabilities and their
# gradient, and the bf16 logits of the projection.
LOGIT_BYTES = 3 * 4 + 2


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes per device: ``parts`` {name: bytes} of the phase with the largest total (``phase``)."""
    phase: str
    parts: dict

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        """"65.1 GiB per device (train step: params 7.0, ...)" in GiB; under 1 GiB the parts are in MiB (a small
        model's parts would all round to 0.0 GiB), and parts under a twentieth of the unit are left out."""
        unit, suffix = (GIB, "") if self.total >= GIB else (1024 ** 2, " MiB")
        shown = ", ".join(f"{name} {value / unit:.1f}{suffix}" for name, value in self.parts.items()
                          if value >= unit / 20)
        return f"{self.total / GIB:.1f} GiB per device ({self.phase}{': ' + shown if shown else ''})"


# ---- parameters ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _abstract_params(cfg: ModelConfig) -> tuple[tuple[str, tuple, tuple], ...]:
    """(dotted path, shape, logical axes) of every parameter, from shapes alone (nothing allocated; cached)."""
    from robust_r1_jax.model.vlm import Qwen25VL
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    out = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = tuple(var.value.shape)
        axes = var.get_metadata().get("logical_axes") or (None,) * len(shape)
        out.append((path_string(path), shape, tuple(axes)))
    return tuple(out)


def _shard_elements(shape: tuple, axes: tuple, mesh) -> int:
    spec = parallel.logical_to_spec(axes, shape, mesh)
    shard = list(shape)
    for i, entry in enumerate(spec):
        for name in (entry,) if isinstance(entry, str) else (entry or ()):
            shard[i] //= mesh.shape[name]
    return int(np.prod(shard, dtype=np.int64))


def parameter_elements(cfg: ModelConfig, freeze, mesh) -> dict:
    """Elements per device (``trained``, ``frozen``) and in full (``*_full``, ``layer_full``: one decoder layer,
    ``embedding_full``: the largest vocabulary matrix). Shapes do not depend on the runtime settings, so one
    abstract model serves every remat / dtype asked about (cached)."""
    shapes_only = cfg.replace(dtype="float32", param_dtype="float32", remat="none", attention_impl="xla")
    patterns = [re.compile(p) for p in freeze]
    counts = dict(trained=0, frozen=0, trained_full=0, frozen_full=0)
    for path, shape, axes in _abstract_params(shapes_only):
        kind = "frozen" if any(p.search(path) for p in patterns) else "trained"
        counts[kind] += _shard_elements(shape, axes, mesh)
        counts[kind + "_full"] += int(np.prod(shape, dtype=np.int64))
    t = cfg.text
    kv = t.num_key_value_heads * t.head_dim
    counts["layer_full"] = (2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * kv + t.hidden_size + 2 * kv
                            + 3 * t.hidden_size * t.intermediate_size + 2 * t.hidden_size)
    counts["embedding_full"] = t.vocab_size * t.hidden_size
    return counts


# ---- per-token activations -------------------------------------------------------------------------------------
def saved_values_per_token_layer(cfg: ModelConfig, remat: str) -> int:
    """Compute-dtype values a decoder layer keeps per token for the backward pass (see the module docstring)."""
    t = cfg.text
    h, inter, kv = t.hidden_size, t.intermediate_size, t.num_key_value_heads * t.head_dim
    if remat == "full":
        return h
    if remat == "dots":
        return 4 * h + 2 * inter + 2 * kv
    return 13 * h + 6 * inter


def _layer_working_bytes(cfg: ModelConfig, tokens: int, compute: int) -> int:
    """The layer being recomputed or differentiated: XLA fuses its elementwise work, so what it holds at once is
    about two MLP-wide tensors and one residual-wide one per token (2I + h)."""
    t = cfg.text
    return tokens * (2 * t.intermediate_size + t.hidden_size) * compute


def _attention_scores_bytes(cfg: ModelConfig, rows: int, length: int, attention: str) -> int:
    """One layer's fp32 scores, probabilities and their gradient on the XLA path (flash kernels keep none)."""
    if attention in ("splash", "cudnn"):
        return 0
    return 3 * rows * cfg.text.num_attention_heads * length * length * 4


def _vision_bytes(cfg: ModelConfig, rows: int, patches: int, compute: int) -> int:
    v = cfg.vision
    return rows * patches * (6 * v.hidden_size + 2 * v.intermediate_size) * compute


def resolved_attention(impl: str, platform: str, compute_dtype: str) -> str:
    """``model.layers.resolve_implementation``'s choice for "auto", without tracing: splash on TPU, cuDNN on GPU in
    16-bit, else XLA."""
    if impl != "auto":
        return impl
    if platform == "tpu":
        return "splash"
    if platform == "gpu" and jnp.dtype(compute_dtype).itemsize == 2:
        return "cudnn"
    return "xla"


# ---- the estimate ----------------------------------------------------------------------------------------------
def _peak(base: dict, activations: dict, transient: dict, gradients: dict) -> dict:
    """The larger of: the start of the backward pass (every saved activation plus the largest transient) and its
    end (every gradient; the activations are freed by then)."""
    biggest = max(transient, key=transient.get)
    during = {**base, **activations, biggest: transient[biggest]}
    after = {**base, **gradients}
    return during if sum(during.values()) >= sum(after.values()) else after


def estimate(config, cfg: ModelConfig, mesh, kind: str = "sft", platform: str | None = None) -> Estimate:
    """Per-device bytes of the ``sft`` or ``rl`` (GRPO) recipe ``config`` for the model ``cfg`` on ``mesh`` (a
    ``Mesh`` or ``jax.sharding.AbstractMesh`` with axes data, fsdp, tensor). ``platform`` ("tpu", "gpu", "cpu";
    default: this process's backend) resolves "auto" attention. Raises ValueError for an unknown ``kind``."""
    if kind not in ("sft", "rl"):
        raise ValueError(f"unknown training kind {kind!r}: 'sft' or 'rl'")
    platform = platform or jax.default_backend()
    compute = jnp.dtype(cfg.dtype).itemsize
    param = jnp.dtype(cfg.param_dtype).itemsize
    attention = resolved_attention(config.model.attention_impl, platform, cfg.dtype)
    n = parameter_elements(cfg, tuple(config.train.freeze), mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    base = {"trained parameters": n["trained"] * param, "AdamW moments": 2 * n["trained"] * param,
            "frozen parameters": n["frozen"] * param,
            # FSDP gathers one layer (and the vocabulary matrix) at a time, in the compute dtype
            "gathered layer and embedding": (2 * n["layer_full"] + n["embedding_full"]) * compute}
    if compute != param:
        base["compute-dtype copy"] = (n["trained"] + n["frozen"]) * compute
    gradients = {"gradients": n["trained"] * param}
    t = cfg.text
    layers, vocab = t.num_hidden_layers, t.vocab_size
    saved = saved_values_per_token_layer(cfg, cfg.remat) * compute * layers
    d = config.data
    if kind == "sft":
        rows = -(-d.global_batch_size // shards) // max(1, config.train.grad_accum)
        tokens = rows * d.seq_len
        chunk = config.train.get("ce_chunk", 0) or d.seq_len
        activations = {f"activations (remat {cfg.remat})": tokens * saved,
                       "vision forward": _vision_bytes(cfg, rows, d.patch_bucket, compute)}
        transient = {"cross-entropy chunk": LOGIT_BYTES * rows * chunk * vocab,
                     "one layer's backward": _layer_working_bytes(cfg, tokens, compute),
                     "attention scores": _attention_scores_bytes(cfg, rows, d.seq_len, attention)}
        return Estimate("train step", _peak(base, activations, transient, gradients))
    base["reference parameters"] = n["trained"] * param
    rows = -(-d.global_batch_size * config.grpo.num_samples // shards)
    length = d.seq_len + config.sampling.max_new_tokens
    tokens = rows * length
    chunk = config.grpo.get("logprob_chunk", 0) or length
    # a micro-batched update (rl/grpo.py update_step) holds one micro-batch's activations beside a float32
    # gradient accumulator
    micro = max(1, int(config.grpo.get("update_microbatches", 1)))
    update_rows = -(-rows // micro)
    update_tokens = update_rows * length
    accumulator = {"gradient accumulator (fp32)": n["trained"] * 4} if micro > 1 else {}
    kv_cache = rows * length * layers * 2 * t.num_key_value_heads * t.head_dim * compute
    phases = {
        "rollout": {**base, "KV cache": kv_cache, "sampler logits": 2 * rows * vocab * 4,
                    "prefill layer": _layer_working_bytes(cfg, rows * d.seq_len, compute),
                    "vision forward": _vision_bytes(cfg, rows, d.patch_bucket, compute)},
        "scoring": {**base, "forward layer": _layer_working_bytes(cfg, tokens, compute),
                    "log-prob chunks (policy, reference)": 2 * rows * chunk * vocab * 4},
        # the layer's working set stays beside the log-prob chunk here (the compiler's GRPO figures hold both)
        "update": _peak({**base, **accumulator},
                        {f"activations (remat {cfg.remat})": update_tokens * saved,
                         "one layer's backward": _layer_working_bytes(cfg, update_tokens, compute)},
                        {"log-prob chunk": LOGIT_BYTES * update_rows * chunk * vocab,
                         "attention scores": _attention_scores_bytes(cfg, update_rows, length, attention)},
                        gradients),
    }
    phase = max(phases, key=lambda p: sum(phases[p].values()))
    return Estimate(phase, phases[phase])


# ---- what the devices have -------------------------------------------------------------------------------------
def host_available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_memory_bytes(devices=None) -> tuple[int | None, str]:
    """(bytes one device can hold, what that figure is). Accelerators report their limit (``memory_stats``); CPU
    devices share the host's available memory, divided among this process's devices. (None, why) when unknown."""
    devices = list(devices if devices is not None else jax.local_devices())
    first = devices[0]
    if first.platform != "cpu":
        stats = first.memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit:
            return int(limit), f"{first.device_kind} memory"
        return None, f"{first.device_kind} reports no memory limit"
    available = host_available_bytes()
    if available is None:
        return None, "the host's available memory is unknown"
    share = f" / {len(devices)} CPU devices" if len(devices) > 1 else ""
    return available // len(devices), f"available host memory{share}"


# ---- the check ---------------------------------------------------------------------------------------------------
def fitting_overrides(config, cfg: ModelConfig, mesh, kind: str, limit: int, platform: str) -> list[str]:
    """Overrides (command-line flags) that bring the estimate under ``limit``, tried in this order, each keeping
    the ones before: the next remat policy ("none" -> "dots" -> "full"), a smaller cross-entropy / log-prob chunk
    (the numbers do not change), then for SFT gradient accumulation and for GRPO more update micro-batches (whole
    prompt groups per device; the loss is the same) or else shorter completions (which change the recipe). Empty
    when none of them fits."""
    chunk_key = "train.ce_chunk" if kind == "sft" else "grpo.logprob_chunk"
    section, field = chunk_key.split(".")

    def fits(changes: dict) -> list[str] | None:
        c = config.copy_and_resolve_references()
        for key, value in changes.items():
            c[key.split(".")[0]][key.split(".")[1]] = value
        model = cfg.replace(remat=changes.get("model.remat", cfg.remat))
        if estimate(c, model, mesh, kind, platform).total > limit:
            return None
        return [f"--config.{key}={value}" for key, value in changes.items()]

    tried: dict = {}
    for remat in {"none": ["dots", "full"], "dots": ["full"], "full": []}[cfg.remat]:
        tried = {"model.remat": remat}
        if (found := fits(tried)):
            return found
    chunk = config[section].get(field, 0) or 0
    while chunk > 64:
        chunk //= 2
        tried = {**tried, chunk_key: chunk}
        if (found := fits(tried)):
            return found
    if kind == "sft":
        rows = -(-config.data.global_batch_size // (mesh.shape["data"] * mesh.shape["fsdp"]))
        for accum in (a for a in range(2, rows + 1) if rows % a == 0):
            if (found := fits({**tried, "train.grad_accum": accum})):
                return found
        return []
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    groups = -(-config.data.global_batch_size // shards)   # prompt groups per device
    micro = int(config.grpo.get("update_microbatches", 1))
    for count in (m for m in range(micro + 1, groups + 1) if groups % m == 0):
        tried = {**tried, "grpo.update_microbatches": count}
        if (found := fits(tried)):
            return found
    new = config.sampling.max_new_tokens
    while new > 256:
        new //= 2
        if (found := fits({**tried, "sampling.max_new_tokens": new})):
            return found
    return []


def check_fits(config, cfg: ModelConfig, mesh, kind: str, devices=None, platform: str | None = None,
               available: tuple[int | None, str] | None = None) -> Estimate:
    """Returns the estimate; raises ``validate.ConfigError`` with one line (estimate, device memory, the overrides
    that would fit or that none do) when it exceeds what one device holds (``available``: (bytes, what they are),
    default ``device_memory_bytes(devices)``). An unknown device memory logs a warning and passes."""
    platform = platform or jax.default_backend()
    est = estimate(config, cfg, mesh, kind, platform)
    limit, what = available if available is not None else device_memory_bytes(devices)
    if limit is None:
        log.warning("memory: cannot check the estimate of about %s: %s", est.describe(), what)
    if limit is None or est.total <= limit:
        return est
    overrides = fitting_overrides(config, cfg, mesh, kind, limit, platform)
    devices_text = f"{mesh.size} device{'s' if mesh.size > 1 else ''}"
    advice = (f"these overrides would fit: {' '.join(overrides)}" if overrides else
              f"no remat, chunk, accumulation or length setting fits {devices_text}: run on the devices the recipe "
              f"was written for (a scale variant after the config file's colon, e.g. :8xh100 or :v5p8; WORKSPACE.md "
              f"\"Scale configs\") or on more devices")
    raise validate.ConfigError([
        f"memory: the {kind} recipe needs about {est.describe()}, but one device has "
        f"{limit / GIB:.1f} GiB ({what}, {devices_text}); {advice} (train.memory_check=False skips this check)"])
