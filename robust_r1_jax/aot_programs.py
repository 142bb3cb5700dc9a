"""The programs a recipe runs, as jitted functions with abstract arguments, for the AOT report (``aot.py``).

Each builder takes the model config (the real one, or a shallow variant for the cost estimate) and returns
the same programs, laid out on the mesh exactly as the training loops lay them out: the state through
``train.state.state_shardings``, batches through ``parallel.batch_sharding``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax import parallel
from robust_r1_jax.data import packing
from robust_r1_jax.aot import Compiled, Program, abstract_state, batch_spec, per_chip_bytes, replicated
from robust_r1_jax.train import optim, run as train_run, state as train_state, step as sft_step


def for_recipe(recipe, cfg, mesh, learner_completion: int = 0) -> list[Program]:
    """``learner_completion``: GRPO's longest completion of the step (0: the horizon), which picks the
    completion bucket ``score`` and ``update`` compile for."""
    if recipe.mode == "sft":
        return sft_programs(recipe, cfg, mesh)
    if recipe.mode == "rl":
        return grpo_programs(recipe, cfg, mesh, learner_completion)
    raise ValueError(f"aot compiles SFT and GRPO recipes; this recipe's mode is {recipe.mode!r}")


def length_profile(recipe) -> dict:
    """The recipe's ``data.length_profile`` (data/packing.py), default SPEC §8's Robust-R1 rows."""
    profile = recipe.data.get("length_profile")
    return dict(profile) if profile else packing.robust_r1_profile()


PROFILE_SAMPLES = 4096   # example sizes drawn from the profile for the useful-token share


def sft_useful_share(recipe, cfg) -> float:
    """Real tokens per computed row slot of the recipe's SFT batches at its length profile, packed or not."""
    d = recipe.data
    sizes = packing.sample_sizes(length_profile(recipe), PROFILE_SAMPLES, merge_unit=cfg.vision.merge_unit)
    budget = packing.RowBudget(d.seq_len, d.patch_bucket, d.image_slots)
    stats = packing.packing_stats(sizes, d.global_batch_size, budget, packing=bool(d.get("packing", False)))
    return 1.0 - stats["padding_fraction"]


def grpo_real_lengths(recipe, cfg, completion_bucket: int) -> tuple[float, float]:
    """Mean real (prompt, completion) tokens of a learner row at the recipe's length profile: the prompt is the
    SFT row without its chain (capped at the prompt length), the completion the chain (capped at the bucket)."""
    profile = length_profile(recipe)
    sizes = packing.sample_sizes(profile, PROFILE_SAMPLES, merge_unit=cfg.vision.merge_unit)
    chains = packing.sample_sizes({**profile, "template_tokens": (0, 0), "image_tokens": (0, 0),
                                   "question_tokens": (0, 0), "suffix_tokens": (0, 0)}, PROFILE_SAMPLES)
    chain = np.array([c.tokens for c in chains], np.float64)
    prompt = np.array([s.tokens for s in sizes], np.float64) - chain
    return (float(np.minimum(prompt, recipe.data.seq_len).mean()),
            float(np.minimum(chain, completion_bucket).mean()))


def _optimizer(recipe):
    """The recipe's AdamW and its learning-rate schedule."""
    o = recipe.optim
    ocfg = optim.OptimConfig(
        learning_rate=o.learning_rate, warmup_steps=o.warmup_steps, total_steps=o.total_steps or recipe.train.steps,
        min_lr_ratio=o.min_lr_ratio, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
        clip_norm=o.clip_norm)
    return optim.optimizer(ocfg), optim.schedule(ocfg)


def _image_shapes(recipe, cfg, rows: int, packed: bool = False) -> dict:
    """Patch buckets as the loader lays them out; packed rows image-major (one sub-bucket per slot)."""
    d = recipe.data
    pixels = ((rows, d.image_slots, d.patch_bucket // d.image_slots, cfg.vision.patch_dim) if packed
              else (rows, d.patch_bucket, cfg.vision.patch_dim))
    return {"pixel_values": (pixels, jnp.float32), "image_grid_thw": ((rows, d.image_slots, 3), jnp.int32)}


# ---- SFT ------------------------------------------------------------------------------------------------------
def sft_programs(recipe, cfg, mesh) -> list[Program]:
    packed = bool(recipe.data.get("packing", False))

    def build(model_cfg, loop_free: bool) -> tuple[Compiled, int, int]:
        tx, schedule = _optimizer(recipe)
        parts, state = abstract_state(model_cfg, tx, tuple(recipe.train.freeze), mesh)
        b, s = recipe.data.global_batch_size, recipe.data.seq_len
        shapes = {"input_ids": ((b, s), jnp.int32), "attention_mask": ((b, s), jnp.int32),
                  "loss_mask": ((b, s), jnp.int32), "position_ids": ((b, 3, s), jnp.int32),
                  **_image_shapes(recipe, model_cfg, b, packed=packed)}
        if packed:
            shapes["segment_ids"] = ((b, s), jnp.int32)
        batch = batch_spec(mesh, shapes)
        step_cfg = sft_step.StepConfig(1 if loop_free else recipe.train.grad_accum,
                                       0 if loop_free else recipe.train.ce_chunk)
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        fn = jax.jit(lambda st, bt: sft_step.sft_step(parts, tx, schedule, step_cfg, st, bt),
                     in_shardings=(state_sh, {k: v.sharding for k, v in batch.items()}),
                     out_shardings=(state_sh, None), donate_argnums=(0,))
        return Compiled(fn, (state, batch)), train_state.count(state.trainable), b * s

    compiled, n, tokens = build(cfg, loop_free=False)
    return [Program("sft_step", compiled, 6.0 * n * tokens, tokens, 0,
                    cost_parts=lambda variant: [build(variant, loop_free=True)[0]],
                    useful_tokens=tokens * sft_useful_share(recipe, cfg))]


# ---- GRPO -----------------------------------------------------------------------------------------------------
def grpo_programs(recipe, cfg, mesh, learner_completion: int = 0) -> list[Program]:
    from robust_r1_jax.model import generate as smp
    from robust_r1_jax.rl import grpo

    gcfg = grpo.grpo_config(recipe)
    group, horizon = gcfg.num_samples, recipe.sampling.max_new_tokens
    prompts, prompt_len = recipe.data.global_batch_size, recipe.data.seq_len
    rows = prompts * group
    # the learner's completion columns: the bucket the step's longest completion needs (rl/grpo.py)
    completion = grpo.bucket_for(learner_completion or horizon, grpo.learner_buckets(recipe)[1], horizon)

    def setup(model_cfg):
        tx, schedule = _optimizer(recipe)
        parts, state = abstract_state(model_cfg, tx, tuple(recipe.train.freeze), mesh)
        return (tx, schedule), parts, state

    def prompt_batch(model_cfg):
        return batch_spec(mesh, {"prompt_ids": ((prompts, prompt_len), jnp.int32),
                                 "prompt_mask": ((prompts, prompt_len), jnp.int32),
                                 **_image_shapes(recipe, model_cfg, prompts)})

    def sampler_config(model_cfg):
        return grpo.sampler_config(recipe, gcfg, model_cfg)

    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(mesh))

    def policy(model_cfg):
        """The sampler's view: the whole model split into its graph and abstract weights, and the prompts."""
        _, parts, state = setup(model_cfg)
        graphdef, weights = nnx.split(parts.merge(state.trainable, state.frozen))
        return graphdef, weights, prompt_batch(model_cfg), sampler_config(model_cfg)

    def rollout(model_cfg) -> Compiled:
        graphdef, weights, p, scfg = policy(model_cfg)
        fn = jax.jit(lambda w, ids, mask, pix, grid, key: smp.rollout(
            graphdef, w, ids, mask, pix, grid, key, config=scfg, cache_len=prompt_len + horizon))
        return Compiled(fn, (weights, p["prompt_ids"], p["prompt_mask"], p["pixel_values"], p["image_grid_thw"], rng))

    def rollout_parts(model_cfg) -> list[Compiled]:
        """One prefill (with the G-fold cache repeat) and one decode step's forward, run T-1 times."""
        graphdef, weights, p, _ = policy(model_cfg)

        def prefill(w, ids, mask, pix, grid):
            logits, cache = nnx.merge(graphdef, w).prefill_traced(ids, pix, grid, mask, prompt_len + horizon)
            return jnp.repeat(logits, group, axis=0), cache.repeat(group)

        def decode(w, last, cache):
            # the forward alone: XLA's TPU cost model has no estimate (-1) for the sampler's random draw
            return nnx.merge(graphdef, w).decode_traced(last, cache)

        prefill_args = (weights, p["prompt_ids"], p["prompt_mask"], p["pixel_values"], p["image_grid_thw"])
        compiled_prefill = jax.jit(prefill).lower(*prefill_args).compile()
        # the decode step takes the cache where the prefill left it, as in the rollout's loop
        _, cache = jax.eval_shape(prefill, *prefill_args)
        cache = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), cache,
                             compiled_prefill.output_shardings[1])
        last = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=parallel.batch_sharding(mesh, 1))
        return [Compiled(None, prefill_args, executable=compiled_prefill),
                Compiled(jax.jit(decode), (weights, last, cache), weight=horizon - 1)]

    def learner_batch(model_cfg):
        shapes = {"prompt_ids": ((rows, prompt_len), jnp.int32), "prompt_mask": ((rows, prompt_len), jnp.int32),
                  "tokens": ((rows, completion), jnp.int32), "mask": ((rows, completion), jnp.int32),
                  "row_weight": ((rows,), jnp.float32), **_image_shapes(recipe, model_cfg, prompts)}
        logp = {"old": ((rows, completion), jnp.float32), "ref": ((rows, completion), jnp.float32),
                "advantages": ((rows,), jnp.float32)}
        return batch_spec(mesh, shapes), batch_spec(mesh, logp)

    def chunked(loop_free: bool):
        return dataclasses.replace(gcfg, logprob_chunk=0 if loop_free else gcfg.logprob_chunk)

    def score(model_cfg, loop_free: bool = False) -> Compiled:
        _, parts, state = setup(model_cfg)
        batch, _ = learner_batch(model_cfg)
        g = chunked(loop_free)
        fn = jax.jit(lambda tr, fr, ref, b: grpo.score_step(parts, g, tr, fr, ref, b))
        return Compiled(fn, (state.trainable, state.frozen, state.trainable, batch))

    def update(model_cfg, loop_free: bool = False) -> Compiled:
        (tx, schedule), parts, state = setup(model_cfg)
        batch, logp = learner_batch(model_cfg)
        g = chunked(loop_free)
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        fn = jax.jit(lambda s, b, o, r, a: grpo.update_step(parts, tx, schedule, g, s, b, o, r, a),
                     out_shardings=(state_sh, None), donate_argnums=(0,))
        return Compiled(fn, (state, batch, logp["old"], logp["ref"], logp["advantages"]))

    _, _, state = setup(cfg)
    n = train_state.count(state.trainable)
    policy_only = per_chip_bytes(state.opt_state) + per_chip_bytes(state.trainable)   # optimizer + reference copy
    learner_tokens = rows * (prompt_len + completion)
    real_prompt, real_completion = grpo_real_lengths(recipe, cfg, completion)
    useful = rows * (real_prompt + real_completion)
    return [
        Program("rollout", rollout(cfg), 2.0 * n * rows * horizon + 2.0 * n * prompts * prompt_len, rows * horizon,
                policy_only, cost_parts=rollout_parts,
                useful_tokens=rows * grpo_real_lengths(recipe, cfg, horizon)[1]),
        Program("score", score(cfg), 2 * 2.0 * n * learner_tokens, learner_tokens,
                per_chip_bytes(state.opt_state), cost_parts=lambda v: [score(v, loop_free=True)],
                useful_tokens=useful),
        Program("update", update(cfg), gcfg.inner_iterations * 6.0 * n * learner_tokens,
                gcfg.inner_iterations * learner_tokens, per_chip_bytes(state.trainable),
                cost_parts=lambda v: [dataclasses.replace(update(v, loop_free=True), weight=gcfg.inner_iterations)],
                useful_tokens=gcfg.inner_iterations * useful),
    ]
