"""Supervised fine-tuning on degradation-aware reasoning chains: ``mode = "sft"``.

One loop on every topology: the same config runs on one CPU, a GPU box or a TPU pod slice. Each process
feeds its shard of the global batch, the step is one jitted function over the (data, fsdp, tensor) mesh,
and the newest checkpoint in the workdir is resumed automatically (model, optimizer, step, data order). The set-up
and close-out around the loop are ``train.run.Run``'s.
"""
from __future__ import annotations

import jax
import ml_collections

from robust_r1_jax.train import metrics as mx
from robust_r1_jax.train import step as sft_step
from robust_r1_jax.train.run import Run

def default_config() -> ml_collections.ConfigDict:
    """Every SFT setting with its default; recipe files under configs/ override what they need."""
    c = ml_collections.ConfigDict()
    c.mode = "sft"
    c.workdir = "runs/sft"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        preset="tiny", vocab_size=0,           # vocab_size 0: the tokenizer's size (tiny / demo presets)
        init_from="",                           # Hugging Face directory or orbax model checkpoint
        dtype="float32", param_dtype="float32", remat="none", attention_impl="xla",
        scan_layers=False))
    c.data = ml_collections.ConfigDict(dict(
        dataset_dir="", split="train", tokenizer="",   # tokenizer dir ("" -> init_from)
        global_batch_size=8, seq_len=1024, patch_bucket=256, image_slots=1,
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, worker_count=0, shuffle=True,
        prompt_style="project"))  # "upstream": the source's human turn verbatim + suffix (data/rows.py)
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-5, warmup_steps=0, total_steps=0,  # total_steps 0: train.steps
        min_lr_ratio=0.0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=100, grad_accum=1, ce_chunk=0, freeze=("^visual\\.",), log_every=10,
        checkpoint_every=100, keep=3, async_checkpoint=True, export_model=True,
        memory_check=True,           # stop before loading when the memory estimate exceeds a device
        export_dtype="",             # model/'s stored dtype; "": model.dtype (bf16 recipes export bf16)
        max_consecutive_skips=10))   # skipped updates in a row that stop the run (0: never stop)
    c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1,
                                                   timeout_s=300.0))
    return c


# ---- the loop ---------------------------------------------------------------------------------------------
def run(config) -> dict:
    """Trains ``train.steps`` steps (resuming the workdir's newest checkpoint); returns the losses, the number of
    skipped updates and the run summary of ``Run.finish``."""
    with Run(config, "sft") as r:
        counts = r.parameter_counts()
        step_config = sft_step.StepConfig(config.train.grad_accum, config.train.ce_chunk)
        state, step_fn, meter, losses, skipped = r.state, None, mx.Meter(), [], 0
        for step in r.steps():
            local = next(r.loader)
            batch = sft_step.global_batch(r.mesh, local)
            if step_fn is None:
                step_fn = sft_step.compile_step(r.parts, r.tx, r.schedule, step_config, state, r.mesh, local)
            state, metrics = step_fn(state, batch)
            metrics = mx.fetch(metrics)
            flops = mx.step_flops(local, counts["trained"], counts["vision"], counts["vision_trained"])
            rates = mx.rates(meter.tick(), float(metrics["tokens"]), flops * r.info.process_count,
                             jax.device_count())
            scalars = {**metrics, **rates}
            losses.append(float(metrics["loss"]))
            skipped += int(metrics["skipped"])
            r.step_done(step, state, scalars, dict(loss=f"{losses[-1]:.4f}"),
                        lambda: mx.console_line(step + 1, config.train.steps, scalars))
        summary = r.finish(state)
    return dict(losses=losses, skipped=skipped, trained_parameters=counts["trained"], **summary)
