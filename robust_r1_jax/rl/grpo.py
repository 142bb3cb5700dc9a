"""On-policy GRPO for Robust-R1 (SPEC §4): ``mode = "rl"``. This file owns the loop.

Per step: B prompts from the RL pipeline -> G completions each from the jitted sampler (one prefill per
prompt) -> the jitted rewards on the completion token ids (no decoding on the host) -> the learner's batch
(``learner_batch``: overlong handling, dynamic sampling, advantages; by default the reference run's group
advantages (R - mean_G) / (std_G + 1e-4)) -> ``inner_iterations`` (μ) clipped-ratio updates with a k3 KL to the
frozen reference model. The reference model is the starting policy's *language* weights only: the vision tower is
frozen, so policy and reference share it (and its features, computed once per prompt). The variants
(``config.grpo``: loss aggregation, importance ratio, reward scaling, dynamic sampling, overlong handling) are the
pure functions of ``rl.grpo_variants``.
"""
from __future__ import annotations

import collections
import dataclasses
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from robust_r1_jax import parallel
from robust_r1_jax.data import references
from robust_r1_jax.model import generate as smp
from robust_r1_jax.model import sampling
from robust_r1_jax.rl import grpo_variants as gv
from robust_r1_jax.rl import rewards as rw
from robust_r1_jax.rl import rollout_weights
from robust_r1_jax.rl.token_text import token_bytes_table
from robust_r1_jax.train import metrics as mx
from robust_r1_jax.train import sft
from robust_r1_jax.train.run import Run, planned_model_config
from robust_r1_jax.train.state import ModelParts, TrainState, shardings_of
from robust_r1_jax.train.step import guarded_update

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """``config.grpo`` (plus what the learner takes from elsewhere: the sampling temperature, the completion
    budget and the suppressed token ids). Defaults: the reference run (SPEC §4); WORKSPACE.md "GRPO" has the
    variants' formulas and sources."""
    num_samples: int = 8             # G
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2        # DAPO's clip-higher: 0.28
    beta: float = 0.04               # KL weight
    loss_aggregation: str = "sequence_mean"  # | token_mean (DAPO) | sequence_sum_constant (Dr. GRPO)
    loss_constant: int = 0           # sequence_sum_constant's divisor; 0 = the horizon, sampling.max_new_tokens
    importance_sampling: str = "token"       # | sequence (GSPO, with the sequence_epsilon_* below)
    sequence_epsilon_low: float = 3e-4       # GSPO v2 §5.1
    sequence_epsilon_high: float = 4e-4
    scale_rewards: str = "group"     # | batch | none (Dr. GRPO)
    std_estimator: str = "unbiased"  # torch's std, as the reference run
    dynamic_sampling: bool = False   # DAPO: train only on groups whose rewards differ
    oversample: int = 1              # prompts drawn per step = oversample x data.global_batch_size
    overlong: str = "none"           # | mask (truncated completions get no loss) | soft_penalty (DAPO)
    overlong_buffer: int = 256       # soft_penalty's L_cache, in tokens
    overlong_penalty_factor: float = 1.0
    inner_iterations: int = 1        # μ
    temperature: float = 1.0         # config.sampling.temperature: the rollouts' and the learner's
    logprob_chunk: int = 0           # completion chunk for log-probs (0 = all at once)
    update_microbatches: int = 1     # the update's forward + backward in M micro-batches of whole prompt groups
    max_new_tokens: int = 0          # config.sampling.max_new_tokens (0: unknown; the completion's width is used)
    suppress_token_ids: tuple[int, ...] = ()  # never sampled, so masked in the learner's softmax as well

    def __post_init__(self):
        problems = field_problems(dataclasses.asdict(self))
        if problems:
            raise ValueError("invalid GRPOConfig: " + "; ".join(problems))

    @property
    def horizon_constant(self) -> int:
        """sequence_sum_constant's divisor (0: the caller uses the completion's width)."""
        return self.loss_constant or self.max_new_tokens


def field_problems(g: dict, prefix: str = "") -> list[str]:
    """Every impossible ``config.grpo`` value of ``g`` (a dict of GRPOConfig fields), one line each naming
    ``config.<prefix>grpo.<field>``."""
    out = []

    def check(field, ok, text):
        if field in g and not ok(g[field]):
            out.append(f"config.{prefix}grpo.{field}={g[field]!r}: {text}")

    for field, choices in (("loss_aggregation", gv.LOSS_AGGREGATIONS), ("importance_sampling",
                           gv.IMPORTANCE_SAMPLING), ("scale_rewards", gv.REWARD_SCALINGS),
                           ("overlong", gv.OVERLONG), ("std_estimator", gv.STD_ESTIMATORS)):
        check(field, lambda v, c=choices: v in c, f"must be one of {', '.join(choices)}")
    check("num_samples", lambda v: v >= 2, "GRPO needs at least 2 samples per prompt for a group baseline")
    check("inner_iterations", lambda v: v >= 1, "must be at least 1 (optimizer updates per rollout)")
    check("oversample", lambda v: v >= 1, "must be at least 1 (prompts drawn per step, times the batch)")
    check("update_microbatches", lambda v: isinstance(v, int) and v >= 1,
          "must be an integer >= 1 (the update's micro-batches; 1 = the whole batch in one backward pass)")
    for field in ("epsilon_low", "sequence_epsilon_low"):
        check(field, lambda v: 0 <= v < 1, "must be in [0, 1) (the ratio is clipped at 1 - epsilon_low)")
    for field in ("epsilon_high", "sequence_epsilon_high", "beta", "overlong_penalty_factor", "loss_constant",
                  "logprob_chunk"):
        check(field, lambda v: v >= 0, "must be >= 0")
    horizon = g.get("max_new_tokens", 0)
    if g.get("overlong") == "soft_penalty":
        check("overlong_buffer", lambda v: 1 <= v and (not horizon or v <= horizon),
              f"soft_penalty needs 1 <= overlong_buffer <= sampling.max_new_tokens ({horizon or '?'})")
    return out


def config_problems(config, prefix: str = "") -> list[str]:
    """The impossible values of a GRPO config's ``grpo`` section (with the completion budget of its sampling
    section), checked with the rest of the config before any model loads; ``prefix`` names where the config sits
    ("rl." inside the demo's)."""
    from robust_r1_jax.model import sampling as sampling_cfg
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    g = {k: v for k, v in dict(config.grpo).items() if k in fields}
    unknown = sorted(set(config.grpo) - fields)
    out = [f"config.{prefix}grpo.{k}: not a GRPO setting" for k in unknown]
    if not sampling_cfg.problems(config.sampling):
        g["max_new_tokens"] = int(config.sampling.max_new_tokens)
    out += field_problems(g, prefix)
    micro = g.get("update_microbatches", 1)
    if micro != 1 and not any(".update_microbatches=" in line for line in out):
        out += microbatch_problems(int(config.data.global_batch_size), batch_shards(config.mesh), micro, prefix)
    return out


def batch_shards(mesh_config) -> int | None:
    """The batch shards (data x fsdp) the mesh section ``mesh_config`` forms on this process's devices, as
    ``parallel.make_mesh`` resolves a size of -1; None when the devices cannot form it (the run reports that)."""
    sizes = [int(mesh_config[k]) for k in ("data", "fsdp", "tensor")]
    known = int(np.prod([s for s in sizes if s != -1]))
    if sizes.count(-1) > 1 or known < 1:
        return None
    if -1 in sizes:
        if jax.device_count() % known:
            return None
        sizes[sizes.index(-1)] = jax.device_count() // known
    return sizes[0] * sizes[1]


def microbatch_problems(prompts: int, shards: int | None, microbatches: int, prefix: str = "") -> list[str]:
    """``update_microbatches`` must split the ``prompts`` of a step into whole prompt groups on every device: it
    divides the prompt groups each of the ``shards`` batch shards holds (``update_step``'s strided split then keeps
    every micro-batch on all devices). One line, or none; a batch the shards do not divide is reported elsewhere
    (``validate.batch_problems``), so then only the step's prompts are checked."""
    if microbatches == 1:
        return []
    field = f"config.{prefix}grpo.update_microbatches={microbatches}"
    divisors = lambda n: ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
    if shards and prompts % shards == 0:
        per_device = prompts // shards
        if per_device % microbatches:
            return [f"{field}: must divide the {per_device} prompt group{'s' if per_device > 1 else ''} each device "
                    f"trains on (data.global_batch_size={prompts} prompts over {shards} batch shards, data x fsdp), "
                    f"so that every micro-batch is whole prompts spread over every device: use one of "
                    f"{divisors(per_device)}"]
    elif prompts % microbatches:
        return [f"{field}: must divide the {prompts} prompt groups of a step (data.global_batch_size): use one of "
                f"{divisors(prompts)}"]
    return []


def rollout_problems(config, mesh) -> list[str]:
    """The impossible values of a GRPO config's ``rollout`` section on ``mesh`` (``rollout_weights.layout_problems``),
    checked before any weight is read: the KV heads come from ``model.init_from``'s own config (or the preset); an
    unreadable ``init_from`` is left to the path checks, which name it."""
    kv_heads = None
    if config.rollout.get("layout") == "tensor":
        try:
            kv_heads = planned_model_config(config).text.num_key_value_heads
        except (OSError, ValueError):
            kv_heads = None
    return rollout_weights.layout_problems(config.rollout, int(mesh.devices.size), kv_heads)


# ---- pure pieces ----------------------------------------------------------------------------------------------
def group_advantages(rewards: jax.Array, group: int, std_estimator: str = "unbiased",
                     eps: float = 1e-4) -> jax.Array:
    """(R - mean_G) / (std_G + eps) within each run of ``group`` consecutive rows (SPEC §4); a group whose rewards
    are all equal gets exactly 0 (``grpo_variants.scaled_advantages`` with ``scale="group"``)."""
    return gv.scaled_advantages(rewards, jnp.ones(rewards.shape, jnp.float32), group, "group", std_estimator, eps)


def token_weights(mask, row_weight) -> jax.Array:
    """w [N, T] float32: the completion mask [N, T] times each row's weight [N] (0 for a padding row)."""
    return mask.astype(jnp.float32) * row_weight[:, None]


def grpo_objective(logp, old_logp, ref_logp, advantages, mask, row_weight, cfg: GRPOConfig,
                   batch: gv.Normalisers | None = None):
    """The GRPO loss and its diagnostics. logp/old/ref/mask [N, T] float32; advantages and row_weight [N].

    Per token: the clipped surrogate of the importance ratio (per token, or GSPO's per-sequence ratio on every
    token of its sequence, with its own epsilons) plus β times the k3 KL estimate exp(ref − π) − (ref − π) − 1 to
    the reference; aggregated by ``cfg.loss_aggregation`` (``grpo_variants.aggregate_loss``). Diagnostics (token
    means over the weighted tokens): ``kl``, ``clip_fraction`` (tokens whose clipped branch is active) and
    ``policy_loss``. ``batch``: the whole batch's denominators when these rows are one micro-batch of it (loss and
    diagnostics then add up over the micro-batches); default: these rows'."""
    weights = token_weights(mask, row_weight)
    adv = advantages[:, None]
    ratio = gv.importance_ratio(logp, old_logp, mask, cfg.importance_sampling)
    epsilons = ((cfg.sequence_epsilon_low, cfg.sequence_epsilon_high) if cfg.importance_sampling == "sequence"
                else (cfg.epsilon_low, cfg.epsilon_high))
    policy, is_clipped = gv.clipped_surrogate(ratio, adv, *epsilons)
    policy = jnp.broadcast_to(policy, logp.shape)
    is_clipped = jnp.broadcast_to(is_clipped, logp.shape)
    delta = ref_logp - logp
    kl = jnp.exp(delta) - delta - 1.0
    per_token = policy + cfg.beta * kl
    loss = gv.aggregate_loss(per_token, weights, cfg.loss_aggregation, cfg.horizon_constant or logp.shape[1], batch)
    tokens = jnp.maximum(weights.sum() if batch is None else batch.tokens, 1.0)
    metrics = dict(kl=(kl * weights).sum() / tokens, clip_fraction=(is_clipped * weights).sum() / tokens,
                   policy_loss=(policy * weights).sum() / tokens)
    return loss, metrics


def chunked_logprobs(hidden, project, targets, chunk: int, temperature: float = 1.0,
                     suppress_token_ids: tuple[int, ...] = ()) -> jax.Array:
    """log softmax(project(hidden) / temperature) at ``targets``; [N, T] float32, chunked over T. The
    ``suppress_token_ids`` the sampler never draws are left out of the softmax, as in the sampler."""
    def one(h, t):
        logits = smp.suppress_tokens(project(h).astype(jnp.float32), suppress_token_ids) / temperature
        return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), t[..., None], axis=-1)[..., 0]
    n, length, _ = hidden.shape
    if chunk <= 0 or chunk >= length or length % chunk:
        return one(hidden, targets)
    split = lambda x: jnp.moveaxis(x.reshape(n, length // chunk, chunk, *x.shape[2:]), 1, 0)
    out = jax.lax.map(lambda a: jax.checkpoint(one)(*a), (split(hidden), split(targets)))
    return jnp.moveaxis(out, 0, 1).reshape(n, length)


def completion_logprobs(model, batch: dict, group: int, cfg: GRPOConfig) -> jax.Array:
    """Log-probs of each completion token under ``model``: prompt + completion in one forward, the image
    features computed once per prompt and shared by its G samples. A completion is text: an ``<|image_pad|>``
    the sampler wrote is embedded as the token it is, takes no image feature and moves the position by one, as
    in the sampler's decode (``completion_slot_ids``)."""
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    tokens, mask = batch["tokens"], batch["mask"]
    ids = jnp.concatenate([prompt_ids, tokens], axis=1)
    slots = completion_slot_ids(prompt_ids, tokens, model.config.image_token_id)
    attention = jnp.concatenate([prompt_mask, mask], axis=1)
    features, grid = None, None
    if batch.get("pixel_values") is not None:
        features = model.image_features(batch["pixel_values"], batch["image_grid_thw"])
        features = jax.tree.map(lambda a: jnp.repeat(a, group, axis=0), features)  # Qwen3-VL: with DeepStack
        grid = jnp.repeat(batch["image_grid_thw"], group, axis=0)
    positions, _ = model.positions(slots, attention, grid)
    hidden = model.hidden_states(ids, None, grid, attention, positions, image_features=features, slot_ids=slots)
    s = prompt_ids.shape[1]
    before = hidden[:, s - 1: s - 1 + tokens.shape[1]]
    return chunked_logprobs(before, model.language.logits, tokens, cfg.logprob_chunk, cfg.temperature,
                            cfg.suppress_token_ids)


def completion_slot_ids(prompt_ids: jax.Array, tokens: jax.Array, image_token_id: int) -> jax.Array:
    """int32 [N, S + T]: the prompt's ids, then the completion's with every ``image_token_id`` replaced by -1 (no
    token), so that only the prompt's image tokens are image slots for the feature merge and M-RoPE."""
    return jnp.concatenate([prompt_ids, jnp.where(tokens == image_token_id, -1, tokens)], axis=1)


def score_step(parts: ModelParts, cfg: GRPOConfig, trainable, frozen, ref_trainable, batch):
    """(old-policy log-probs or None, reference log-probs) [N, T] float32, without gradient.

    With μ = 1 (``inner_iterations``) the one update runs on the parameters that sampled, so π_old is the
    update's own forward: ``update_step`` takes its log-probs, detached, as π_old (as TRL's GRPOTrainer does for
    ``num_iterations=1``) and the old-policy forward here is skipped (None), one forward fewer per step. With
    μ > 1 the later updates need π_old as it was before the first, so it is scored here."""
    ref = completion_logprobs(parts.merge_for_compute(ref_trainable, frozen), batch, cfg.num_samples, cfg)
    if cfg.inner_iterations == 1:
        return None, jax.lax.stop_gradient(ref)
    old = completion_logprobs(parts.merge_for_compute(trainable, frozen), batch, cfg.num_samples, cfg)
    return jax.lax.stop_gradient(old), jax.lax.stop_gradient(ref)


def update_step(parts: ModelParts, tx, lr_schedule, cfg: GRPOConfig, state: TrainState, batch, old_logp,
                ref_logp, advantages):
    """One optimizer update (``guarded_update``) on the learner batch: rows [P·G, ...] of ``batch``, ``old_logp``
    (None with μ = 1: this forward's log-probs, detached) and ``ref_logp`` [P·G, T], ``advantages`` [P·G];
    pixel_values / image_grid_thw per prompt [P, ...].

    ``cfg.update_microbatches`` = M > 1 runs the forward and backward over M micro-batches of whole prompt groups
    (``microbatches``) in a ``lax.scan``, their gradients summed in float32 laid out as the trained parameters, so
    one micro-batch's activations are alive at a time. The loss's denominators are the whole batch's
    (``grpo_variants.normalisers``), so loss, diagnostics and gradient are the single pass's up to the order of
    float32 sums (tests/rl/test_grpo_microbatches.py)."""
    rows = dict(batch, old_logp=old_logp, ref_logp=ref_logp, advantages=advantages)

    def loss_fn(trainable, rows, normalisers):
        logp = completion_logprobs(parts.merge_for_compute(trainable, state.frozen), rows, cfg.num_samples, cfg)
        old = rows.get("old_logp")
        old = jax.lax.stop_gradient(logp) if old is None else old   # μ = 1: π_old is this forward (score_step)
        return grpo_objective(logp, old, rows["ref_logp"], rows["advantages"], rows["mask"], rows["row_weight"],
                              cfg, normalisers)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if cfg.update_microbatches == 1:
        (loss, aux), grads = grad_fn(state.trainable, rows, None)
    else:
        whole = gv.normalisers(token_weights(batch["mask"], batch["row_weight"]))

        def accumulate(total, micro):
            (value, scalars), g = grad_fn(state.trainable, micro, whole)
            total = jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, g)
            return parts.sharded_like_trainable(total), (value, scalars)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.trainable)
        grads, (losses, aux) = jax.lax.scan(accumulate, parts.sharded_like_trainable(zeros),
                                            microbatches(rows, cfg.update_microbatches, cfg.num_samples))
        loss, aux = losses.sum(), jax.tree.map(jnp.sum, aux)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.trainable)
    grads = parts.sharded_like_trainable(grads)
    new_state, metrics = guarded_update(tx, state, grads, loss)
    return new_state, dict(metrics, loss=loss, learning_rate=lr_schedule(state.step), **aux)


# learner arrays with one entry per prompt (its image); every other one has a row per completion (P·G)
PROMPT_KEYS = ("pixel_values", "image_grid_thw")


def microbatches(batch: dict, count: int, group: int) -> dict:
    """The learner ``batch`` as ``count`` micro-batches of whole prompt groups on a new leading axis: micro-batch m
    holds prompts m, m + count, m + 2·count, ... with their ``group`` rows each. Rows [P·G, ...] become
    [count, P/count·G, ...], the per-prompt ``PROMPT_KEYS`` [P, ...] become [count, P/count, ...]; None values
    are left out. Strided, not contiguous, because a device holds a contiguous block of prompts
    (``parallel.batch_sharding``): each block splits locally into its part of every micro-batch, so no data moves
    and every micro-batch is spread over all devices (pinned so on the mesh in context, the new axis unsharded).
    ValueError when ``count`` does not divide P."""
    prompts = batch["prompt_ids"].shape[0] // group
    if prompts % count:
        raise ValueError(f"update_microbatches={count} does not divide the {prompts} prompt groups of the batch")

    def split(key, x):
        per_prompt = 1 if key in PROMPT_KEYS else group
        x = x.reshape(prompts // count, count, per_prompt, *x.shape[1:])
        x = jnp.moveaxis(x, 1, 0).reshape(count, prompts // count * per_prompt, *x.shape[3:])
        return parallel.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
    return {k: split(k, v) for k, v in batch.items() if v is not None}


def learner_batch(rollout: smp.Rollout, pixel_values, image_grid_thw, rewards: jax.Array, row_weight: jax.Array,
                  cfg: GRPOConfig, keep: int, stop_token_ids: tuple[int, ...]) -> tuple[dict, jax.Array, dict]:
    """From the rollout of P prompts x G samples and their total rewards [P·G] to what the learner trains on:
    (batch of ``keep`` prompts x G rows for ``score_step`` / ``update_step``, advantages [keep·G], scalars).

    In order: truncated completions (the whole budget, no stop token) are counted (``completions/clipped_ratio``,
    over the real rows, logged in every mode); ``overlong="soft_penalty"`` adds DAPO's length penalty to the
    reward, ``"mask"`` gives the truncated rows weight 0; ``dynamic_sampling`` keeps the first ``keep`` groups with
    a reward spread (P = oversample x keep drawn) and pads with weight-0 groups when too few qualify (the shapes
    never change); the advantages are then scaled by ``cfg.scale_rewards`` over the kept rows. Pure and jittable;
    pixel_values [P, M, D] and image_grid_thw [P, I, 3] (or None) are the pipeline's batched layout.
    """
    group = cfg.num_samples
    cut = gv.truncated(rollout.tokens, rollout.lengths, stop_token_ids)
    real = (row_weight > 0).astype(jnp.float32)
    n_real = jnp.maximum(real.sum(), 1.0)
    stats = {"completions/clipped_ratio": (cut * real).sum() / n_real}
    total, weight = rewards.astype(jnp.float32), row_weight.astype(jnp.float32)
    if cfg.overlong == "soft_penalty":
        penalty = gv.overlong_penalty(rollout.lengths, rollout.tokens.shape[1], cfg.overlong_buffer,
                                      cfg.overlong_penalty_factor)
        total = total + penalty
        stats["reward/overlong_penalty"] = (penalty * real).sum() / n_real
    elif cfg.overlong == "mask":
        weight = weight * (~cut).astype(jnp.float32)
    batch = dict(prompt_ids=rollout.prompt_ids, prompt_mask=rollout.prompt_mask, tokens=rollout.tokens,
                 mask=rollout.mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw)
    if cfg.dynamic_sampling:
        drawn = rewards.shape[0] // group
        index, kept, qualified = gv.select_groups(total, weight, group, keep)
        rows = gv.group_rows(index, group)
        batch = {k: None if v is None else v[index if k in ("pixel_values", "image_grid_thw") else rows]
                 for k, v in batch.items()}
        total, weight = total[rows], weight[rows] * jnp.repeat(kept, group).astype(jnp.float32)
        used = jnp.minimum(qualified, keep)
        stats.update({"dynamic_sampling/qualified_groups": qualified, "dynamic_sampling/padding_groups": keep - used,
                      "dynamic_sampling/kept_fraction": used / drawn})
    batch["row_weight"] = weight
    advantages = gv.scaled_advantages(total, weight, group, cfg.scale_rewards, cfg.std_estimator)
    return batch, advantages, stats


def length_intensity_correlation(lengths: np.ndarray, intensity: np.ndarray) -> float:
    """Pearson correlation of completion length with the prompt's summed degradation intensity."""
    if np.std(lengths) == 0 or np.std(intensity) == 0:
        return 0.0
    return float(np.corrcoef(lengths, intensity)[0, 1])


# ---- the learner's shapes: prompt and completion buckets ------------------------------------------------------
# ``score`` and ``update`` run on the columns a step needs: the prompt bucket its longest prompt needs and the
# completion bucket its longest completion needs, from short fixed lists (at most one compile each), instead of
# the pipeline's prompt length plus the whole sampling horizon. Padding columns are masked out of every sum, so
# the results are those of the full-width programs (tests/rl/test_learner_buckets.py).
LEARNER_BUCKETS = (128, 256, 512, 1024, 2048)
# traces of the learner's programs by (program, prompt bucket, completion bucket): one per compile
LEARNER_TRACES: collections.Counter = collections.Counter()


def bucket_for(length: int, buckets, limit: int) -> int:
    """The smallest of ``buckets`` below ``limit``, and ``limit`` itself, that holds ``length`` tokens.

    Raises ValueError when ``length`` exceeds ``limit`` (the rollout cannot produce that)."""
    if length > limit:
        raise ValueError(f"{length} tokens do not fit the learner's limit of {limit}")
    return min(b for b in {int(b) for b in buckets if 0 < b < limit} | {int(limit)} if b >= length)


def learner_view(batch: dict, prompt_bucket: int, completion_bucket: int) -> dict:
    """The learner batch cut to its buckets: the last ``prompt_bucket`` prompt columns (prompts are left padded)
    and the first ``completion_bucket`` completion columns (completions are right padded)."""
    out = dict(batch)
    for key in ("prompt_ids", "prompt_mask"):
        out[key] = batch[key][:, batch[key].shape[1] - prompt_bucket:]
    for key in ("tokens", "mask"):
        out[key] = batch[key][:, :completion_bucket]
    return out


@jax.jit
def _learner_lengths(prompt_mask, mask):
    """(longest prompt, longest completion, real tokens) of the learner rows, as one small program."""
    prompts, completions = jnp.sum(prompt_mask, axis=1), jnp.sum(mask, axis=1)
    return jnp.max(prompts), jnp.max(completions), jnp.sum(prompts) + jnp.sum(completions)


def learner_buckets(config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(prompt buckets, completion buckets) of a GRPO config (``config.learner``; default ``LEARNER_BUCKETS``)."""
    learner = config.get("learner") or {}
    return (tuple(learner.get("prompt_buckets", LEARNER_BUCKETS)),
            tuple(learner.get("completion_buckets", LEARNER_BUCKETS)))


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
                                        if k not in DERIVED})
    c.sampling = sampling.default_config(max_new_tokens=2048, temperature=GRPOConfig.temperature)
    c.rewards = ml_collections.ConfigDict(dict(variant="paper", accuracy=1.0, format=1.0, degradation=1.0,
                                               length=1.0))
    # the sampler's weight layout ("tensor": its tensor axis) and decode length buckets (rl/rollout_weights.py,
    # SamplerConfig.decode_bucket)
    c.rollout = ml_collections.ConfigDict(dict(layout="replicated", tensor_parallel=2, decode_bucket=256))
    # the learner's prompt and completion buckets (each list capped by the prompt length / sampling horizon)
    c.learner = ml_collections.ConfigDict(dict(prompt_buckets=LEARNER_BUCKETS, completion_buckets=LEARNER_BUCKETS))
    del c.data["packing"]   # packing is SFT's (data/packing.py); GRPO rows are prompts
    return c


# GRPOConfig fields that come from elsewhere in the config (or the model), not from config.grpo.
DERIVED = ("temperature", "max_new_tokens", "suppress_token_ids")


def suppressed_token_ids(config, model_cfg) -> tuple[int, ...]:
    """The ids neither the rollouts sample nor the learner's softmax holds (``sampling.suppress_vision_tokens``)."""
    return smp.vision_token_ids(model_cfg) if config.sampling.get("suppress_vision_tokens", True) else ()


def grpo_config(config, model_cfg=None) -> GRPOConfig:
    """``config.grpo`` with the sampling temperature and budget, and (given the model's config) the suppressed
    token ids."""
    return GRPOConfig(**dict(config.grpo), temperature=float(config.sampling.temperature),
                      max_new_tokens=int(config.sampling.max_new_tokens),
                      suppress_token_ids=() if model_cfg is None else suppressed_token_ids(config, model_cfg))


def sampler_config(config, gcfg: GRPOConfig, model_cfg) -> smp.SamplerConfig:
    settings = sampling.sampler_settings(config.sampling)
    del settings["suppress_vision_tokens"]
    return smp.SamplerConfig(**settings, num_samples=gcfg.num_samples,
                             stop_token_ids=smp.default_stop_token_ids(model_cfg), pad_token_id=model_cfg.bos_token_id,
                             suppress_token_ids=suppressed_token_ids(config, model_cfg),
                             decode_bucket=int(config.rollout.decode_bucket))


def _compiled_steps(r: Run, gcfg: GRPOConfig, scfg: smp.SamplerConfig):
    """The jitted scoring (old policy and reference log-probs), update and learner-batch functions of a run."""
    score_fn, update_fn = learner_programs(r.parts, r.tx, r.schedule, gcfg, shardings_of(r.state))
    keep = int(r.config.data.global_batch_size)
    prepare_fn = jax.jit(lambda ro, px, grid, rewards, w: learner_batch(ro, px, grid, rewards, w, gcfg, keep,
                                                                        scfg.stop_token_ids))
    return score_fn, update_fn, prepare_fn


def learner_programs(parts: ModelParts, tx, schedule, gcfg: GRPOConfig, state_shardings=None):
    """Jitted ``score_step`` and ``update_step`` (state donated, laid out by ``state_shardings``); each trace of
    score / update counts in ``LEARNER_TRACES`` under its buckets."""
    def traced(name, batch):   # runs only while JAX traces: one entry per compile
        LEARNER_TRACES[(name, batch["prompt_ids"].shape[1], batch["tokens"].shape[1])] += 1

    def score(tr, fr, ref, b):
        traced("score", b)
        return score_step(parts, gcfg, tr, fr, ref, b)

    def update(s, b, o, ref, a):
        traced("update", b)
        return update_step(parts, tx, schedule, gcfg, s, b, o, ref, a)

    return jax.jit(score), jax.jit(update, out_shardings=(state_shardings, None), donate_argnums=(0,))


def run(config) -> dict:
    """``train.steps`` GRPO steps (resuming the workdir's newest checkpoint); returns one metrics row per step
    and the run summary of ``Run.finish``."""
    g = config.grpo
    r = Run(config, "grpo", loader_kind="rl",
            problems=lambda mesh: config_problems(config) + rollout_problems(config, mesh),
            loader_scale=int(g.oversample) if g.dynamic_sampling else 1)
    gcfg = grpo_config(config, r.model_config)
    ref_trainable = jax.tree.map(jnp.copy, r.state.trainable)   # the frozen reference: the starting policy
    with r:
        weights = rw.RewardWeights(**{k: config.rewards[k] for k in ("accuracy", "format", "degradation", "length")})
        table = token_bytes_table(r.processor.tokenizer, vocab_size=r.model_config.text.vocab_size)
        scfg = sampler_config(config, gcfg, r.model_config)
        score_fn, update_fn, prepare_fn = _compiled_steps(r, gcfg, scfg)
        policy = rollout_weights.decode_copy(r.parts, r.mesh, config.rollout.layout, r.model_config.dtype,
                                             int(config.rollout.get("tensor_parallel", 2)))
        state, history, base_rng, meter, mesh = r.state, [], jax.random.key(config.seed), mx.Meter(), r.mesh
        truncation_warned = False
        prompt_buckets, completion_buckets = learner_buckets(config)
        learner_shapes = []
        for step in r.steps():
            local = next(r.loader)
            prompts = _device_prompts(mesh, local)
            # the rollout's copy of the weights lives only in this call: freed before scoring and the update
            rollout = policy.generate(state.trainable, state.frozen, prompts["prompt_ids"], prompts["prompt_mask"],
                                      prompts.get("pixel_values"), prompts.get("image_grid_thw"), scfg,
                                      jax.random.fold_in(base_rng, step))
            refs = _references(mesh, local, gcfg.num_samples)
            scores = rw.compute(rollout.tokens, rollout.mask, refs, table, config.rewards.variant, weights)
            batch, advantages, shaping = prepare_fn(rollout, prompts.get("pixel_values"),
                                                    prompts.get("image_grid_thw"), scores["total"],
                                                    _row_weights(mesh, local, gcfg.num_samples))
            longest_prompt, longest, real = (int(v) for v in mx.fetch(_learner_lengths(batch["prompt_mask"],
                                                                                       batch["mask"])))
            shape = (bucket_for(longest_prompt, prompt_buckets, batch["prompt_ids"].shape[1]),
                     bucket_for(longest, completion_buckets, batch["tokens"].shape[1]))
            if shape not in learner_shapes:
                learner_shapes.append(shape)
                log.info("GRPO learner: score and update compile for prompt bucket %d + completion bucket %d "
                         "(buckets so far: %s)", *shape, learner_shapes)
            batch = learner_view(batch, *shape)
            old_logp, ref_logp = score_fn(state.trainable, state.frozen, ref_trainable, batch)
            skipped = 0
            for _ in range(gcfg.inner_iterations):
                state, metrics = update_fn(state, batch, old_logp, ref_logp, advantages)
                skipped += metrics["skipped"]
            intensity = mx.fetch(_global(mesh, np.asarray(local["summed_intensity"], np.float32)))
            row = _step_metrics(mx.fetch(dict(metrics, skipped=skipped)), mx.fetch(scores),
                                mx.fetch(rollout.lengths), intensity, gcfg.num_samples, meter.tick())
            row.update({k: float(v) for k, v in mx.fetch(shaping).items()})
            keep = int(config.data.global_batch_size)
            truncation_warned = _warn_about_shaping(step + 1, row, keep, truncation_warned,
                                                    keep * gcfg.oversample, gcfg.overlong == "mask")
            padded = batch["tokens"].shape[0] * (shape[0] + shape[1])
            row.update(mx.token_accounting(float(real), float(padded), row["step_time"]))
            row["learner/prompt_bucket"], row["learner/completion_bucket"] = shape
            history.append(row)
            r.step_done(step, state, row, dict(reward=f"{row['reward/total']:.3f}"),
                        lambda: _console_line(step + 1, config.train.steps, row))
        summary = r.finish(state)
    return dict(history=history, learner_shapes=learner_shapes, **summary)


def _warn_about_shaping(step: int, row: dict, keep: int, truncation_warned: bool, drawn: int,
                        masked: bool) -> bool:
    """Warns once per run when more than half the completions were truncated (a run where every sample hits the
    budget trains on nothing useful yet can look healthy), and at every step whose dynamic sampling padded groups
    (naming the groups drawn, and under ``overlong="mask"`` that a group of masked rows does not qualify either);
    returns whether the truncation warning has now been given."""
    ratio = row["completions/clipped_ratio"]
    if ratio > 0.5 and not truncation_warned:
        log.warning("grpo step %d: %.0f%% of the completions hit sampling.max_new_tokens without a stop token; "
                    "their rewards judge cut-off text (raise the budget, or see grpo.overlong)", step, 100 * ratio)
        truncation_warned = True
    padding = int(row.get("dynamic_sampling/padding_groups", 0))
    if padding:
        need = "a reward spread" + (" and a row overlong='mask' kept" if masked else "")
        log.warning("grpo step %d: dynamic sampling: %d of the %d groups drawn had %s; %d weight-0 padding groups "
                    "fill the batch of %d", step, int(row["dynamic_sampling/qualified_groups"]), drawn, need,
                    padding, keep)
    return truncation_warned


def _console_line(step: int, total: int, row: dict) -> str:
    return (f"rl step {step}/{total} reward {row['reward/total']:.4f} deg {row['reward/degradation']:.4f} "
            f"len {row['reward/length']:.4f} kl {row['kl']:.4g}")


def _global(mesh, array: np.ndarray):
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
