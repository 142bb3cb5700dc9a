"""Ahead-of-time proof for a TPU slice, without a TPU: ``mode = "aot"``.

    python -m robust_r1_jax.main --config=configs/aot.py --config.recipe=configs/sft_qwen2_5_vl_3b.py:v5p8 \
        --config.topology=v5p-8 --config.output=aot_sft.json

compiles every program a recipe runs (SFT: the train step; GRPO: the rollout, the old-policy/reference scoring
and the learner update) for the named slice from abstract parameters (nothing is allocated), and reports per
chip what the compiler says the program needs (``memory_analysis``), whether that fits the chip's HBM, and
XLA's cost-model time (``cost_analysis()["optimal_seconds"]``) with the MFU it implies.

Memory is exact for the compiled program. Time is XLA's cost model, not a measurement. The cost model prices a
Pallas kernel only by the ``CostEstimate`` it declares and jax's splash kernels declare none, so the cost
variants are traced with ``aot_splash_cost.splash_cost_estimates()`` open, which gives them one (tile-level
FLOPs, exps and HBM bytes; see that module): the estimate prices the program's own splash attention, for the
language model's SFT and learner rows at the tiles their rows need at the recipe's length profile (the kernel's
block tables skip the rest at run time: ``aot_programs.sft_splash_tiles``, ``grpo_splash_tiles``). XLA
counts a loop body once, so the cost is taken from loop-free variants of each
program (no chunked cross-entropy, no gradient accumulation or update micro-batches; the rollout as one prefill
plus T-1 single-token decode steps) compiled at two small depths of the language model and of the vision tower
and extrapolated linearly to the real depths. Where that estimate is not positive, no time or MFU is printed.

MFU = model FLOPs / (chips x peak bf16 FLOP/s x cost-model seconds), model FLOPs = 6 N tokens for a training
update and 2 N tokens per forward (scoring runs two: policy and reference; the rollout one per prompt and
generated token), N the trained parameters (PaLM, Chowdhery et al. 2022, appendix B, without attention FLOPs).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import logging
import math
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from robust_r1_jax import aot_splash_cost, parallel, tpu_topology
from robust_r1_jax.model import config as model_config, splash
from robust_r1_jax.model.vlm import Qwen25VL
from robust_r1_jax.train import state as train_state
from robust_r1_jax.train import validate

log = logging.getLogger(__name__)

NOTE = ("memory: the compiler's per-chip figures; time and MFU: XLA's TPU cost model (not a measurement), "
        "loop-corrected by depth extrapolation")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "aot"
    c.recipe = ""            # a recipe config file, optionally with its variant: configs/x.py:v5p-8
    c.topology = "v5p-8"     # tpu_topology.parse_slice names
    c.output = ""            # JSON report path ("" = print only)
    c.cost_estimate = True   # the loop-corrected cost model (three small extra compiles per program)
    c.hbm_limit_fraction = 1.0   # "fits" means peak <= this share of the chip's HBM (e.g. 0.85 for headroom)
    c.recipe_overrides = ()      # "dotted.key=value" strings applied to the recipe, e.g. "sampling.max_new_tokens=2048"
    c.completion_profile = (1024, 300)   # GRPO: (longest, median) completion tokens the step summary is priced at
    c.programs = ()              # names of the programs to compile ("" or () = all), e.g. ("score", "update")
    c.memory = True              # compile the recipe's own programs for their memory; False: the cost model only
    c.learner_completion = 0     # GRPO: the step's longest completion, which picks the learner's completion
                                 # bucket (rl/grpo.py); 0 = the whole sampling horizon
    return c


@dataclasses.dataclass
class Compiled:
    """One program to compile: a jitted function and the abstract arguments it is lowered with."""
    fn: Callable | None
    args: tuple
    weight: float = 1.0      # times the program runs per reported unit (the rollout's decode steps)
    executable: object = None  # already compiled (the rollout's prefill, compiled to place the decode's cache)


@dataclasses.dataclass
class Program:
    name: str
    compiled: Compiled
    model_flops: float                 # per run, over the whole slice
    tokens: int                        # tokens processed (or generated) per run, over the whole slice
    other_resident_bytes: int          # per chip: state alive during the program but not among its arguments
    cost_parts: Callable[[model_config.ModelConfig], list[Compiled]] | None = None
    cost_pieces: Callable[[model_config.ModelConfig], list[Compiled]] | None = None   # parts a summary prices
    # real (non-padding) tokens among ``tokens`` per run at the recipe's length profile (data/packing.py)
    useful_tokens: float | None = None
    # {(sequence, causal): mean splash tiles per head} its rows need at the length profile (aot_splash_cost)
    splash_tiles: dict | None = None


# ---- abstract state -------------------------------------------------------------------------------------------
def abstract(x, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of abstract (or real) arrays with shardings."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += int(np.prod(shard, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
    return total


def abstract_state(cfg: model_config.ModelConfig, tx, freeze, mesh):
    """ModelParts and a TrainState of ShapeDtypeStructs laid out as ``train_state.init_state`` lays them."""
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    shardings = parallel.param_shardings(model, mesh)
    params = nnx.state(model, nnx.Param)
    placed = jax.tree.map(lambda v, sharding: abstract(v.value, sharding), params, shardings,
                          is_leaf=lambda x: isinstance(x, nnx.Variable))
    nnx.update(model, placed)
    parts, trainable, frozen = train_state.split_model(model, freeze)
    skeleton = train_state.TrainState(step=None, trainable=trainable, frozen=frozen, opt_state=None)
    sh = train_state.state_shardings(tx, skeleton, mesh)
    opt = jax.tree.map(abstract, jax.eval_shape(tx.init, trainable), sh.opt_state)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=sh.step)
    return (train_state.placed(parts, trainable, frozen),
            train_state.TrainState(step=step, trainable=trainable, frozen=frozen, opt_state=opt))


def batch_spec(mesh, shapes: dict) -> dict:
    """{name: (shape, dtype)} -> ShapeDtypeStructs laid out like ``step.global_batch``."""
    return {k: jax.ShapeDtypeStruct(s, d, sharding=parallel.batch_sharding(mesh, len(s)))
            for k, (s, d) in shapes.items()}


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


# ---- measuring ------------------------------------------------------------------------------------------------
USEFUL_NOTE = ("useful: the real (non-padding) tokens of the recipe's data.length_profile (default SPEC §8's "
               "Robust-R1 rows), packed as the recipe packs them (data/packing.py)")


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"flops": float(cost.get("flops", 0.0)), "seconds": float(cost.get("optimal_seconds", 0.0))}


def _compile(c: Compiled, options: dict | None = None):
    if c.executable is not None:
        return c.executable
    return c.fn.lower(*c.args).compile(**({"compiler_options": options} if options else {}))


def depth_variants(cfg: model_config.ModelConfig) -> list[model_config.ModelConfig]:
    """(language layers, vision blocks) = (1, 1), (2, 1), (1, 2); the last vision block keeps full attention (and
    feeds Qwen3-VL's DeepStack mergers).
    Unrolled even when the recipe scans its layers: the cost model counts a loop body once. Attention stays the
    recipe's (splash on TPU, priced through ``aot_splash_cost``)."""
    def at(layers: int, blocks: int):
        return cfg.replace(scan_layers=False,
                           text=dataclasses.replace(cfg.text, num_hidden_layers=layers),
                           vision=dataclasses.replace(cfg.vision, depth=blocks, fullatt_block_indexes=(blocks - 1,),
                                                      deepstack_visual_indexes=deepstack(blocks)))

    def deepstack(blocks: int) -> tuple[int, ...]:
        # Qwen3-VL: as many DeepStack mergers as the recipe, all fed by the last block, so their cost is counted
        # once in every variant (a constant, like the patch merger's) and the blocks' cost stays linear.
        return (blocks - 1,) * len(cfg.vision.deepstack_visual_indexes)
    return [at(1, 1), at(2, 1), at(1, 2)]


def extrapolated_cost(cost_parts, cfg: model_config.ModelConfig, options: dict | None = None,
                      splash_tiles: dict | None = None) -> dict:
    """cost(L, V) = c0 + a L + b V fitted on three small depths, evaluated at the config's depths; ``options``:
    XLA compiler options of the variants (default: the compiler's); ``splash_tiles``: the tiles the data needs
    (``aot_splash_cost.splash_cost_estimates``)."""
    samples = []
    # traced and compiled inside (the rollout's prefill inside cost_parts)
    with aot_splash_cost.splash_cost_estimates(splash_tiles):
        for variant in depth_variants(cfg):
            total = {"flops": 0.0, "seconds": 0.0}
            for part in cost_parts(variant):
                cost = _cost(_compile(part, options))
                if cost["seconds"] <= 0:   # the cost model's "no estimate"
                    return {"flops": float("nan"), "seconds": cost["seconds"]}
                total = {k: total[k] + part.weight * cost[k] for k in total}
            samples.append(total)
    base, deeper_text, deeper_vision = samples
    layers, blocks = cfg.text.num_hidden_layers, cfg.vision.depth
    return {k: base[k] + (layers - 1) * (deeper_text[k] - base[k]) + (blocks - 1) * (deeper_vision[k] - base[k])
            for k in base}


# XLA's TPU compiler prefetches one argument buffer into VMEM across program runs when it fits (a single layer's
# 45 MB MLP matrix of the unrolled cost variants does; the scanned rollout's stacked [layers, ...] weights never
# do), and the cost model prices that prefetched matmul at ~5.8x its bytes where the streamed one is ~1.2x: the
# decode step's cost variants (aot_decode) are compiled without it, as the real scanned program runs.
COST_COMPILER_OPTIONS = {"xla_max_cross_program_prefetches": 0}
# The cost model adds the time of an asynchronous HBM -> VMEM prefetch (memory space assignment) to the time of the
# matmul that reads the prefetched weight, as if the two ran one after the other: a decode layer's weights are
# priced at ~2.5x their bytes with it, ~1.1x without (one streamed read, as a single [32, 2048] x [2048, 11008]
# matmul is priced when nothing is prefetched). The "streamed" figure compiles without memory space assignment.
STREAMED_COMPILER_OPTIONS = dict(COST_COMPILER_OPTIONS, xla_msa_enable=False)
# On v6e, memory space assignment splits a large HBM -> VMEM prefetch into slices joined by a "ConcatBitcast"
# custom call, which libtpu's cost model cannot price: a program holding one gets a negative estimate (every v6e
# SFT and GRPO program does). Compiled with sliced prefetches off, memory space assignment is otherwise the
# default's and the estimate is positive; added to a compile's options where the default gives none.
UNSLICED_PREFETCH_OPTIONS = {"xla_tpu_sliced_prefetch_max_slices": 0}

PRICINGS = {
    "default": None,
    "unsliced": "default memory space assignment with sliced prefetches off (the cost model cannot price the "
                "ConcatBitcast that joins a sliced prefetch; the default compile gave no estimate)",
    "streamed": "streamed (no memory space assignment; the default compile gave no estimate)",
}


# the programs' pricings, in the order tried (``priced_cost``)
PROGRAM_PRICINGS = (("default", None), ("unsliced", UNSLICED_PREFETCH_OPTIONS), ("streamed", STREAMED_COMPILER_OPTIONS))


def first_priced(price: Callable[[dict | None], dict], pricings) -> tuple[dict, str]:
    """(``price(options)`` of the first (key, options) of ``pricings`` whose ``"seconds"`` is > 0, its key); the
    last one's when none is (seconds <= 0: libtpu's cost analysis gave no estimate)."""
    for pricing, options in pricings:
        cost = price(options)
        if cost["seconds"] > 0:
            break
    return cost, pricing


def priced_cost(cost_parts, cfg: model_config.ModelConfig, splash_tiles: dict | None = None,
                pricings=PROGRAM_PRICINGS) -> tuple[dict, str]:
    """(``extrapolated_cost``, the pricing that gave it: a key of ``PRICINGS``). libtpu's cost analysis gives no
    estimate for some programs (every v6e SFT and GRPO program: sliced prefetches, see
    ``UNSLICED_PREFETCH_OPTIONS``): they are compiled again with sliced prefetches off, and failing that without
    memory space assignment (the decode breakdown's "streamed" pricing). Seconds <= 0: none priced it.
    ``pricings``: (key, XLA options) tried in turn, ``PROGRAM_PRICINGS`` by default."""
    return first_priced(lambda options: extrapolated_cost(cost_parts, cfg, options, splash_tiles), pricings)


def priced_compiled(compiled: Compiled) -> tuple[dict, str]:
    """``priced_cost`` of one whole program (no depth variants), for a loop-free one such as the rollout copy."""
    return first_priced(lambda options: _cost(_compile(compiled, options)), PROGRAM_PRICINGS)


def _priced_tiles(program: Program, cfg) -> list[dict] | None:
    """The language model's splash tiles per head the cost variants price ``program`` at, for the report."""
    if cfg.attention_impl != "splash" or not program.splash_tiles:
        return None
    return [dict(sequence=seq, causal=causal, tiles=tiles,
                 of=aot_splash_cost.tile_pairs(seq, seq, splash.block_size(seq), splash.block_size(seq), causal))
            for (seq, causal), tiles in program.splash_tiles.items()]


def attention_note(rows: list[dict]) -> str:
    """One line: the attention the programs compiled, and for splash the tiles its cost is priced at."""
    kinds = sorted({r.get("attention") or "-" for r in rows})
    if kinds != ["splash"]:
        return (f"attention: {', '.join(kinds)} (the recipe's model.attention_impl; \"auto\" compiles the splash "
                "kernel for a TPU slice)")
    tiles = [f"{r['program']} {t['tiles']:.1f} of {t['of']} {'causal ' if t['causal'] else ''}tiles per head at "
             f"{t['sequence']} tokens" for r in rows for t in (r.get("splash_tiles") or [])]
    return ("attention: splash, priced by aot_splash_cost's tile-level CostEstimate"
            + (f"; the language model's at the tiles its rows need at the length profile: {'; '.join(tiles)}"
               if tiles else ""))


def measure(program: Program, slice_: tpu_topology.Slice, mesh, cfg, cost_estimate: bool,
            hbm_limit_fraction: float = 1.0, memory: bool = True, pricings=PROGRAM_PRICINGS) -> dict:
    """One report row; ``memory`` False skips compiling the program itself (its memory fields are None);
    ``pricings``: those ``priced_cost`` tries."""
    hbm = slice_.generation.hbm_bytes
    row = dict(program=program.name, topology=slice_.name, chips=slice_.chips, hosts=slice_.hosts,
               mesh={k: int(v) for k, v in mesh.shape.items()}, compile_s=None, argument_bytes=None,
               output_bytes=None, alias_bytes=None, temp_bytes=None,
               other_resident_bytes=int(program.other_resident_bytes), peak_bytes=None, hbm_bytes_per_chip=int(hbm),
               fits=None)
    if memory:
        start = time.perf_counter()
        compiled = _compile(program.compiled)
        mem = compiled.memory_analysis()
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes + program.other_resident_bytes)
        row.update(compile_s=round(time.perf_counter() - start, 1), argument_bytes=int(mem.argument_size_in_bytes),
                   output_bytes=int(mem.output_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
                   temp_bytes=int(mem.temp_size_in_bytes), peak_bytes=int(peak),
                   fits=bool(peak <= hbm_limit_fraction * hbm))
    row.update(flops_per_chip=None, cost_model_s=None,
               tokens_per_s_per_chip=None, mfu=None, tokens=program.tokens, useful_tokens=program.useful_tokens,
               useful_tokens_per_s_per_chip=None, useful_mfu=None,
               padding_fraction=None if program.useful_tokens is None else 1.0 - program.useful_tokens / program.tokens,
               cost_pricing=None, attention=cfg.attention_impl, splash_tiles=_priced_tiles(program, cfg), note=NOTE)
    if cost_estimate and program.cost_parts is not None:
        cost, pricing = priced_cost(program.cost_parts, cfg, program.splash_tiles, pricings)
        if cost["seconds"] > 0:
            row["cost_pricing"] = PRICINGS[pricing]
        if cost["seconds"] > 0 and (cost["flops"] > 0 or not program.model_flops):   # a copy does no math
            row["flops_per_chip"] = cost["flops"]
            seconds = cost["seconds"]
            row["cost_model_s"] = seconds
            row["tokens_per_s_per_chip"] = program.tokens / seconds / slice_.chips
            if program.model_flops:
                row["mfu"] = program.model_flops / (slice_.chips * slice_.generation.peak_bf16_flops * seconds)
            if program.useful_tokens is not None and program.model_flops:   # model FLOPs scale with tokens
                row["useful_tokens_per_s_per_chip"] = program.useful_tokens / seconds / slice_.chips
                row["useful_mfu"] = row["mfu"] * program.useful_tokens / program.tokens
        else:
            row["note"] = NOTE + f"; cost model gave {cost['seconds']:.3g} s: no time or MFU reported"
    return row


# ---- the run --------------------------------------------------------------------------------------------------
def mesh_for(recipe, devices) -> jax.sharding.Mesh:
    """The recipe's mesh on the slice; a data axis absorbs chips the recipe's fsdp x tensor leaves over."""
    m = recipe.mesh
    data = m.data if m.data > 0 and m.data * max(m.fsdp, 1) * m.tensor == len(devices) else -1
    fsdp = m.fsdp if m.fsdp > 0 else -1
    if data == -1 and fsdp == -1:
        data = 1
    return parallel.make_mesh(data, fsdp, m.tensor, devices=devices)


def recipe_problems(recipe, cfg: model_config.ModelConfig, mesh) -> list[str]:
    """What keeps the recipe's programs from being built on ``mesh``, one line each, with the recipe override that
    fixes it: a global batch the mesh's batch shards do not split (``train.validate.batch_problems``, on one host)
    and, for a packing SFT recipe, examples of its length profile that no packed row holds."""
    from robust_r1_jax import aot_programs
    problems = []
    for line in validate.batch_problems(recipe, mesh, 1):
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        step = math.lcm(shards, max(int(recipe.train.grad_accum), 1))
        batch = max(int(recipe.data.global_batch_size), 1)
        problems.append(f"{line} (aot: --config.recipe_overrides='(\"data.global_batch_size="
                        f"{-(-batch // step) * step}\",)')")
    return problems + aot_programs.packing_problems(recipe, cfg)


def recipe_model_config(recipe, platform: str = "tpu") -> model_config.ModelConfig:
    """The recipe's model for the target ``platform`` (its mesh's devices): "auto" attention is resolved here,
    to splash on TPU, because tracing on this host sees a CPU backend (``jax.default_backend()``)."""
    m = recipe.model
    impl = "splash" if m.attention_impl == "auto" and platform == "tpu" else m.attention_impl
    kw = dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat, attention_impl=impl,
              scan_layers=m.get("scan_layers", False))
    if m.preset in model_config.SMALL_PRESETS:
        kw["vocab_size"] = m.vocab_size or 512
    return model_config.preset(m.preset, **kw)


def table(rows: list[dict]) -> str:
    gib = lambda b: "-" if b is None else f"{b / tpu_topology.GIB:.1f}"
    # the first columns as wide as their longest entry ("rollout_weights", "v5litepod-16") plus a space
    program_w = max([len("program"), *(len(r["program"]) for r in rows)]) + 1
    slice_w = max([len("slice"), *(len(r["topology"]) for r in rows)]) + 1
    lines = [f"{'program':<{program_w}}{'slice':<{slice_w}}{'mesh':<18}{'compile s':>10}{'args':>8}{'temp':>8}"
             f"{'peak GiB':>10}"
             f"{'of HBM':>8}{'fits':>6}{'cost s':>10}{'tok/s/chip':>12}{'MFU':>7}{'useful tok/s':>14}"
             f"{'useful MFU':>11}"]
    for r in rows:
        mesh = "x".join(str(v) for v in r["mesh"].values())
        cost = "-" if r["cost_model_s"] is None else f"{r['cost_model_s']:.4g}"
        rate = "-" if r["tokens_per_s_per_chip"] is None else f"{r['tokens_per_s_per_chip']:,.0f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        useful_rate = "-" if r["useful_tokens_per_s_per_chip"] is None else f"{r['useful_tokens_per_s_per_chip']:,.0f}"
        useful_mfu = "-" if r["useful_mfu"] is None else f"{100 * r['useful_mfu']:.1f}%"
        compile_s = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        fits = {True: "yes", False: "NO", None: "-"}[r["fits"]]
        lines.append(f"{r['program']:<{program_w}}{r['topology']:<{slice_w}}{mesh:<18}{compile_s:>10}"
                     f"{gib(r['argument_bytes']):>8}{gib(r['temp_bytes']):>8}{gib(r['peak_bytes']):>10}"
                     f"{gib(r['hbm_bytes_per_chip']):>8}{fits:>6}{cost:>10}{rate:>12}"
                     f"{mfu:>7}{useful_rate:>14}{useful_mfu:>11}")
    pricings = dict.fromkeys(r["cost_pricing"] for r in rows if r.get("cost_pricing"))
    pricing = [f"cost of {', '.join(r['program'] for r in rows if r.get('cost_pricing') == p)}: {p}" for p in pricings]
    return "\n".join(lines + [NOTE, attention_note(rows), USEFUL_NOTE] + pricing)


def load_recipe(spec: str) -> ml_collections.ConfigDict:
    """``path.py`` or ``path.py:variant`` -> that file's ``get_config()`` / ``get_config(variant)``, the way
    ``--config=`` reads it."""
    path, _, variant = spec.partition(":")
    if not path:
        raise ValueError("config.recipe is required: a recipe file such as configs/sft_qwen2_5_vl_3b.py:v5p8")
    try:
        module = importlib.util.spec_from_file_location("aot_recipe", path)
        loaded = importlib.util.module_from_spec(module)
        module.loader.exec_module(loaded)
    except FileNotFoundError as e:
        raise ValueError(f"config.recipe: no recipe file {path}") from e
    return loaded.get_config(variant) if variant else loaded.get_config()


def recipe_on_preset(base: str, variant: str, variants: tuple[str, ...], workdir: str,
                     preset: str) -> ml_collections.ConfigDict:
    """The recipe file ``base`` (a path) at the same ``variant`` (its method, batch and mesh) on another model
    preset: ``model.preset = preset`` and ``workdir`` ("_" + ``variant`` appended for a named variant). ValueError
    for a variant not in ``variants`` ("" being the plain recipe), worded as ``--config=`` reports it."""
    if variant not in variants:
        raise ValueError(f"unknown variant {variant!r}; this config knows {', '.join(v for v in variants if v)}")
    recipe = load_recipe(base + (f":{variant}" if variant else ""))
    recipe.workdir = workdir + (f"_{variant}" if variant else "")
    recipe.model.preset = preset   # init_from must hold a model of this preset (checked before loading)
    return recipe


def apply_overrides(recipe: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    """``"a.b=value"`` strings (value a Python literal, else a string) set on the recipe; an unknown key or a value
    of the wrong type is a ValueError naming the override."""
    recipe.lock()   # a misspelt key is an error, not a new field
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"recipe override {item!r} is not of the form dotted.key=value")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        try:
            recipe.update_from_flattened_dict({key: value})
        except (KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"recipe override {item!r}: {e}") from e
    return recipe


def run(config) -> dict:
    from robust_r1_jax import aot_programs, atomic
    recipe = apply_overrides(load_recipe(config.recipe), config.recipe_overrides)
    slice_ = tpu_topology.parse_slice(config.topology)
    mesh = mesh_for(recipe, tpu_topology.devices(slice_))
    cfg = recipe_model_config(recipe, mesh.devices.flat[0].platform)
    problems = recipe_problems(recipe, cfg, mesh)
    if problems:
        raise validate.ConfigError(problems)
    # traced with the mesh in context: splash attention's shard_map and the scanned layers' batch-sharded
    # activations find it; only the abstract mesh, so eager work stays on this host
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        programs = aot_programs.for_recipe(recipe, cfg, mesh, learner_completion=config.learner_completion)
        wanted = tuple(p for p in config.programs if p)
        unknown = set(wanted) - {p.name for p in programs}
        if unknown:
            raise ValueError(f"config.programs: {sorted(unknown)} not among this recipe's programs "
                             f"{[p.name for p in programs]}")
        programs = [p for p in programs if not wanted or p.name in wanted]
        rows = [measure(p, slice_, mesh, cfg, config.cost_estimate, config.hbm_limit_fraction, config.memory)
                for p in programs]
        result = {"programs": rows}
        if recipe.mode == "rl" and config.cost_estimate and not wanted:   # the summary prices every program
            longest, median = (int(v) for v in config.completion_profile)
            learner_completion, learner_rows = config.learner_completion, None
            if not learner_completion:   # a step at the profile runs the learner at its longest completion's bucket
                learner_completion = longest
                learner_rows = [measure(p, slice_, mesh, cfg, True, memory=False)
                                for p in aot_programs.grpo_learner_programs(recipe, cfg, mesh, longest)]
            result["grpo"] = aot_programs.grpo_summary(recipe, cfg, mesh, slice_, programs, rows, longest, median,
                                                       learner_rows, learner_completion)
    report = table(rows)
    print(report)
    if "grpo" in result:
        print(grpo_table(result["grpo"]))
    if config.output:
        atomic.write_text(config.output, json.dumps(result, indent=1) + "\n")
    if any(r["fits"] is False for r in rows):
        too_big = ", ".join(f"{r['program']} ({r['peak_bytes'] / tpu_topology.GIB:.1f} GiB)" for r in rows
                            if r["fits"] is False)
        limit = config.hbm_limit_fraction * slice_.generation.hbm_bytes / tpu_topology.GIB
        print(f"does not fit {slice_.name} (limit {limit:.1f} GiB per chip): {too_big}", file=sys.stderr)
        raise SystemExit(1)
    return result


def grpo_table(g: dict) -> str:
    p = g["profile"]
    ms = lambda s: "-" if s is None else f"{1e3 * s:.3f} ms"
    return "\n".join([
        f"GRPO step at completions longest {p['longest']} / median {p['median']} (layout {g['layout']}, decode "
        f"bucket {g['decode_bucket']}):",
        f"  decode step {ms(g['decode_step_s'])} (HBM roofline {ms(g['decode_roofline_s'])}); whole cache "
        f"{ms(g['decode_step_full_cache_s'])} (roofline {ms(g['decode_roofline_full_cache_s'])})",
        f"  weights copy {g['rollout_weights_s']:.3f} s + rollout {g['rollout_s']:.2f} s (full horizon "
        f"{g['rollout_full_horizon_s']:.2f} s) + score {g['score_s']:.2f} s + update {g['update_s']:.2f} s (learner "
        f"at completion bucket {g['learner_completion_bucket']}) = step {g['step_s']:.2f} s",
        f"  {g['samples_per_s_per_chip']:.2f} samples/s per chip, {g['samples_per_s_per_pflops']:.2f} per PFLOP/s "
        f"of bf16 peak (EasyR1: {g['easyr1_samples_per_s_per_pflops']})",
        f"  decode priced as one streamed read (no memory space assignment): step {ms(g['streamed']['decode_step_s'])}, "
        f"rollout {g['streamed']['rollout_s']:.2f} s, step {g['streamed']['step_s']:.2f} s, "
        f"{g['streamed']['samples_per_s_per_pflops']:.2f} samples/s per PFLOP/s"])
