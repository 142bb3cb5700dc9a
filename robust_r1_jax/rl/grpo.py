"""On-policy GRPO for Robust-R1 (SPEC §4): ``mode = "rl"``. This file owns the loop.

Per step: B prompts from the RL pipeline -> G completions each from the jitted sampler (one prefill per
prompt) -> the jitted rewards on the completion token ids (no decoding on the host) -> group advantages
(R - mean_G) / (std_G + 1e-4) -> ``inner_iterations`` (μ) clipped-ratio updates with a k3 KL to the frozen
reference model. The reference model is the starting policy's *language* weights only: the vision tower is
frozen, so policy and reference share it (and its features, computed once per prompt).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from robust_r1_jax.data import references
from robust_r1_jax.model import generate as smp
from robust_r1_jax.model import sampling
from robust_r1_jax.rl import rewards as rw
from robust_r1_jax.rl.token_text import token_bytes_table
from robust_r1_jax.train import metrics as mx
from robust_r1_jax.train import sft
from robust_r1_jax.train.run import Run
from robust_r1_jax.train.state import ModelParts, TrainState, shardings_of
from robust_r1_jax.train.step import guarded_update

AGGREGATIONS = ("sequence_mean", "token_mean")
STD_ESTIMATORS = ("unbiased", "biased")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    num_samples: int = 8             # G
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.04               # KL weight
    loss_aggregation: str = "sequence_mean"  # mean over sequences of the token mean (the reference run)
    std_estimator: str = "unbiased"  # torch's std, as the reference run
    inner_iterations: int = 1        # μ
    temperature: float = 1.0         # config.sampling.temperature: the rollouts' and the learner's
    logprob_chunk: int = 0           # completion chunk for log-probs (0 = all at once)

    def __post_init__(self):
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"loss_aggregation must be one of {AGGREGATIONS}, got {self.loss_aggregation!r}")
        if self.std_estimator not in STD_ESTIMATORS:
            raise ValueError(f"std_estimator must be one of {STD_ESTIMATORS}, got {self.std_estimator!r}")
        if self.num_samples < 2:
            raise ValueError("GRPO needs at least 2 samples per prompt for a group baseline")


# ---- pure pieces ----------------------------------------------------------------------------------------------
def group_advantages(rewards: jax.Array, group: int, std_estimator: str = "unbiased",
                     eps: float = 1e-4) -> jax.Array:
    """(R - mean_G) / (std_G + eps) within each run of ``group`` consecutive rows (SPEC §4); a group whose rewards
    are all equal gets exactly 0, where float32's mean would leave a residue that grows with the rewards' size."""
    r = rewards.reshape(-1, group).astype(jnp.float32)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, keepdims=True, ddof=1 if std_estimator == "unbiased" else 0)
    uniform = jnp.all(r == r[:, :1], axis=1, keepdims=True)
    return jnp.where(uniform, 0.0, (r - mean) / (std + eps)).reshape(-1)


def grpo_objective(logp, old_logp, ref_logp, advantages, mask, row_weight, cfg: GRPOConfig):
    """The GRPO loss and its diagnostics. logp/old/ref/mask [N, T]; advantages and row_weight [N]."""
    mask = mask.astype(jnp.float32) * row_weight[:, None]
    adv = advantages[:, None]
    ratio = jnp.exp(logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
    policy = -jnp.minimum(ratio * adv, clipped * adv)
    delta = ref_logp - logp
    kl = jnp.exp(delta) - delta - 1.0
    per_token = policy + cfg.beta * kl
    tokens = jnp.maximum(mask.sum(), 1.0)
    if cfg.loss_aggregation == "sequence_mean":
        seq = (per_token * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)
        rows = (mask.sum(axis=1) > 0).astype(jnp.float32)
        loss = (seq * rows).sum() / jnp.maximum(rows.sum(), 1.0)
    else:
        loss = (per_token * mask).sum() / tokens
    is_clipped = ((ratio < 1.0 - cfg.epsilon_low) & (adv < 0)) | ((ratio > 1.0 + cfg.epsilon_high) & (adv > 0))
    metrics = dict(kl=(kl * mask).sum() / tokens, clip_fraction=(is_clipped * mask).sum() / tokens,
                   policy_loss=(policy * mask).sum() / tokens)
    return loss, metrics


def chunked_logprobs(hidden, project, targets, chunk: int, temperature: float = 1.0) -> jax.Array:
    """log softmax(project(hidden) / temperature) at ``targets``; [N, T] float32, chunked over T."""
    def one(h, t):
        logits = project(h).astype(jnp.float32) / temperature
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), t[..., None], axis=-1)[..., 0]
    n, length, _ = hidden.shape
    if chunk <= 0 or chunk >= length or length % chunk:
        return one(hidden, targets)
    split = lambda x: jnp.moveaxis(x.reshape(n, length // chunk, chunk, *x.shape[2:]), 1, 0)
    out = jax.lax.map(lambda a: jax.checkpoint(one)(*a), (split(hidden), split(targets)))
    return jnp.moveaxis(out, 0, 1).reshape(n, length)


def completion_logprobs(model, batch: dict, group: int, cfg: GRPOConfig) -> jax.Array:
    """Log-probs of each completion token under ``model``: prompt + completion in one forward, the image
    features computed once per prompt and shared by its G samples."""
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    tokens, mask = batch["tokens"], batch["mask"]
    ids = jnp.concatenate([prompt_ids, tokens], axis=1)
    attention = jnp.concatenate([prompt_mask, mask], axis=1)
    features, grid = None, None
    if batch.get("pixel_values") is not None:
        features = model.image_features(batch["pixel_values"], batch["image_grid_thw"])
        features = jax.tree.map(lambda a: jnp.repeat(a, group, axis=0), features)  # Qwen3-VL: with DeepStack
        grid = jnp.repeat(batch["image_grid_thw"], group, axis=0)
    positions, _ = model.positions(ids, attention, grid)
    hidden = model.hidden_states(ids, None, grid, attention, positions, image_features=features)
    s = prompt_ids.shape[1]
    before = hidden[:, s - 1: s - 1 + tokens.shape[1]]
    return chunked_logprobs(before, model.language.logits, tokens, cfg.logprob_chunk, cfg.temperature)


def score_step(parts: ModelParts, cfg: GRPOConfig, trainable, frozen, ref_trainable, batch):
    """Old-policy and reference log-probs, both without gradient."""
    old = completion_logprobs(parts.merge_for_compute(trainable, frozen), batch, cfg.num_samples, cfg)
    ref = completion_logprobs(parts.merge_for_compute(ref_trainable, frozen), batch, cfg.num_samples, cfg)
    return jax.lax.stop_gradient(old), jax.lax.stop_gradient(ref)


def update_step(parts: ModelParts, tx, lr_schedule, cfg: GRPOConfig, state: TrainState, batch, old_logp,
                ref_logp, advantages):
    def loss_fn(trainable):
        logp = completion_logprobs(parts.merge_for_compute(trainable, state.frozen), batch, cfg.num_samples, cfg)
        return grpo_objective(logp, old_logp, ref_logp, advantages, batch["mask"], batch["row_weight"], cfg)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    grads = parts.sharded_like_trainable(grads)
    new_state, metrics = guarded_update(tx, state, grads, loss)
    return new_state, dict(metrics, loss=loss, learning_rate=lr_schedule(state.step), **aux)


def length_intensity_correlation(lengths: np.ndarray, intensity: np.ndarray) -> float:
    """Pearson correlation of completion length with the prompt's summed degradation intensity."""
    if np.std(lengths) == 0 or np.std(intensity) == 0:
        return 0.0
    return float(np.corrcoef(lengths, intensity)[0, 1])


# ---- config and the loop --------------------------------------------------------------------------------------
def default_config() -> ml_collections.ConfigDict:
    c = sft.default_config()
    c.mode = "rl"
    c.workdir = "runs/rl"
    c.data.global_batch_size = 16   # prompts per step (x G completions)
    c.data.seq_len = 512            # prompt bucket
    c.data.reference_answer_bytes = 16  # reward reference sizes (data/rows.py: A, R, L)
    c.data.reference_names = 16
    c.data.reference_name_bytes = 32
    c.optim.learning_rate = 1e-6
    c.optim.clip_norm = 1.0
    # The sampling temperature is also the learner's: log-probs are taken of the tempered distribution.
    c.grpo = ml_collections.ConfigDict({k: v for k, v in dataclasses.asdict(GRPOConfig()).items()
                                        if k != "temperature"})
    c.sampling = sampling.default_config(max_new_tokens=2048, temperature=GRPOConfig.temperature)
    c.rewards = ml_collections.ConfigDict(dict(variant="paper", accuracy=1.0, format=1.0, degradation=1.0,
                                               length=1.0))
    return c


def grpo_config(config) -> GRPOConfig:
    return GRPOConfig(**dict(config.grpo), temperature=float(config.sampling.temperature))


def sampler_config(config, gcfg: GRPOConfig, model_cfg) -> smp.SamplerConfig:
    return smp.SamplerConfig(**sampling.sampler_settings(config.sampling), num_samples=gcfg.num_samples,
                             stop_token_ids=smp.default_stop_token_ids(model_cfg), pad_token_id=model_cfg.bos_token_id)


def _compiled_steps(r: Run, gcfg: GRPOConfig):
    """The jitted scoring (old policy and reference log-probs), update and advantage functions of a run."""
    score_fn = jax.jit(lambda tr, fr, ref, b: score_step(r.parts, gcfg, tr, fr, ref, b))
    update_fn = jax.jit(lambda s, b, o, ref, a: update_step(r.parts, r.tx, r.schedule, gcfg, s, b, o, ref, a),
                        out_shardings=(shardings_of(r.state), None), donate_argnums=(0,))
    advantage_fn = jax.jit(lambda rewards: group_advantages(rewards, gcfg.num_samples, gcfg.std_estimator))
    return score_fn, update_fn, advantage_fn


def run(config) -> dict:
    """``train.steps`` GRPO steps (resuming the workdir's newest checkpoint); returns one metrics row per step
    and the run summary of ``Run.finish``."""
    gcfg = grpo_config(config)
    r = Run(config, "grpo", loader_kind="rl")
    ref_trainable = jax.tree.map(jnp.copy, r.state.trainable)   # the frozen reference: the starting policy
    with r:
        weights = rw.RewardWeights(**{k: config.rewards[k] for k in ("accuracy", "format", "degradation", "length")})
        table = token_bytes_table(r.processor.tokenizer, vocab_size=r.model_config.text.vocab_size)
        scfg = sampler_config(config, gcfg, r.model_config)
        score_fn, update_fn, advantage_fn = _compiled_steps(r, gcfg)
        state, history, base_rng, meter, mesh = r.state, [], jax.random.key(config.seed), mx.Meter(), r.mesh
        for step in r.steps():
            local = next(r.loader)
            prompts = _device_prompts(mesh, local)
            rollout = smp.generate(r.model(state), prompts["prompt_ids"], prompts["prompt_mask"],
                                   prompts.get("pixel_values"), prompts.get("image_grid_thw"), scfg,
                                   jax.random.fold_in(base_rng, step))
            refs = _references(mesh, local, gcfg.num_samples)
            scores = rw.compute(rollout.tokens, rollout.mask, refs, table, config.rewards.variant, weights)
            advantages = advantage_fn(scores["total"])
            batch = dict(prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask, tokens=rollout.tokens,
                         mask=rollout.mask, pixel_values=prompts.get("pixel_values"),
                         image_grid_thw=prompts.get("image_grid_thw"),
                         row_weight=_row_weights(mesh, local, gcfg.num_samples))
            old_logp, ref_logp = score_fn(state.trainable, state.frozen, ref_trainable, batch)
            skipped = 0
            for _ in range(gcfg.inner_iterations):
                state, metrics = update_fn(state, batch, old_logp, ref_logp, advantages)
                skipped += metrics["skipped"]
            intensity = mx.fetch(_global(mesh, np.asarray(local["summed_intensity"], np.float32)))
            row = _step_metrics(mx.fetch(dict(metrics, skipped=skipped)), mx.fetch(scores),
                                mx.fetch(rollout.lengths), intensity, gcfg.num_samples, meter.tick())
            history.append(row)
            r.step_done(step, state, row, dict(reward=f"{row['reward/total']:.3f}"),
                        lambda: _console_line(step + 1, config.train.steps, row))
        summary = r.finish(state)
    return dict(history=history, **summary)


def _console_line(step: int, total: int, row: dict) -> str:
    return (f"rl step {step}/{total} reward {row['reward/total']:.4f} deg {row['reward/degradation']:.4f} "
            f"len {row['reward/length']:.4f} kl {row['kl']:.4g}")


def _global(mesh, array: np.ndarray):
    from robust_r1_jax import parallel
    return jax.make_array_from_process_local_data(parallel.batch_sharding(mesh, array.ndim), np.asarray(array))


def _device_prompts(mesh, local: dict) -> dict:
    keys = ("prompt_ids", "prompt_mask", "pixel_values", "image_grid_thw")
    return {k: _global(mesh, local[k]) for k in keys if k in local}


def _row_weights(mesh, local: dict, group: int):
    """Padding rows of the pipeline (example_index -1) get no weight in the loss."""
    weight = (np.asarray(local["example_index"]) >= 0).astype(np.float32)
    return _global(mesh, np.repeat(weight, group))


def _references(mesh, local: dict, group: int) -> references.RewardReferences:
    """The batch's reward references (built by the pipeline) as global arrays, each row repeated for its G
    completions on the device."""
    return _repeat_rows(jax.tree.map(lambda a: _global(mesh, a), references.from_batch(local)), group)


@jax.jit(static_argnums=1)
def _repeat_rows(tree, group: int):
    return jax.tree.map(lambda a: jnp.repeat(a, group, axis=0), tree)


def _step_metrics(metrics: dict, scores: dict, lengths: np.ndarray, summed_intensity: np.ndarray, group: int,
                  step_time: float) -> dict:
    row = {k: float(v) for k, v in metrics.items()}
    for name in ("total", "accuracy", "format", "degradation", "length"):
        row[f"reward/{name}"] = float(np.mean(scores[name]))
    row["reward_std"] = float(np.mean(np.std(np.asarray(scores["total"]).reshape(-1, group), axis=1)))
    row["completion_length"] = float(np.mean(lengths))
    row["length_vs_intensity"] = length_intensity_correlation(np.asarray(lengths, np.float64),
                                                              np.repeat(summed_intensity, group))
    row["step_time"] = step_time
    row["generated_tokens_per_s"] = float(np.sum(lengths)) / step_time
    return row
