"""The SFT step: one jitted function over the mesh with donated state.

Loss = Σ (cross-entropy on assistant tokens) / (assistant tokens in the *global* batch), accumulated over
micro-batches with ``lax.scan``; a non-finite loss, gradient or update skips the update and is reported.
Packed rows (``segment_ids`` in the batch) give the same token mean over the same examples' target tokens.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from robust_r1_jax import parallel
from robust_r1_jax.train.loss import chunked_loss_sum, shifted_targets
from robust_r1_jax.train.state import ModelParts, TrainState, shardings_of

BATCH_KEYS = ("input_ids", "attention_mask", "segment_ids", "loss_mask", "pixel_values", "image_grid_thw",
              "position_ids")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    grad_accum: int = 1
    ce_chunk: int = 0           # sequence chunk for the cross-entropy; 0 = whole sequence


def loss_sum(parts: ModelParts, trainable, frozen, batch: dict, ce_chunk: int) -> jax.Array:
    model = parts.merge_for_compute(trainable, frozen)
    positions = batch.get("position_ids")
    # packed rows (data/packing.py) carry segment ids: attention stays inside each example
    hidden = model.hidden_states(batch["input_ids"], batch.get("pixel_values"), batch.get("image_grid_thw"),
                                 batch.get("segment_ids", batch["attention_mask"]),
                                 None if positions is None else jnp.moveaxis(positions, 1, 0))
    targets, weights = shifted_targets(batch["input_ids"], batch["loss_mask"])
    return chunked_loss_sum(hidden, model.language.logits, targets, weights, ce_chunk)


def _micro_batches(batch: dict, n: int) -> dict:
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum={n}")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])
    return {k: split(v) for k, v in batch.items()}


def sft_step(parts: ModelParts, tx: optax.GradientTransformation, lr_schedule, cfg: StepConfig,
             state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    batch = {k: v for k, v in batch.items() if k in BATCH_KEYS}
    _, weights = shifted_targets(batch["input_ids"], batch["loss_mask"])
    tokens = jnp.sum(weights)
    grad_fn = jax.value_and_grad(lambda tr, mb: loss_sum(parts, tr, state.frozen, mb, cfg.ce_chunk))

    def accumulate(grads, micro):
        value, g = grad_fn(state.trainable, micro)
        return jax.tree.map(jnp.add, grads, g), value

    zeros = jax.tree.map(jnp.zeros_like, state.trainable)
    if cfg.grad_accum == 1:
        total, grads = grad_fn(state.trainable, batch)
    else:
        grads, sums = jax.lax.scan(accumulate, zeros, _micro_batches(batch, cfg.grad_accum))
        total = jnp.sum(sums)
    denom = jnp.maximum(tokens, 1.0)
    grads = parts.sharded_like_trainable(jax.tree.map(lambda g: g / denom, grads))
    loss = total / denom
    new_state, metrics = guarded_update(tx, state, grads, loss)
    return new_state, dict(metrics, loss=loss, tokens=tokens, learning_rate=lr_schedule(state.step),
                           real_tokens=jnp.sum(batch["attention_mask"] > 0), examples=trained_examples(batch))


def trained_examples(batch: dict) -> jax.Array:
    """Examples with target tokens in the batch, packed or not: the starts of the runs of loss tokens (an
    example's chain is one run; a run restarts where the segment changes)."""
    loss = batch["loss_mask"] > 0
    segments = batch.get("segment_ids", batch["attention_mask"])
    before = jnp.pad(loss[:, :-1], ((0, 0), (1, 0)))
    same = jnp.pad(segments[:, 1:] == segments[:, :-1], ((0, 0), (1, 0)))
    return jnp.sum(loss & ~(before & same))


def guarded_update(tx: optax.GradientTransformation, state: TrainState, grads, loss) -> tuple[TrainState, dict]:
    """The optimizer update, skipped (state and optimizer moments kept as they were) when the loss, the gradient
    norm or the update norm is not finite, so one bad batch or a destructive update (a learning rate of 1e38 gives
    finite parameters of 1e38 whose next loss is not) never reaches the parameters or a checkpoint. The update norm
    is summed in the parameters' dtype: in float32 a norm above ~1.8e19 overflows and counts as not finite."""
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = tx.update(safe_grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    update_norm = optax.global_norm(updates)
    finite = finite & jnp.isfinite(update_norm)   # finite parameters + a finite update stay finite
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(step=state.step + finite.astype(jnp.int32), trainable=keep(trainable, state.trainable),
                           frozen=state.frozen, opt_state=keep(opt_state, state.opt_state))
    return new_state, dict(grad_norm=grad_norm, update_norm=update_norm, skipped=1 - finite.astype(jnp.int32))


def batch_shardings(mesh, batch: dict) -> dict:
    return {k: parallel.batch_sharding(mesh, v.ndim) for k, v in batch.items()}


def compile_step(parts: ModelParts, tx, lr_schedule, cfg: StepConfig, state: TrainState, mesh, example_batch):
    """The jitted step with explicit in/out shardings; the state is donated."""
    state_sh = shardings_of(state)
    batch_sh = batch_shardings(mesh, {k: v for k, v in example_batch.items() if k in BATCH_KEYS})
    fn = lambda s, b: sft_step(parts, tx, lr_schedule, cfg, s, b)
    # traced inside train.run.Run, which holds jax.set_mesh(mesh): splash attention's shard_map and the scanned
    # layers' batch-sharded activations find the mesh there
    return jax.jit(fn, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=(0,))


def global_batch(mesh, local_batch: dict) -> dict:
    """Each process's rows become its part of one global array sharded over (data, fsdp)."""
    out = {}
    for k, v in local_batch.items():
        if k not in BATCH_KEYS:
            continue
        out[k] = jax.make_array_from_process_local_data(parallel.batch_sharding(mesh, v.ndim), v)
    return out
