"""Supervised fine-tuning on degradation-aware reasoning chains: ``mode = "sft"``.

One loop on every topology: the same config runs on one CPU, a GPU box or a TPU pod slice. Each process
feeds its shard of the global batch, the step is one jitted function over the (data, fsdp, tensor) mesh,
and the newest checkpoint in the workdir is resumed automatically (model, optimizer, step, data order).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile

import jax
import ml_collections
import numpy as np
from flax import nnx

from robust_r1_jax import distributed, parallel
from robust_r1_jax.model import config as model_config
from robust_r1_jax.model.vlm import Qwen25VL
from robust_r1_jax.train import checkpoint as ckpt
from robust_r1_jax.train import metrics as mx
from robust_r1_jax.train import optim, state as train_state, step as sft_step

log = logging.getLogger(__name__)


def default_config() -> ml_collections.ConfigDict:
    """Every SFT setting with its default; recipe files under configs/ override what they need."""
    c = ml_collections.ConfigDict()
    c.mode = "sft"
    c.workdir = "runs/sft"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        preset="tiny", vocab_size=0,           # vocab_size 0: the tokenizer's size (tiny / demo presets)
        init_from="",                           # Hugging Face directory or orbax model checkpoint
        dtype="float32", param_dtype="float32", remat="none", attention_impl="xla"))
    c.data = ml_collections.ConfigDict(dict(
        dataset_dir="", split="train", tokenizer="",   # tokenizer dir ("" -> init_from)
        global_batch_size=8, seq_len=1024, patch_bucket=256, image_slots=1,
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, worker_count=0, shuffle=True))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-5, warmup_steps=0, total_steps=0,  # total_steps 0: train.steps
        min_lr_ratio=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=100, grad_accum=1, ce_chunk=0, freeze=("^visual\\.",), log_every=10,
        checkpoint_every=100, keep=3, async_checkpoint=True, export_model=True))
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1,
                                                   timeout_s=300.0))
    return c


# ---- set-up pieces shared with the GRPO learner ------------------------------------------------------------
def init_distributed(config) -> distributed.DistributedInfo:
    d = config.distributed
    return distributed.initialize(coordinator_address=d.coordinator_address or None,
                                  num_processes=d.num_processes or None,
                                  process_id=None if d.process_id < 0 else d.process_id, timeout_s=d.timeout_s)


def check_workdir(workdir: str) -> str:
    """Fails before any compute when the workdir cannot be written (gs:// paths are left to orbax)."""
    if workdir.startswith("gs://"):
        return workdir
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise PermissionError(f"workdir {path} is not writable: {e}") from e
    return path


def make_mesh(config) -> jax.sharding.Mesh:
    return parallel.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)


def load_processor(config):
    from robust_r1_jax.model.processor import ImageProcessor, Processor, load_tokenizer
    path = config.data.tokenizer or config.model.init_from
    if not path:
        raise ValueError("config.data.tokenizer (a tokenizer directory) is required when model.init_from is empty")
    images = ImageProcessor(min_pixels=config.data.min_pixels, max_pixels=config.data.max_pixels)
    return Processor(load_tokenizer(path), images)


def build_model(config, processor, mesh) -> Qwen25VL:
    """From a checkpoint (``model.init_from``) or freshly initialised from a preset."""
    m = config.model
    overrides = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention_impl=m.attention_impl)
    if m.init_from:
        from robust_r1_jax.model import convert
        model = convert.load_any(m.init_from, dtype=m.param_dtype, mesh=mesh)
        model = _with_runtime_settings(model, overrides)
    else:
        kw = dict(overrides)
        if m.preset in ("tiny", "demo"):  # small presets take their vocabulary from the tokenizer
            ids = processor.token_ids if processor is not None else {}
            kw.update(_token_ids(ids))
            vocab = m.vocab_size or (len(processor.tokenizer) if processor is not None else 512)
            cfg = model_config.preset(m.preset, vocab_size=vocab, **kw)
        else:
            cfg = model_config.preset(m.preset, **kw)
        model = Qwen25VL(cfg, rngs=nnx.Rngs(config.seed))
    _check_tokens(model.config, processor)
    return model


def _token_ids(ids: dict) -> dict:
    names = {"<|image_pad|>": "image_token_id", "<|vision_start|>": "vision_start_token_id",
             "<|vision_end|>": "vision_end_token_id", "<|im_end|>": "eos_token_id",
             "<|endoftext|>": "bos_token_id", "<|video_pad|>": "video_token_id"}
    return {field: ids[tok] for tok, field in names.items() if tok in ids}


def _check_tokens(cfg, processor) -> None:
    if processor is None:
        return
    if processor.image_token_id != cfg.image_token_id:
        raise ValueError(f"tokenizer's <|image_pad|> id {processor.image_token_id} differs from the model's "
                         f"image_token_id {cfg.image_token_id}")
    if len(processor.tokenizer) > cfg.text.vocab_size:
        raise ValueError(f"tokenizer has {len(processor.tokenizer)} tokens but the model's vocabulary is "
                         f"{cfg.text.vocab_size}")


def _with_runtime_settings(model: Qwen25VL, overrides: dict) -> Qwen25VL:
    """Same weights, other compute dtype / remat / attention kernel."""
    new_cfg = model.config.replace(**{k: v for k, v in overrides.items() if k != "param_dtype"},
                                   param_dtype=model.config.param_dtype)
    if new_cfg == model.config:
        return model
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen25VL(new_cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, nnx.to_pure_dict(nnx.state(model)))
    return nnx.merge(graphdef, state)


def optim_config(config, steps: int) -> optim.OptimConfig:
    o = config.optim
    return optim.OptimConfig(learning_rate=o.learning_rate, warmup_steps=o.warmup_steps,
                             total_steps=o.total_steps or steps, min_lr_ratio=o.min_lr_ratio,
                             weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip_norm=o.clip_norm)


def run_meta(config, model) -> dict:
    return dict(model_config=model.config.to_dict(), config=config.to_json_best_effort())


# ---- the loop ---------------------------------------------------------------------------------------------
def run(config) -> dict:
    info = init_distributed(config)
    workdir = check_workdir(config.workdir)
    per_host = distributed.check_divisible(config.data.global_batch_size, info.process_count)
    mesh = make_mesh(config)
    processor = load_processor(config)
    model = build_model(config, processor, mesh)
    n_vision = train_state.count(nnx.state(model.visual, nnx.Param))
    ocfg = optim_config(config, config.train.steps)
    tx = optim.optimizer(ocfg)
    parts, state = train_state.init_state(model, tx, tuple(config.train.freeze), mesh)
    n_trained = train_state.count(state.trainable)
    vision_trained = any(p[0] == "visual" for p, _ in nnx.to_flat_state(state.trainable))
    model_cfg = model.config
    del model

    loader = make_loader(config, processor, per_host, info)
    checkpointer = ckpt.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.train.keep,
                                     async_save=config.train.async_checkpoint)
    start = 0
    if checkpointer.latest_step() is not None:
        ckpt.check_compatible(checkpointer.read_meta(), model_cfg, checkpointer.directory)
        state, data_state, _, start = checkpointer.restore(state)
        loader.set_state(data_state)
        log.info("resumed from step %d in %s", start, checkpointer.directory)

    writer = mx.Writer(os.path.join(workdir, "logs"))
    step_fn = None
    losses, skipped = [], 0
    meter = mx.Meter()
    progress = _progress(start, config.train.steps)
    try:
        for step in range(start, config.train.steps):
            local = next(loader)
            batch = sft_step.global_batch(mesh, local)
            if step_fn is None:
                step_fn = sft_step.compile_step(parts, tx, optim.schedule(ocfg),
                                                sft_step.StepConfig(config.train.grad_accum, config.train.ce_chunk),
                                                state, mesh, local)
            state, metrics = step_fn(state, batch)
            metrics = mx.fetch(metrics)
            elapsed = meter.tick()
            flops = mx.step_flops(local, n_trained, n_vision, vision_trained) * info.process_count
            scalars = {**metrics, **mx.rates(elapsed, float(metrics["tokens"]), flops, jax.device_count())}
            losses.append(float(metrics["loss"]))
            skipped += int(metrics["skipped"])
            if int(metrics["skipped"]):
                log.warning("step %d: non-finite loss or gradient, update skipped", step + 1)
            writer.write(step + 1, scalars)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{losses[-1]:.4f}")
            if (step + 1) % config.train.log_every == 0 and distributed.is_primary():
                log.info(mx.console_line(step + 1, config.train.steps, scalars))
            if (step + 1) % config.train.checkpoint_every == 0 or step + 1 == config.train.steps:
                checkpointer.save(step + 1, state, loader.get_state(), run_meta(config, parts_model(parts, state)))
        checkpointer.wait()
        exported = None
        if config.train.export_model:
            exported = os.path.join(workdir, "model")
            from robust_r1_jax.model import orbax_io
            orbax_io.save(parts_model(parts, state), exported)
    finally:
        checkpointer.close()
        writer.close()
        loader.close()
        if progress is not None:
            progress.close()
    return dict(losses=losses, skipped=skipped, start_step=start, final_step=config.train.steps,
                workdir=workdir, model_dir=exported, trained_parameters=n_trained)


def parts_model(parts, state) -> Qwen25VL:
    return parts.merge(state.trainable, state.frozen)


def make_loader(config, processor, per_host: int, info, kind: str = "sft"):
    """This process's shard of the ``robust_r1`` dataset as fixed-shape SFT or RL batches (grain)."""
    from robust_r1_jax.data import pipeline, tfds_builder
    d = config.data
    if not d.dataset_dir:
        raise ValueError("config.data.dataset_dir is required (a robust_r1 dataset; build one with configs/synth.py)")
    source = tfds_builder.data_source(d.dataset_dir, d.split)
    extra = {k: d[k] for k in ("reference_answer_bytes", "reference_names", "reference_name_bytes") if k in d}
    pcfg = pipeline.PipelineConfig(batch_size=per_host, seq_len=d.seq_len, patch_bucket=d.patch_bucket,
                                   image_slots=d.image_slots, min_pixels=d.min_pixels, max_pixels=d.max_pixels,
                                   seed=config.seed, shuffle=d.shuffle, num_epochs=None,
                                   worker_count=d.worker_count, **extra)
    make = pipeline.make_sft_loader if kind == "sft" else pipeline.make_rl_loader
    return make(source, processor, pcfg, process_index=info.process_index, process_count=info.process_count)


def _progress(start: int, total: int, desc: str = "sft"):
    if not distributed.is_primary():
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True)
