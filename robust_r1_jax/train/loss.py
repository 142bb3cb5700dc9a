"""Next-token cross-entropy on assistant tokens, computed in sequence chunks so the full
[batch, sequence, vocab] logits never exist at once (151,936 columns in float32 is 0.6 MB per token)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def shifted_targets(input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Position t predicts token t+1; the last position predicts nothing."""
    targets = jnp.concatenate([input_ids[:, 1:], jnp.zeros_like(input_ids[:, :1])], axis=1)
    weights = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
    return targets, weights.astype(jnp.float32)


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    logits = logits.astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def chunked_loss_sum(hidden: jax.Array, project, targets: jax.Array, weights: jax.Array,
                     chunk: int) -> jax.Array:
    """Sum over tokens of weight * cross-entropy; ``project`` maps hidden [B, c, E] to logits [B, c, V].

    Each chunk is rematerialised in the backward pass, so only one chunk of logits is live at a time.
    """
    b, s, _ = hidden.shape
    if chunk <= 0 or chunk >= s or s % chunk:
        return jnp.sum(token_losses(project(hidden), targets) * weights)

    @jax.checkpoint
    def one(args):
        h, t, w = args
        return jnp.sum(token_losses(project(h), t) * w)

    split = lambda x: jnp.moveaxis(x.reshape(b, s // chunk, chunk, *x.shape[2:]), 1, 0)
    return jnp.sum(jax.lax.map(one, (split(hidden), split(targets), split(weights))))
