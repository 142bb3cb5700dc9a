"""The programs a recipe runs, as jitted functions with abstract arguments, for the AOT report (``aot.py``).

Each builder takes the model config (the real one, or a shallow variant for the cost estimate) and returns
the same programs, laid out on the mesh exactly as the training loops lay them out: the state through
``train.state.state_shardings``, batches through ``parallel.batch_sharding``.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax import aot_decode, parallel
from robust_r1_jax.data import packing
from robust_r1_jax.model import splash
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


def packing_problems(recipe, cfg) -> list[str]:
    """A packing SFT recipe whose length profile draws an example no empty row holds (more patches or images than
    ``data.patch_bucket`` / ``data.image_slots``; tokens past ``data.seq_len`` are truncated): one line naming the
    largest example and the fields to change, before the useful-token share (``packing.first_fit``) would fail."""
    d = recipe.data
    if recipe.mode != "sft" or not d.get("packing", False):
        return []
    sizes = packing.sample_sizes(length_profile(recipe), PROFILE_SAMPLES, merge_unit=cfg.vision.merge_unit)
    budget = packing.RowBudget(d.seq_len, d.patch_bucket, d.image_slots)
    most = [max(getattr(budget.clip(s), f) for s in sizes) for f in ("tokens", "patches", "images")]
    if most[1] <= d.patch_bucket and most[2] <= d.image_slots:
        return []
    return [f"config.data.length_profile: its examples need up to {most[1]} patches and {most[2]} image(s) "
            f"({most[0]} tokens kept at data.seq_len={d.seq_len}), more than one packed row holds "
            f"(data.patch_bucket={d.patch_bucket}, data.image_slots={d.image_slots}): raise data.seq_len / "
            f"data.patch_bucket to the recipe's real rows, or give a data.length_profile whose examples fit "
            f"(aot: --config.recipe_overrides='(\"data.patch_bucket={most[1]}\",)')"]


def sft_useful_share(recipe, cfg) -> float:
    """Real tokens per computed row slot of the recipe's SFT batches at its length profile, packed or not."""
    d = recipe.data
    sizes = packing.sample_sizes(length_profile(recipe), PROFILE_SAMPLES, merge_unit=cfg.vision.merge_unit)
    budget = packing.RowBudget(d.seq_len, d.patch_bucket, d.image_slots)
    stats = packing.packing_stats(sizes, d.global_batch_size, budget, packing=bool(d.get("packing", False)))
    return 1.0 - stats["padding_fraction"]


SPLASH_TILE_ROWS = 64   # rows at the length profile whose splash block tables give the mean tiles


def _mean_causal_tiles(segments: np.ndarray) -> float:
    """Mean causal splash tiles per head of rows ``segments`` int [rows, S] (S a multiple of 128; padding
    ``splash.PAD_SEGMENT``)."""
    return float(np.mean(np.asarray(_causal_tile_counts(jnp.asarray(segments), splash.block_size(segments.shape[1])))))


@functools.partial(jax.jit, static_argnums=1)
def _causal_tile_counts(segments: jax.Array, block: int) -> jax.Array:
    return jax.vmap(lambda s: splash.tile_table(s, block, causal=True).sum())(segments)


def sft_splash_tiles(recipe, cfg) -> dict:
    """{(sequence, True): mean causal splash tiles per head} of the language model's SFT rows at the recipe's
    length profile, laid out as the loader lays them out (packed first-fit, or one example per row; examples
    from the row's start, then padding, which splash computes on the diagonal alone): the tiles
    ``model/splash.py``'s block tables make the kernel compute, for ``aot_splash_cost`` to price. The sequence is
    ``data.seq_len`` rounded up to the kernel's 128 lanes."""
    d = recipe.data
    sizes = packing.sample_sizes(length_profile(recipe), PROFILE_SAMPLES, merge_unit=cfg.vision.merge_unit)
    budget = packing.RowBudget(d.seq_len, d.patch_bucket, d.image_slots)
    clipped = [budget.clip(s) for s in sizes]
    if d.get("packing", False):
        batches = packing.first_fit(iter(enumerate(clipped)), d.global_batch_size, budget)
        rows = [row for batch in batches for row in batch if row][:SPLASH_TILE_ROWS]
    else:
        rows = [[i] for i in range(SPLASH_TILE_ROWS)]
    seq = -(-d.seq_len // splash.LANES) * splash.LANES
    segments = np.full((len(rows), seq), splash.PAD_SEGMENT, np.int32)
    for r, row in enumerate(rows):
        starts = np.cumsum([0] + [clipped[key].tokens for key in row])
        for k, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            segments[r, a:b] = k + 1
    return {(seq, True): _mean_causal_tiles(segments)}


def _prompt_and_chain_tokens(recipe, cfg, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, chain) tokens int [count] of learner rows drawn from the recipe's length profile: the prompt is
    the SFT row without its chain (uncapped), the chain the completion."""
    profile = length_profile(recipe)
    sizes = packing.sample_sizes(profile, count, merge_unit=cfg.vision.merge_unit)
    chains = packing.sample_sizes({**profile, "template_tokens": (0, 0), "image_tokens": (0, 0),
                                   "question_tokens": (0, 0), "suffix_tokens": (0, 0)}, count)
    chain = np.array([c.tokens for c in chains], np.int64)
    return np.array([s.tokens for s in sizes], np.int64) - chain, chain


def grpo_splash_tiles(recipe, cfg, completion_bucket: int) -> dict:
    """{(sequence, True): mean causal splash tiles per head} of the GRPO learner's rows (``score`` and
    ``update``) at the recipe's length profile: the prompt left-padded to ``data.seq_len``, then its completion
    (the chain, capped at ``completion_bucket``) and right padding to the bucket, as ``grpo.learner_hidden``
    lays a row out; padding on its diagonal tiles alone (``model/splash.py``)."""
    prompt_len = recipe.data.seq_len
    prompts, chains = _prompt_and_chain_tokens(recipe, cfg, SPLASH_TILE_ROWS)
    seq = -(-(prompt_len + completion_bucket) // splash.LANES) * splash.LANES
    segments = np.full((len(prompts), seq), splash.PAD_SEGMENT, np.int32)
    for r, (prompt, chain) in enumerate(zip(np.minimum(prompts, prompt_len), np.minimum(chains, completion_bucket))):
        segments[r, prompt_len - prompt:prompt_len + chain] = 1
    return {(seq, True): _mean_causal_tiles(segments)}


def grpo_real_lengths(recipe, cfg, completion_bucket: int) -> tuple[float, float]:
    """Mean real (prompt, completion) tokens of a learner row at the recipe's length profile: the prompt is the
    SFT row without its chain (capped at the prompt length), the completion the chain (capped at the bucket)."""
    prompts, chains = _prompt_and_chain_tokens(recipe, cfg, PROFILE_SAMPLES)
    return (float(np.minimum(prompts, recipe.data.seq_len).mean()),
            float(np.minimum(chains, completion_bucket).mean()))


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
                    useful_tokens=tokens * sft_useful_share(recipe, cfg), splash_tiles=sft_splash_tiles(recipe, cfg))]


# ---- GRPO -----------------------------------------------------------------------------------------------------
def _grpo_setup(recipe, model_cfg, mesh):
    """((optimizer, schedule), model parts, abstract training state) of ``model_cfg`` on ``mesh``."""
    tx, schedule = _optimizer(recipe)
    parts, state = abstract_state(model_cfg, tx, tuple(recipe.train.freeze), mesh)
    return (tx, schedule), parts, state


def grpo_programs(recipe, cfg, mesh, learner_completion: int = 0) -> list[Program]:
    from robust_r1_jax.model import generate as smp
    from robust_r1_jax.rl import grpo, rollout_weights

    gcfg = grpo.grpo_config(recipe)
    group, horizon = gcfg.num_samples, recipe.sampling.max_new_tokens
    prompts, prompt_len = recipe.data.global_batch_size, recipe.data.seq_len
    rows = prompts * group

    problems = rollout_weights.layout_problems(recipe.rollout, mesh.devices.size, cfg.text.num_key_value_heads)
    if problems:
        raise ValueError("; ".join(problems))
    layout = recipe.rollout.layout
    sampler_mesh = aot_decode.decode_mesh(recipe, mesh, layout)   # the rollout mesh for "tensor"
    on_sampler_mesh = ((lambda fn: aot_decode.OnMesh(fn, sampler_mesh)) if sampler_mesh is not mesh
                       else (lambda fn: fn))

    def prompt_batch(model_cfg, on=mesh):
        return batch_spec(on, {"prompt_ids": ((prompts, prompt_len), jnp.int32),
                                 "prompt_mask": ((prompts, prompt_len), jnp.int32),
                                 **_image_shapes(recipe, model_cfg, prompts)})

    def sampler_config(model_cfg):
        return grpo.sampler_config(recipe, gcfg, model_cfg)

    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(sampler_mesh))

    def policy(model_cfg):
        """The sampler's view: the whole model split into its graph and abstract weights (in the rollout layout:
        the training state's, or its compute-dtype copy, replicated or tensor-split on the rollout mesh), and the
        prompts on the sampler's mesh."""
        graphdef, weights = aot_decode.model_weights(recipe, model_cfg, mesh, layout)
        return graphdef, weights, prompt_batch(model_cfg, sampler_mesh), sampler_config(model_cfg)

    def copy_program(model_cfg) -> Compiled:
        """The rollout's weight copy, made once per step from the training state (a cast + all-gather for
        "replicated", a cast + reshard onto the rollout mesh for "tensor")."""
        _, parts, state = _grpo_setup(recipe, model_cfg, mesh)
        weights = nnx.split(parts.merge(state.trainable, state.frozen))[1]
        fn = jax.jit(lambda tr, fr: rollout_weights.cast_floating(nnx.split(parts.merge(tr, fr))[1], model_cfg.dtype),
                     out_shardings=aot_decode.copy_shardings(weights, sampler_mesh, layout))
        return Compiled(fn, (state.trainable, state.frozen))

    def rollout(model_cfg) -> Compiled:
        graphdef, weights, p, scfg = policy(model_cfg)
        fn = on_sampler_mesh(jax.jit(lambda w, ids, mask, pix, grid, key: smp.rollout(
            graphdef, w, ids, mask, pix, grid, key, config=scfg, cache_len=prompt_len + horizon)))
        return Compiled(fn, (weights, p["prompt_ids"], p["prompt_mask"], p["pixel_values"], p["image_grid_thw"], rng))

    def prefill_part(model_cfg) -> list[Compiled]:
        """The rollout's prefill with the G-fold cache repeat (its decode steps: ``grpo_summary``)."""
        graphdef, weights, p, _ = policy(model_cfg)

        def prefill(w, ids, mask, pix, grid):
            logits, cache = nnx.merge(graphdef, w).prefill_traced(ids, pix, grid, mask, prompt_len + horizon)
            return jnp.repeat(logits, group, axis=0), cache.repeat(group)

        return [Compiled(on_sampler_mesh(jax.jit(prefill)), (weights, p["prompt_ids"], p["prompt_mask"], p["pixel_values"],
                                            p["image_grid_thw"]))]

    setup = _grpo_setup(recipe, cfg, mesh)
    state = setup[2]
    n = train_state.count(state.trainable)
    policy_only = per_chip_bytes(state.opt_state) + per_chip_bytes(state.trainable)   # optimizer + reference copy
    # with a copy, the rollout's weights are the copy and the whole training state stays resident beside it
    beside_rollout = policy_only + (per_chip_bytes(state.trainable) + per_chip_bytes(state.frozen)
                                    if layout != "training" else 0)
    copy = [Program("rollout_weights", copy_program(cfg), 0.0, 0, policy_only,
                    cost_parts=lambda v: [copy_program(v)])] if layout != "training" else []
    return copy + [
        # the rollout's time is put together by grpo_summary: prefill + decode steps by length bucket
        Program("rollout", rollout(cfg), 2.0 * n * rows * horizon + 2.0 * n * prompts * prompt_len, rows * horizon,
                beside_rollout, cost_parts=None, cost_pieces=prefill_part,
                useful_tokens=rows * grpo_real_lengths(recipe, cfg, horizon)[1]),
        *_learner_programs(recipe, cfg, mesh, learner_completion, setup),
    ]


def grpo_learner_programs(recipe, cfg, mesh, learner_completion: int = 0) -> list[Program]:
    """GRPO's learner programs alone, ``score`` and ``update``, as ``grpo_programs`` builds them:
    ``learner_completion`` (0: the horizon) picks their completion bucket. For pricing the learner at another
    bucket without building the rollout's programs again."""
    return _learner_programs(recipe, cfg, mesh, learner_completion, _grpo_setup(recipe, cfg, mesh))


def _learner_programs(recipe, cfg, mesh, learner_completion: int, setup) -> list[Program]:
    """``score`` and ``update`` at the completion bucket of ``learner_completion``; ``setup``: ``_grpo_setup`` of
    ``cfg``. Both programs, and each cost variant's pair, share one abstract state per model config (a 3B state
    takes ~20 s to build)."""
    from robust_r1_jax.rl import grpo

    setups = {cfg: setup}

    def setup_of(model_cfg):
        if model_cfg not in setups:
            setups[model_cfg] = _grpo_setup(recipe, model_cfg, mesh)
        return setups[model_cfg]

    gcfg = grpo.grpo_config(recipe)
    horizon = recipe.sampling.max_new_tokens
    prompts, prompt_len = recipe.data.global_batch_size, recipe.data.seq_len
    rows = prompts * gcfg.num_samples
    # the learner's completion columns: the bucket the step's longest completion needs (rl/grpo.py)
    completion = grpo.bucket_for(learner_completion or horizon, grpo.learner_buckets(recipe)[1], horizon)

    def learner_batch(model_cfg):
        shapes = {"prompt_ids": ((rows, prompt_len), jnp.int32), "prompt_mask": ((rows, prompt_len), jnp.int32),
                  "tokens": ((rows, completion), jnp.int32), "mask": ((rows, completion), jnp.int32),
                  "row_weight": ((rows,), jnp.float32), **_image_shapes(recipe, model_cfg, prompts)}
        logp = {"old": ((rows, completion), jnp.float32), "ref": ((rows, completion), jnp.float32),
                "advantages": ((rows,), jnp.float32)}
        return batch_spec(mesh, shapes), batch_spec(mesh, logp)

    def chunked(loop_free: bool):
        """The recipe's learner settings; loop-free for the cost variants: log-probs in one piece and the update's
        micro-batches as one batch (the same work, which XLA would count once per loop body)."""
        if not loop_free:
            return gcfg
        return dataclasses.replace(gcfg, logprob_chunk=0, update_microbatches=1)

    def score(model_cfg, loop_free: bool = False) -> Compiled:
        _, parts, state = setup_of(model_cfg)
        batch, _ = learner_batch(model_cfg)
        g = chunked(loop_free)
        fn = jax.jit(lambda tr, fr, ref, b: grpo.score_step(parts, g, tr, fr, ref, b))
        return Compiled(fn, (state.trainable, state.frozen, state.trainable, batch))

    def update(model_cfg, loop_free: bool = False) -> Compiled:
        (tx, schedule), parts, state = setup_of(model_cfg)
        batch, logp = learner_batch(model_cfg)
        g = chunked(loop_free)
        state_sh = jax.tree.map(lambda x: x.sharding, state)
        fn = jax.jit(lambda s, b, o, r, a: grpo.update_step(parts, tx, schedule, g, s, b, o, r, a),
                     out_shardings=(state_sh, None), donate_argnums=(0,))
        old = logp["old"] if gcfg.inner_iterations > 1 else None   # μ = 1: π_old is the update's own forward
        return Compiled(fn, (state, batch, old, logp["ref"], logp["advantages"]))

    state = setup[2]
    n = train_state.count(state.trainable)
    learner_tokens = rows * (prompt_len + completion)
    real_prompt, real_completion = grpo_real_lengths(recipe, cfg, completion)
    useful = rows * (real_prompt + real_completion)
    learner_tiles = grpo_splash_tiles(recipe, cfg, completion)
    return [
        # the reference forward, and the old policy's only when μ > 1 (grpo.score_step)
        Program("score", score(cfg), (1 + (gcfg.inner_iterations > 1)) * 2.0 * n * learner_tokens, learner_tokens,
                per_chip_bytes(state.opt_state), cost_parts=lambda v: [score(v, loop_free=True)],
                useful_tokens=useful, splash_tiles=learner_tiles),
        Program("update", update(cfg), gcfg.inner_iterations * 6.0 * n * learner_tokens,
                gcfg.inner_iterations * learner_tokens, per_chip_bytes(state.trainable),
                cost_parts=lambda v: [dataclasses.replace(update(v, loop_free=True), weight=gcfg.inner_iterations)],
                useful_tokens=gcfg.inner_iterations * useful, splash_tiles=learner_tiles),
    ]


# ---- the GRPO step by the cost model at a completion profile (issue 24) ----------------------------------------
EASYR1_SAMPLES_PER_S_PER_PFLOPS = 2.7   # EasyR1's Qwen2.5-VL-3B GRPO baseline: ~21 samples/s on 8 x H100 (issue 24)


def decode_attends(prompt_len: int, horizon: int, cache_len: int, bucket: int, steps: int) -> list[int]:
    """The cache slots each of the first ``steps`` decode steps (t = 1 .. steps) reads, by
    ``generate.decode_buckets``."""
    from robust_r1_jax.model.generate import decode_buckets
    buckets = decode_buckets(prompt_len, horizon, cache_len, bucket)
    return [next(attend for end, attend in buckets if t < end) for t in range(1, steps + 1)]


def grpo_summary(recipe, cfg, mesh, slice_, programs: list[Program], rows: list[dict], longest: int,
                 median: int, learner_rows: list[dict] | None = None, learner_completion: int = 0) -> dict:
    """Rollout, scoring and update seconds of one GRPO step by the cost model at a completion profile (the longest
    completion sets the decode steps: every row decodes until the last stops; ``median`` is reported, and sets
    nothing while finished rows are not dropped), and the samples/s per chip and per PFLOP/s of peak. Fills in the
    rollout row's full-horizon time and MFU.

    Decode steps: the per-chip cost of one step (``aot_decode.case_cost``, compiled without cross-program prefetch
    by the first of ``aot_decode.DECODE_PRICINGS`` that prices every case, and depth-extrapolated) at the smallest
    and largest slot counts the buckets read, linear in between, plus the token draw by the same pricing
    (``sampling_s``; left out where the cost model gives no estimate). The copy of the weights counts once per step;
    it and the prefill are priced as ``aot.priced_cost`` prices a program. ``learner_rows``: ``score`` and
    ``update`` compiled for ``learner_completion`` (0: the horizon), priced; a step at this profile runs them at the
    completion bucket of ``longest`` (rl/grpo.py's learner buckets). Without them, the rows of ``rows``.
    """
    from robust_r1_jax import aot
    from robust_r1_jax.rl import grpo
    gen = slice_.generation
    prompt_len, horizon = recipe.data.seq_len, recipe.sampling.max_new_tokens
    cache_len, bucket = prompt_len + horizon, int(recipe.rollout.decode_bucket)
    layout = recipe.rollout.layout
    if longest < 1 or median < 1:
        raise ValueError(f"completion profile ({longest}, {median}): lengths must be >= 1")
    longest = min(longest, horizon)   # a profile past the recipe's horizon is the full horizon
    median = min(median, longest)
    full = decode_attends(prompt_len, horizon, cache_len, bucket, horizon - 1)
    lo, hi = min(full), max(full)
    def attend_cases(options):   # one pricing for every slot count the buckets read
        per = {a: aot_decode.case_cost(recipe, cfg, mesh, aot_decode.DecodeCase(f"attend {a}", layout, attend=a),
                                       options) for a in sorted({lo, hi})}
        return {"seconds": min(c["seconds"] for c in per.values()), "per": per}
    priced, pricing = aot.first_priced(attend_cases, aot_decode.DECODE_PRICINGS)
    options = dict(aot_decode.DECODE_PRICINGS)[pricing]
    costs = priced["per"]
    need = {a: sum(aot_decode.roofline_bytes(recipe, cfg, mesh, aot_decode.DecodeCase("", layout, attend=a)).values())
            for a in costs}

    def per_step(a, table):
        if lo == hi:
            return table[lo]
        return table[lo] + (a - lo) / (hi - lo) * (table[hi] - table[lo])
    draw = aot_decode.case_cost(recipe, cfg, mesh, aot_decode.DecodeCase("draw", layout, sampling_only=True),
                                options)["seconds"]
    draw = max(draw, 0.0)   # <= 0: the cost model's "no estimate" for the random draw, left out (noted)
    step_s = {a: c["seconds"] + draw for a, c in costs.items()}
    streamed = step_s if pricing == "streamed" else {
        a: c["seconds"] + draw for a, c in attend_cases(aot_decode.STREAMED_COMPILER_OPTIONS)["per"].items()}
    rollout = next(p for p in programs if p.name == "rollout")
    prefill = max(aot.priced_cost(rollout.cost_pieces, cfg)[0]["seconds"], 0.0)   # <= 0: neither pricing gave one
    by_name = {r["program"]: r for r in rows}
    copy_s = (by_name["rollout_weights"]["cost_model_s"] or 0.0) if "rollout_weights" in by_name else 0.0
    copy_program = next((p for p in programs if p.name == "rollout_weights"), None)
    if copy_program is not None and copy_s <= 0:   # not priced as a row (its depth variants gave no estimate)
        copy_s = max(aot.priced_compiled(copy_program.compiled)[0]["seconds"], 0.0)

    def rollout_s(steps, table=step_s):
        return prefill + sum(per_step(a, table) for a in decode_attends(prompt_len, horizon, cache_len, bucket, steps))
    profile = decode_attends(prompt_len, horizon, cache_len, bucket, longest - 1)
    full_s = rollout_s(horizon - 1)
    row = by_name["rollout"]
    row["cost_model_s"] = full_s
    row["tokens_per_s_per_chip"] = rollout.tokens / full_s / slice_.chips
    row["mfu"] = rollout.model_flops / (slice_.chips * gen.peak_bf16_flops * full_s)
    learner_by_name = {r["program"]: r for r in learner_rows} if learner_rows else by_name
    learner = sum(learner_by_name[k]["cost_model_s"] or float("nan") for k in ("score", "update"))
    learner_bucket = grpo.bucket_for(learner_completion or horizon, grpo.learner_buckets(recipe)[1], horizon)
    samples = recipe.data.global_batch_size * recipe.grpo.num_samples
    step = copy_s + rollout_s(longest - 1) + learner
    step_streamed = copy_s + rollout_s(longest - 1, streamed) + learner
    mean = lambda xs: sum(xs) / max(len(xs), 1)
    return dict(
        profile=dict(longest=longest, median=median, decode_steps=longest - 1,
                     note="every row decodes until the longest stops (finished rows are not dropped: see WORKSPACE.md)"),
        layout=layout, decode_bucket=bucket, decode_pricing=aot.PRICINGS[pricing] or pricing, prefill_s=prefill,
        rollout_weights_s=copy_s, sampling_s=draw,
        decode_step_s=mean([per_step(a, step_s) for a in profile]) if profile else None,
        decode_roofline_s=mean([per_step(a, need) for a in profile]) / gen.hbm_bytes_per_s if profile else None,
        decode_step_full_cache_s=step_s[hi], decode_roofline_full_cache_s=need[hi] / gen.hbm_bytes_per_s,
        rollout_s=rollout_s(longest - 1), rollout_full_horizon_s=full_s,
        learner_completion_bucket=learner_bucket,
        learner_tokens={k: learner_by_name[k]["tokens"] for k in ("score", "update")},
        score_s=learner_by_name["score"]["cost_model_s"],
        update_s=learner_by_name["update"]["cost_model_s"],
        score_full_horizon_s=by_name["score"]["cost_model_s"], update_full_horizon_s=by_name["update"]["cost_model_s"],
        step_s=step,
        samples_per_step=samples, samples_per_s_per_chip=samples / step / slice_.chips,
        samples_per_s_per_pflops=samples / step / (slice_.chips * gen.peak_bf16_flops / 1e15),
        easyr1_samples_per_s_per_pflops=EASYR1_SAMPLES_PER_S_PER_PFLOPS,
        streamed=dict(decode_step_s=mean([per_step(a, streamed) for a in profile]) if profile else None,
                      decode_step_full_cache_s=streamed[hi], rollout_s=rollout_s(longest - 1, streamed),
                      rollout_full_horizon_s=rollout_s(horizon - 1, streamed), step_s=step_streamed,
                      samples_per_s_per_pflops=samples / step_streamed / (slice_.chips * gen.peak_bf16_flops / 1e15),
                      note="decode steps compiled without memory space assignment (aot_decode)"),
        note="XLA's TPU cost model, not a measurement; scoring and update at learner_completion_bucket")
