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

"tensor" decodes on a compute-dtype copy laid out for decoding on a rollout mesh made of the same devices
(``parallel.rollout_mesh``: data = devices / ``rollout.tensor_parallel``, tensor = ``rollout.tensor_parallel``) by
``parallel.ROLLOUT_AXIS_RULES``: attention heads, KV heads, MLP columns and the vocabulary split over "tensor"
(Megatron style: two all-reduces of [rows, hidden] per layer), rows and the KV cache's rows over "data", its KV
heads over "tensor". A chip reads 1 / tensor_parallel of the weights per token (3.1 GB of the 3B model's 6.2 GB
at 2-way) for tensor_parallel times the rows; the 2 KV heads of Qwen2.5-VL-3B cap the split at 2. Made once per
step by one jitted cast + reshard from the fsdp-sharded state, dropped with the rollout like the replicated copy.
The rollout traces under ``jax.set_mesh(rollout mesh)`` and ``parallel.axis_rules(ROLLOUT_AXIS_RULES)`` with its
prompts moved onto it, so the activation pins (``parallel.constrain``) and splash attention's shard_map follow the
rollout mesh; its outputs go back to the training mesh's batch layout.

"training" decodes on the training state as it lies (no copy: the least memory).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from robust_r1_jax import parallel
from robust_r1_jax.model import generate as smp

LAYOUTS = ("replicated", "tensor", "training")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"rollout.layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def layout_problems(rollout, devices: int, kv_heads: int | None = None) -> list[str]:
    """The impossible values of a GRPO config's ``rollout`` section on ``devices`` devices for a model with
    ``kv_heads`` KV heads (None: not known yet), one line each: an unknown layout; for "tensor" a
    ``tensor_parallel`` that is not a positive divisor of the device count and of the KV heads (a chip holds
    whole KV heads and their query groups)."""
    layout = rollout.get("layout", "replicated")
    if layout not in LAYOUTS:
        return [f"config.rollout.layout={layout!r}: expected one of {', '.join(LAYOUTS)}"]
    if layout != "tensor":
        return []
    tp = rollout.get("tensor_parallel", 2)
    if isinstance(tp, bool) or not isinstance(tp, (int, np.integer)) or tp < 1:
        return [f"config.rollout.tensor_parallel={tp!r}: expected a positive integer (the rollout mesh's tensor "
                f"axis)"]
    problems = []
    if devices % tp:
        problems.append(f"config.rollout.tensor_parallel={tp} does not divide the {devices} devices (the rollout "
                        f"mesh is data = devices / tensor_parallel by tensor = tensor_parallel)")
    if kv_heads is not None and kv_heads % tp:
        problems.append(f"config.rollout.tensor_parallel={tp} does not divide the model's {kv_heads} KV heads "
                        f"(each chip holds whole KV heads; 1 or a divisor of {kv_heads})")
    return problems


def cast_floating(tree, dtype):
    """Every floating leaf in ``dtype``; integer leaves (none in the models today) unchanged."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _on_mesh(tree, mesh: Mesh):
    """Every array of ``tree`` (None kept) on ``mesh``: rows (axis 0) over the batch axes, scalars replicated."""
    place = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, np.ndim(x)) if np.ndim(x)
                                     else parallel.replicated(mesh))
    return jax.tree.map(place, tree)


@dataclasses.dataclass
class DecodePolicy:
    """The sampler's view of the training state. ``policy(trainable, frozen)`` is the model the sampler runs on
    (a new copy per call, except for "training"); ``policy.generate(trainable, frozen, ...)`` samples a rollout on
    it (``model.generate.generate``'s arguments after the model) and returns it laid out like the training
    mesh's batches. ``mesh``: the mesh the copy and the rollout live on (the training mesh except for "tensor")."""
    layout: str
    mesh: Mesh
    train_mesh: Mesh
    model_of: Callable

    def __call__(self, trainable, frozen):
        return self.model_of(trainable, frozen)

    def generate(self, trainable, frozen, prompt_ids, prompt_mask, pixel_values, image_grid_thw,
                 config: smp.SamplerConfig, rng: jax.Array) -> smp.Rollout:
        model = self(trainable, frozen)
        if self.mesh is self.train_mesh:
            return smp.generate(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, config, rng)
        with jax.set_mesh(self.mesh), parallel.axis_rules(parallel.ROLLOUT_AXIS_RULES):
            *prompts, rng = _on_mesh((prompt_ids, prompt_mask, pixel_values, image_grid_thw, rng), self.mesh)
            rollout = smp.generate(model, *prompts, config, rng)
        return _on_mesh(rollout, self.train_mesh)


def decode_copy(parts, mesh, layout: str, dtype, tensor_parallel: int = 2) -> DecodePolicy:
    """The sampler's weights in ``layout`` (see the module docstring): "training" the training state's model;
    "replicated" a copy of every parameter in ``dtype`` on every device of ``mesh``; "tensor" a copy in ``dtype``
    on ``parallel.rollout_mesh(mesh, tensor_parallel)`` by ``parallel.ROLLOUT_AXIS_RULES``. Each copy is one
    jitted program, compiled once (the model's structure is taken at the first call); the caller drops the model
    after the rollout, which frees the copy. ValueError for an unknown layout or a ``tensor_parallel`` that does
    not divide the devices."""
    if check_layout(layout) == "training":
        return DecodePolicy(layout, mesh, mesh, parts.merge)
    target = parallel.rollout_mesh(mesh, tensor_parallel) if layout == "tensor" else mesh
    made = {}   # the graphdef and the copy's program, built at the first call: the same every step

    def model_of(trainable, frozen):
        if not made:
            graphdef, state = nnx.split(parts.merge(trainable, frozen))
            out = (parallel.state_shardings(state, target, parallel.ROLLOUT_AXIS_RULES) if layout == "tensor"
                   else parallel.replicated(target))
            made["graphdef"] = graphdef
            made["copy"] = jax.jit(lambda tr, fr: cast_floating(nnx.split(parts.merge(tr, fr))[1], dtype),
                                   out_shardings=out)
        return nnx.merge(made["graphdef"], made["copy"](trainable, frozen))
    return DecodePolicy(layout, target, mesh, model_of)
