"""The weights the GRPO sampler decodes on (issue 24).

A decode step reads every weight once per generated token for only a few dozen rows per chip, so its time is the
bytes it reads and the collectives it waits for. Laid out for training (fp32, split over the fsdp axis) the step
reads fp32 weights and all-reduces activations in every layer (about 12.7 ms per step for the 3B recipe on v5p-8
by XLA's TPU cost model, 5.7x its HBM roofline; WORKSPACE.md "Rollout"). Layout "replicated" decodes on a copy of
the whole model in the compute dtype (bf16 in the recipes: 7.5 GB for 3B) on every chip: made once per GRPO step
from the training state (one all-gather of the fp32 shards, cast on the shard before it), it leaves the rollout
batch-parallel with no collective inside the decode loop, and it is freed when the rollout returns, before the
scoring and the update. Every layer casts its weights to the compute dtype at use, so the copy holds exactly the
values the layers compute with; what differs from decoding on the sharded state is only the order of the sums
(no partial sums across chips), so float32 rollouts agree to rounding and bf16 ones to bf16 rounding.

"training" decodes on the training state as it lies (no copy: the least memory).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from robust_r1_jax import parallel

LAYOUTS = ("replicated", "training")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"rollout.layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def cast_floating(tree, dtype):
    """Every floating leaf in ``dtype``; integer leaves (none in the models today) unchanged."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def decode_copy(parts, mesh, layout: str, dtype) -> Callable:
    """``policy(trainable, frozen) -> Qwen25VL``, the model the sampler runs on: the training state's model for
    "training"; for "replicated" a model whose every parameter is a copy in ``dtype`` on every device of ``mesh``
    (one jitted program; the caller drops the model after the rollout, which frees the copy)."""
    if check_layout(layout) == "training":
        return parts.merge
    copy = jax.jit(lambda trainable, frozen: cast_floating(nnx.split(parts.merge(trainable, frozen))[1], dtype),
                   out_shardings=parallel.replicated(mesh))
    graphdef = []   # the model's structure, taken once: the same graphdef every step keeps the rollout compiled

    def policy(trainable, frozen):
        if not graphdef:
            graphdef.append(nnx.graphdef(parts.merge(trainable, frozen)))
        return nnx.merge(graphdef[0], copy(trainable, frozen))
    return policy
