"""The rollout's decode step on a TPU slice, by XLA's cost model, beside its rooflines (issue 24).

A decode step (one new token per row through the language model) is compiled for the slice from abstract
weights, like every aot program, at one and two language layers and extrapolated to the real depth (the cost
model counts a loop body once, so the layers are unrolled). Next to the cost-model time it gives:

- ``hbm_roofline_s``: the bytes a step must read per chip (the language weights as laid out, plus the attended KV
  slots of the chip's rows) over the chip's HBM bandwidth;
- ``flop_roofline_s``: XLA's FLOP count per chip over the chip's peak bf16 FLOP/s;
- ``ici_roofline_s``: the bytes of the compiled step's collectives (all-reduce counted twice, as a ring moves
  it: reduce-scatter then all-gather) over the chip's ICI bandwidth.

Weight layouts (``DecodeCase.layout``): "training" decodes on the training state as it lies (fp32, fsdp-sharded,
what the rollout did before issue 24); "replicated" on a bf16 copy of the whole model on every chip
(``rollout_weights``), which leaves the step batch-parallel with no collective; "tensor" on a bf16 copy split
Megatron style over the tensor axis of the rollout mesh (``parallel.rollout_mesh``, ``ROLLOUT_AXIS_RULES``: the
same chips as data = chips / ``rollout.tensor_parallel`` by tensor), which halves the weight bytes per chip at
2-way for two all-reduces of [rows, hidden] per layer and one all-gather of the logits. ``attention="fp32_copy"`` traces
the decode attention as it was before issue 24 (the cache cast to float32 and the XLA reference attention).
"""
from __future__ import annotations

import contextlib
import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from robust_r1_jax import parallel, tpu_topology
from robust_r1_jax.aot import (COST_COMPILER_OPTIONS, STREAMED_COMPILER_OPTIONS, UNSLICED_PREFETCH_OPTIONS,
                               abstract_state, depth_variants, first_priced, per_chip_bytes, replicated)
from robust_r1_jax.model import config as model_config
from robust_r1_jax.model import language
from robust_r1_jax.model.language import KVCache

LAYOUTS = ("training", "replicated", "tensor")
ATTENTION = ("cached", "fp32_copy", "none")


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    """One decode-step variant. ``attend``: cache slots read (None: the whole cache); ``rows``: global rows (None:
    the recipe's prompts x G); ``cache_len``: None = prompt + horizon; ``sampling_only``: the token draw alone on
    [rows, vocab] float32 logits (no forward); ``vocab_split``: see ``VOCAB_WHOLE_RULES``."""

    @property
    def rules(self):
        return parallel.ROLLOUT_AXIS_RULES if self.vocab_split else VOCAB_WHOLE_RULES
    name: str
    layout: str = "replicated"
    attention: str = "cached"
    attend: int | None = None
    rows: int | None = None
    cache_len: int | None = None
    sampling_only: bool = False
    vocab_split: bool = True   # "tensor": the vocabulary over the tensor axis (False: whole on every chip)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown rollout layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.attention not in ATTENTION:
            raise ValueError(f"unknown decode attention {self.attention!r}; expected one of {ATTENTION}")


def decode_mesh(recipe, mesh, layout: str):
    """The mesh the decode of ``layout`` runs on: the rollout mesh for "tensor", else the training ``mesh``."""
    if layout == "tensor":
        return parallel.rollout_mesh(mesh, int(recipe.rollout.get("tensor_parallel", 2)))
    return mesh


def copy_shardings(weights, mesh, layout: str, rules=parallel.ROLLOUT_AXIS_RULES):
    """Where the rollout copy of ``weights`` (an ``nnx.State``) lives: every chip of ``mesh`` for "replicated";
    for "tensor" (``mesh`` the rollout mesh) each Variable by its logical axes under ``rules``."""
    if layout == "tensor":
        return parallel.state_shardings(weights, mesh, rules)
    return replicated(mesh)


# The "tensor" layout with the vocabulary whole on every chip: the alternative to splitting it that
# ``DecodeCase.vocab_split=False`` prices (the embedding table and tied head read whole, no logits all-gather).
VOCAB_WHOLE_RULES = tuple((name, None if name == "vocab" else axis) for name, axis in parallel.ROLLOUT_AXIS_RULES)


def rollout_weights(weights, mesh, dtype, layout: str = "replicated", rules=parallel.ROLLOUT_AXIS_RULES):
    """Abstract weights of a rollout copy (``layout`` "replicated" or "tensor", ``mesh`` the one it lives on):
    every floating leaf in ``dtype`` (integer leaves keep their dtype), laid out by ``copy_shardings``."""
    shardings = copy_shardings(weights, mesh, layout, rules)

    def copy(variable, sharding):
        def leaf(x):
            d = dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
            return jax.ShapeDtypeStruct(x.shape, d, sharding=sharding)
        return jax.tree.map(leaf, variable)
    if layout != "tensor":
        return jax.tree.map(lambda v: copy(v, shardings), weights, is_leaf=_is_variable)
    return jax.tree.map(copy, weights, shardings, is_leaf=_is_variable)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


class OnMesh:
    """A jitted function lowered with ``mesh``'s abstract mesh and ``rules`` in context (the "tensor" rollout
    traces on the rollout mesh by ``ROLLOUT_AXIS_RULES`` while the aot mode holds the training mesh): what
    ``aot.Compiled.fn`` needs of it."""

    def __init__(self, fn, mesh, rules=parallel.ROLLOUT_AXIS_RULES):
        self.fn, self.mesh, self.rules = fn, mesh, rules

    def lower(self, *args):
        with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh), parallel.axis_rules(self.rules):
            return self.fn.lower(*args)


@contextlib.contextmanager
def _decode_attention(kind: str):
    """Swaps the single-token attention the language model traces (only while lowering a variant)."""
    original = language.cached_attention
    if kind == "none":
        language.cached_attention = lambda q, k, v, mask, **_: q
    elif kind == "fp32_copy":
        from robust_r1_jax.model.layers import attention

        def widened(q, k, v, mask, new, **_):   # the cache (and the new slot) cast to float32, the XLA reference
            joined = lambda cached, fresh: jnp.concatenate([jnp.swapaxes(cached, 1, 2), fresh.astype(cached.dtype)],
                                                           axis=1).astype(jnp.float32)
            full = jnp.broadcast_to(mask, (q.shape[0], 1, 1, k.shape[2]))
            full = jnp.concatenate([full, jnp.ones(full.shape[:3] + (1,), bool)], axis=-1)
            return attention(q.astype(jnp.float32), joined(k, new[0]), joined(v, new[1]), full,
                             implementation="xla").astype(q.dtype)
        language.cached_attention = widened
    try:
        yield
    finally:
        language.cached_attention = original


def _shape(recipe, case: DecodeCase) -> tuple[int, int, int]:
    """(global rows, cache length, slots read)."""
    group = recipe.grpo.num_samples
    rows = case.rows or recipe.data.global_batch_size * group
    cache_len = case.cache_len or recipe.data.seq_len + recipe.sampling.max_new_tokens
    return rows, cache_len, min(case.attend or cache_len, cache_len)


def abstract_cache(text_cfg, mesh, rows: int, cache_len: int, dtype) -> KVCache:
    """A KV cache of ShapeDtypeStructs laid out as the rollout's prefill leaves it (``generate.laid_out_cache``):
    rows over the batch axes, KV heads over "tensor"."""
    shape = (text_cfg.num_hidden_layers, rows, text_cfg.num_key_value_heads, cache_len, text_cfg.head_dim)
    kv_sh = parallel.named_sharding(mesh, (None, "batch", "kv_heads", None, None), shape)
    row_sh = lambda ndim: parallel.named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), (rows,) * ndim)
    return KVCache(keys=jax.ShapeDtypeStruct(shape, dtype, sharding=kv_sh),
                   values=jax.ShapeDtypeStruct(shape, dtype, sharding=kv_sh),
                   valid=jax.ShapeDtypeStruct((rows, cache_len), bool, sharding=row_sh(2)),
                   index=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh)),
                   next_position=jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=row_sh(1)))


def model_weights(recipe, model_cfg, mesh, layout: str, rules=parallel.ROLLOUT_AXIS_RULES):
    """(graphdef, abstract weights) of the whole model in the layout the decode reads (``rules``: the "tensor"
    layout's table)."""
    from robust_r1_jax.aot_programs import _optimizer
    tx, _ = _optimizer(recipe)
    parts, state = abstract_state(model_cfg, tx, tuple(recipe.train.freeze), mesh)
    graphdef, weights = nnx.split(parts.merge(state.trainable, state.frozen))
    if layout in ("replicated", "tensor"):
        weights = rollout_weights(weights, decode_mesh(recipe, mesh, layout), model_cfg.dtype, layout, rules)
    return graphdef, weights


def compile_case(recipe, model_cfg, mesh, case: DecodeCase, options: dict | None = None):
    """The compiled decode-step variant (a TPU executable); ``options``: XLA compiler options (default
    ``COST_COMPILER_OPTIONS``)."""
    options = COST_COMPILER_OPTIONS if options is None else options
    mesh = decode_mesh(recipe, mesh, case.layout)
    rules = case.rules if case.layout == "tensor" else parallel.LOGICAL_AXIS_RULES
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), parallel.axis_rules(rules):
        return _compile_case(recipe, model_cfg, mesh, case, options)


def _compile_case(recipe, model_cfg, mesh, case: DecodeCase, options: dict):
    from robust_r1_jax.model import generate as smp
    from robust_r1_jax.rl import grpo
    rows, cache_len, attend = _shape(recipe, case)
    row_sharding = parallel.named_sharding(mesh, ("batch",), (rows,))
    if case.sampling_only:
        scfg = grpo.sampler_config(recipe, grpo.grpo_config(recipe), model_cfg)
        logits = jax.ShapeDtypeStruct((rows, model_cfg.text.vocab_size), jnp.float32,
                                      sharding=parallel.named_sharding(mesh, ("batch", None),
                                                                       (rows, model_cfg.text.vocab_size)))
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(mesh))
        return jax.jit(lambda lg, k: smp.sample_tokens(lg, k, scfg)).lower(logits, key).compile(
            compiler_options=options)
    graphdef, weights = model_weights(recipe, model_cfg, mesh, case.layout, case.rules)
    cache = abstract_cache(model_cfg.text, mesh, rows, cache_len, model_cfg.dtype)
    last = jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=row_sharding)

    def decode(w, tokens, c):   # as the rollout's loop runs it: logits rows first, the cache laid out
        return smp.decode_step(nnx.merge(graphdef, w), tokens, c, attend=attend)

    # the cache donated: the rollout's loop updates it in place, so no copy of it belongs to a step's cost
    with _decode_attention(case.attention):
        return jax.jit(decode, donate_argnums=(2,)).lower(weights, last, cache).compile(
            compiler_options=options)


_COLLECTIVE = re.compile(r"= (.*?) (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(-start)?\(")
_ARRAY = re.compile(r"(pred|s8|u8|s32|u32|bf16|f16|f32|s64|f64)\[([\d,]*)\]")
_ITEMSIZE = dict(pred=1, s8=1, u8=1, bf16=2, f16=2, s32=4, u32=4, f32=4, s64=8, f64=8)


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes of each kind of collective in a compiled HLO module's text, from the ops' result shapes. A TPU
    reduce-scatter is an "all-reduce-scatter" fusion whose body holds the all-reduce: counted once, as that."""
    totals: dict[str, int] = {}
    for line in hlo_text.splitlines():
        match = _COLLECTIVE.search(line)
        if not match:
            continue
        size = 0
        for dtype, dims in _ARRAY.findall(match.group(1)):
            count = 1
            for d in filter(None, dims.split(",")):
                count *= int(d)
            size += count * _ITEMSIZE[dtype]
        totals[match.group(2)] = totals.get(match.group(2), 0) + size
    return totals


def _measure(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    coll = collective_bytes(compiled.as_text())
    return {"seconds": float(cost.get("optimal_seconds", 0.0)), "flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "collective_bytes": float(sum(coll.values())),
            "ici_bytes": float(sum(2 * b if kind == "all-reduce" else b for kind, b in coll.items()))}


def case_cost(recipe, model_cfg, mesh, case: DecodeCase, options: dict | None = None) -> dict:
    """The variant's per-chip cost-model figures at the model's depth: measured at one and two language layers
    and extrapolated linearly (the sampling variant has no layers: compiled once). ``seconds`` <= 0 is the cost
    model's "no estimate"."""
    if case.sampling_only:
        return _measure(compile_case(recipe, model_cfg, mesh, case, options))
    one, two = (_measure(compile_case(recipe, v, mesh, case, options)) for v in depth_variants(model_cfg)[:2])
    if one["seconds"] <= 0 or two["seconds"] <= 0:
        return dict(one, seconds=min(one["seconds"], two["seconds"]))
    layers = model_cfg.text.num_hidden_layers
    return {k: one[k] + (layers - 1) * (two[k] - one[k]) for k in one}


# the decode cases' pricings, in the order tried (``priced_case_cost``): every one without cross-program prefetch
DECODE_PRICINGS = (("default", COST_COMPILER_OPTIONS),
                   ("unsliced", dict(COST_COMPILER_OPTIONS, **UNSLICED_PREFETCH_OPTIONS)),
                   ("streamed", STREAMED_COMPILER_OPTIONS))


def priced_case_cost(recipe, model_cfg, mesh, case: DecodeCase, pricings=DECODE_PRICINGS) -> tuple[dict, str]:
    """(``case_cost`` by the first of ``pricings`` that gives an estimate, its key; a key of ``aot.PRICINGS``): the
    default compile, then sliced prefetches off (v6e), then streamed. Seconds <= 0: none of them priced it."""
    return first_priced(lambda options: case_cost(recipe, model_cfg, mesh, case, options), pricings)


def roofline_bytes(recipe, model_cfg, mesh, case: DecodeCase) -> dict:
    """The bytes one chip must read for a decode step: its language weights as laid out (the vision tower is not
    read by a decode step) and its rows' attended KV slots (keys and values, every layer; its share of the KV
    heads on a tensor axis)."""
    rows, _, attend = _shape(recipe, case)
    on = decode_mesh(recipe, mesh, case.layout)
    per_chip_rows = -(-rows // (on.shape["data"] * on.shape["fsdp"]))
    if case.sampling_only:
        return {"weights": 0, "kv": 0, "logits": per_chip_rows * model_cfg.text.vocab_size * 4}
    _, weights = model_weights(recipe, model_cfg, mesh, case.layout, case.rules)
    language_bytes = per_chip_bytes(weights["language"])
    t = model_cfg.text
    tensor = on.shape["tensor"]
    kv_heads = t.num_key_value_heads // tensor if t.num_key_value_heads % tensor == 0 else t.num_key_value_heads
    kv = 0 if case.attention == "none" else (per_chip_rows * attend * t.num_hidden_layers * 2 * kv_heads
                                             * t.head_dim * jnp.dtype(model_cfg.dtype).itemsize)
    return {"weights": language_bytes, "kv": kv, "logits": 0}


def breakdown_cases(recipe) -> list[DecodeCase]:
    """The variants that isolate the parts of the step: before issue 24 and after, attention off, half the cache,
    half the rows (what dropping finished rows could save), the token draw alone; the "tensor" layout with the
    vocabulary split and whole, and its token draw (rows per data shard)."""
    prompt, horizon = recipe.data.seq_len, recipe.sampling.max_new_tokens
    rows = recipe.data.global_batch_size * recipe.grpo.num_samples
    half_cache = prompt + horizon // 2
    return [
        DecodeCase("training layout, whole cache, old fp32-copy attention", "training", "fp32_copy"),
        DecodeCase("training layout, no attention", "training", "none"),
        DecodeCase("training layout, half the cache", "training", "fp32_copy", cache_len=half_cache),
        DecodeCase("replicated bf16, whole cache", "replicated", "cached"),
        DecodeCase("replicated bf16, no attention", "replicated", "none"),
        DecodeCase("replicated bf16, half the cache read", "replicated", "cached", attend=half_cache),
        DecodeCase("replicated bf16, half the rows", "replicated", "cached", rows=rows // 2),
        DecodeCase("sampling alone", sampling_only=True),
        DecodeCase("tensor bf16, whole cache", "tensor", "cached"),
        DecodeCase("tensor bf16, no attention", "tensor", "none"),
        DecodeCase("tensor bf16, half the cache read", "tensor", "cached", attend=half_cache),
        DecodeCase("tensor bf16, vocab whole, whole cache", "tensor", "cached", vocab_split=False),
        DecodeCase("tensor bf16, vocab whole, no attention", "tensor", "none", vocab_split=False),
        DecodeCase("tensor: sampling alone", "tensor", sampling_only=True),
    ]


def breakdown(recipe, model_cfg, mesh, slice_: tpu_topology.Slice, cases=None, streamed: bool = True
              ) -> list[dict]:
    """One row per case: cost-model seconds (compiler defaults, sliced prefetches off where those give no estimate:
    ``priced_case_cost``; with ``streamed`` also without memory space assignment) and its rooflines (all per chip,
    seconds per decode step)."""
    gen = slice_.generation
    rows = []
    for case in cases or breakdown_cases(recipe):
        cost, pricing = priced_case_cost(recipe, model_cfg, mesh, case, DECODE_PRICINGS[:2])
        plain = case_cost(recipe, model_cfg, mesh, case, STREAMED_COMPILER_OPTIONS) if streamed else None
        if cost["seconds"] <= 0 and plain is not None:   # no default estimate: FLOPs and bytes from the other
            cost = dict(plain, seconds=cost["seconds"])
        need = roofline_bytes(recipe, model_cfg, mesh, case)
        hbm_bytes = sum(need.values())
        rows.append(dict(
            case=case.name, layout=case.layout, attention=case.attention, slots_read=_shape(recipe, case)[2],
            sliced_prefetch_off=pricing == "unsliced",
            rows=_shape(recipe, case)[0], cost_model_s=cost["seconds"] if cost["seconds"] > 0 else None,
            cost_model_streamed_s=plain["seconds"] if plain and plain["seconds"] > 0 else None,
            hbm_roofline_s=hbm_bytes / gen.hbm_bytes_per_s, flop_roofline_s=cost["flops"] / gen.peak_bf16_flops,
            ici_roofline_s=cost["ici_bytes"] / gen.ici_bytes_per_s, roofline_weight_bytes=need["weights"],
            roofline_kv_bytes=need["kv"] + need["logits"], xla_bytes_accessed=cost["bytes_accessed"],
            xla_bytes_roofline_s=cost["bytes_accessed"] / gen.hbm_bytes_per_s, flops=cost["flops"],
            collective_bytes=cost["collective_bytes"]))
    return rows


def table(rows: list[dict]) -> str:
    ms = lambda s: "-" if s is None else f"{1e3 * s:.3f}"
    ratio = lambda s, r: "-" if s is None or not r["hbm_roofline_s"] else f"{s / r['hbm_roofline_s']:.2f}"
    lines = [f"{'case':<56}{'cost ms':>9}{'x HBM':>7}{'streamed':>9}{'x HBM':>7}{'HBM ms':>9}{'XLA-bytes ms':>13}"
             f"{'FLOP ms':>9}{'ICI ms':>8}{'coll MB':>9}"]
    for r in rows:
        streamed = r.get("cost_model_streamed_s")
        name = r["case"] + (" *" if r.get("sliced_prefetch_off") else "")
        lines.append(f"{name:<56}{ms(r['cost_model_s']):>9}{ratio(r['cost_model_s'], r):>7}"
                     f"{ms(streamed):>9}{ratio(streamed, r):>7}{ms(r['hbm_roofline_s']):>9}"
                     f"{ms(r['xla_bytes_roofline_s']):>13}{ms(r['flop_roofline_s']):>9}{ms(r['ici_roofline_s']):>8}"
                     f"{r['collective_bytes'] / 1e6:>9.1f}")
    if any(r.get("sliced_prefetch_off") for r in rows):
        lines.append("* cost ms: compiled with sliced prefetches off (UNSLICED_PREFETCH_OPTIONS): the default compile "
                     "gave no estimate")
    return "\n".join(lines)


def model_config_for(recipe, platform: str = "tpu") -> model_config.ModelConfig:
    from robust_r1_jax.aot import recipe_model_config
    return recipe_model_config(recipe, platform)
