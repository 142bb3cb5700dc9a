"""The GRPO variants researchers sweep, as small pure jittable functions (``config.grpo`` picks them; the defaults
are the reference run of SPEC §4, so the paper's recipe is unchanged). WORKSPACE.md "GRPO" lists each with its
formula, its source and which one the paper used.

Shapes: N rows (B prompts x G samples, grouped by prompt), T completion tokens. ``weights`` [N, T] float32 is the
completion mask times each row's weight (0 for a padding row, a dynamic-sampling padding group, or a truncated
completion under ``overlong="mask"``).

Sources: GRPO, Shao et al. 2024 (arXiv:2402.03300); DAPO, Yu et al. 2025 (arXiv:2503.14476: clip-higher,
dynamic sampling, token-level loss, overlong filtering and soft overlong punishment); Dr. GRPO, Liu et al. 2025
(arXiv:2503.20783: no length or std normalisation); GSPO, Zheng et al. 2025 (arXiv:2507.18071: sequence-level
importance ratio); TRL's ``GRPOConfig`` (``loss_type``, ``importance_sampling_level``, ``scale_rewards``) for the
names.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LOSS_AGGREGATIONS = ("sequence_mean", "token_mean", "sequence_sum_constant")
IMPORTANCE_SAMPLING = ("token", "sequence")
REWARD_SCALINGS = ("group", "batch", "none")
OVERLONG = ("none", "mask", "soft_penalty")
STD_ESTIMATORS = ("unbiased", "biased")


# ---- loss aggregation -----------------------------------------------------------------------------------------
class Normalisers(NamedTuple):
    """The batch-wide denominators of the loss and its diagnostics (float32 scalars): ``rows``, the rows with a
    weighted token (``sequence_mean``, ``sequence_sum_constant``), and ``tokens``, the weight sum (``token_mean``
    and the diagnostics' token means). A batch split into micro-batches (``rl/grpo.py`` ``update_step``) takes them
    from the whole batch, so the micro-batches' losses add up to the batch's."""
    rows: jax.Array
    tokens: jax.Array


def normalisers(weights: jax.Array) -> Normalisers:
    """The ``Normalisers`` of ``weights`` [N, T] float32 (the whole batch's)."""
    counts = weights.sum(axis=1)
    return Normalisers(rows=(counts > 0).astype(jnp.float32).sum(), tokens=weights.sum())


def _row_sums(per_token: jax.Array, weights: jax.Array):
    """Per row: the weighted token sum, the weight sum, and 1.0 where the row has a weighted token."""
    counts = weights.sum(axis=1)
    return (per_token * weights).sum(axis=1), counts, (counts > 0).astype(jnp.float32)


def sequence_mean_loss(per_token: jax.Array, weights: jax.Array, rows: jax.Array | None = None) -> jax.Array:
    """GRPO as Shao et al. 2024 (arXiv:2402.03300) and the reference run: (1/|rows|) Σ_i (Σ_t w_it l_it /
    Σ_t w_it) over the rows with a weighted token; each sequence counts once, whatever its length. ``rows``:
    |rows| of the whole batch when these are some of its rows (default: counted here)."""
    sums, counts, live = _row_sums(per_token, weights)
    rows = live.sum() if rows is None else rows
    return (sums / jnp.maximum(counts, 1.0) * live).sum() / jnp.maximum(rows, 1.0)


def token_mean_loss(per_token: jax.Array, weights: jax.Array, tokens: jax.Array | None = None) -> jax.Array:
    """DAPO §3.3, the "token-level policy gradient loss" (arXiv:2503.14476): Σ_it w_it l_it / Σ_it w_it;
    each token counts once, so long completions weigh in proportion to their length. ``tokens``: Σ_it w_it of the
    whole batch when these are some of its rows (default: summed here)."""
    sums, counts, _ = _row_sums(per_token, weights)
    tokens = counts.sum() if tokens is None else tokens
    return sums.sum() / jnp.maximum(tokens, 1.0)


def sequence_sum_constant_loss(per_token: jax.Array, weights: jax.Array, constant: float,
                               rows: jax.Array | None = None) -> jax.Array:
    """Dr. GRPO §3.1 (arXiv:2503.20783): Σ_i Σ_t w_it l_it / (|rows| · C), each sequence's token sum over a
    constant C (the horizon, max_new_tokens, by default) instead of its own length, which biased GRPO towards
    long wrong answers; |rows| counts the rows with a weighted token (``rows``: the whole batch's, as above)."""
    sums, _, live = _row_sums(per_token, weights)
    rows = live.sum() if rows is None else rows
    return sums.sum() / (jnp.maximum(rows, 1.0) * constant)


def aggregate_loss(per_token: jax.Array, weights: jax.Array, aggregation: str, constant: float,
                   batch: Normalisers | None = None) -> jax.Array:
    """The scalar loss from per-token losses [N, T] (float32) and ``weights`` [N, T] by ``aggregation``
    (``sequence_mean`` | ``token_mean`` | ``sequence_sum_constant``, the functions above; ``constant`` is the
    last one's C); a batch without a weighted token gives 0. ``batch``: the denominators of the whole batch when
    these rows are one of its micro-batches (the sum over the micro-batches is then the batch's loss); default:
    these rows' own. ValueError for another name."""
    rows, tokens = (None, None) if batch is None else batch
    if aggregation == "sequence_mean":
        return sequence_mean_loss(per_token, weights, rows)
    if aggregation == "token_mean":
        return token_mean_loss(per_token, weights, tokens)
    if aggregation == "sequence_sum_constant":
        return sequence_sum_constant_loss(per_token, weights, constant, rows)
    raise ValueError(f"loss_aggregation must be one of {LOSS_AGGREGATIONS}, got {aggregation!r}")


# ---- importance ratio and the clipped surrogate ---------------------------------------------------------------
def importance_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array, level: str) -> jax.Array:
    """π_θ / π_old: per token [N, T] (``token``, GRPO), or per sequence [N, 1] (``sequence``, GSPO):
    s_i = exp((1/|y_i|) Σ_t (log π_θ(y_it) − log π_old(y_it))) over the completion's tokens (``mask`` [N, T])."""
    if level == "token":
        return jnp.exp(logp - old_logp)
    if level == "sequence":
        m = mask.astype(jnp.float32)
        mean_log = ((logp - old_logp) * m).sum(axis=1, keepdims=True) / jnp.maximum(m.sum(axis=1, keepdims=True),
                                                                                   1.0)
        return jnp.exp(mean_log)
    raise ValueError(f"importance_sampling must be one of {IMPORTANCE_SAMPLING}, got {level!r}")


def clipped_surrogate(ratio: jax.Array, advantages: jax.Array, epsilon_low: float,
                      epsilon_high: float) -> tuple[jax.Array, jax.Array]:
    """PPO's clipped objective as a loss, −min(r·Â, clip(r, 1−ε_low, 1+ε_high)·Â) (DAPO's decoupled ε_low /
    ε_high, "clip-higher"), and whether the clipped branch is the active one (no gradient through r there).
    ratio [N, T] or [N, 1], advantages [N, 1]; both results broadcast to the larger shape."""
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -jnp.minimum(ratio * advantages, clipped * advantages)
    active = ((ratio < 1.0 - epsilon_low) & (advantages < 0)) | ((ratio > 1.0 + epsilon_high) & (advantages > 0))
    return loss, active


# ---- advantages -----------------------------------------------------------------------------------------------
def scaled_advantages(rewards: jax.Array, row_weight: jax.Array, group: int, scale: str = "group",
                      std_estimator: str = "unbiased", eps: float = 1e-4) -> jax.Array:
    """Â [N] float32 from rewards [N] in runs of ``group`` rows: always centred on the group mean, then divided by

    - ``group`` (GRPO, the reference run): std_G + eps, the group's own std;
    - ``batch``: std_B + eps, the std of all the batch's rewards (rows with ``row_weight`` > 0), as TRL's
      ``scale_rewards="batch"`` (Liu et al. 2025, "Part I: Tricks or Traps?", arXiv:2508.08221);
    - ``none`` (Dr. GRPO): nothing, R − mean_G.
    std is torch's unbiased one (ddof 1) for ``unbiased``, ddof 0 for ``biased``. A group whose rewards are all
    equal gets exactly 0 in every mode, where float32's mean would leave a residue that grows with the rewards.
    """
    ddof = 1 if std_estimator == "unbiased" else 0
    r = rewards.reshape(-1, group).astype(jnp.float32)
    centred = r - r.mean(axis=1, keepdims=True)
    uniform = jnp.all(r == r[:, :1], axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (r.std(axis=1, keepdims=True, ddof=ddof) + eps)
    elif scale == "batch":
        w = (row_weight > 0).astype(jnp.float32)
        flat = rewards.astype(jnp.float32)
        n = w.sum()
        mean = (flat * w).sum() / jnp.maximum(n, 1.0)
        var = (jnp.square(flat - mean) * w).sum() / jnp.maximum(n - ddof, 1.0)
        centred = centred / (jnp.sqrt(var) + eps)
    elif scale != "none":
        raise ValueError(f"scale_rewards must be one of {REWARD_SCALINGS}, got {scale!r}")
    return jnp.where(uniform, 0.0, centred).reshape(-1)


# ---- overlong completions -------------------------------------------------------------------------------------
def truncated(tokens: jax.Array, lengths: jax.Array, stop_token_ids: tuple[int, ...]) -> jax.Array:
    """bool [N]: the completions that used the whole budget (``lengths`` == T) without ending on a stop token."""
    horizon = tokens.shape[1]
    last = tokens[:, horizon - 1]
    stopped = jnp.zeros(last.shape, bool)
    for stop in stop_token_ids:
        stopped = stopped | (last == stop)
    return (lengths >= horizon) & ~stopped


def overlong_penalty(lengths: jax.Array, max_new_tokens: int, buffer: int, factor: float = 1.0) -> jax.Array:
    """DAPO's soft overlong punishment (§3.4) [N] float32, added to the reward: 0 up to L_max − L_cache tokens,
    then falling linearly, (L_max − L_cache − |y|) / L_cache, to −1 at L_max (``max_new_tokens``, which a
    completion never exceeds here); L_cache = ``buffer``; scaled by ``factor`` (DAPO: 1)."""
    expected = max_new_tokens - buffer
    over = lengths.astype(jnp.float32) - expected
    return factor * jnp.where(over > 0, -jnp.minimum(over / buffer, 1.0), 0.0)


# ---- dynamic sampling -----------------------------------------------------------------------------------------
def select_groups(rewards: jax.Array, row_weight: jax.Array, group: int, keep: int):
    """DAPO's dynamic sampling (§3.2) with static shapes: of the drawn groups (rewards [P·G], row_weight [P·G]),
    the first ``keep`` whose rewards are not all equal (a group with no spread has advantage 0: no signal) and
    that still has a weighted row. Returns (group indices int32 [keep], kept bool [keep], qualified int32 []):
    when fewer than ``keep`` qualify, the rest of the indices point at other groups, to be given weight 0."""
    r = rewards.reshape(-1, group)
    real = jnp.any(row_weight.reshape(-1, group) > 0, axis=1)
    spread = ~jnp.all(r == r[:, :1], axis=1)
    qualifies = real & spread
    order = jnp.argsort(~qualifies, stable=True).astype(jnp.int32)   # qualifying groups first, in drawn order
    index = order[:keep]
    return index, qualifies[index], qualifies.sum().astype(jnp.int32)


def group_rows(index: jax.Array, group: int) -> jax.Array:
    """Row indices int32 [len(index)·G] of the groups ``index`` (rows b·G .. b·G+G−1 for group b)."""
    return (index[:, None] * group + jnp.arange(group, dtype=index.dtype)[None]).reshape(-1)
