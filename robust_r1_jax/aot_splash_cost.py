"""Cost estimates for the splash-attention kernels, so XLA's TPU cost model can price the real attention.

XLA's TPU cost model prices a Pallas kernel only by the ``pl.CostEstimate`` its ``pallas_call`` declares (a
kernel without one gets no cost at all), and jax 0.10.2's splash kernels
(``jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel``: the forward, dq and dkv
``pallas_call``s) declare none. ``splash_cost_estimates()`` is a context manager for the aot cost variants only:
while it is open, every ``pallas_call`` that module makes without an estimate gets one computed here from the
call's operand shapes and block sizes. The training path never opens it.

The count, per head and per (block_q x block_kv) tile the kernel computes (``tile_pairs``), with D the head
dim (FlashAttention-2, Dao 2023, section 3.1, tile by tile; splash runs dq and dk/dv as two kernels that each
recompute the scores, so the backward is 3.5x the forward here, not the fused kernel's 2.5x):

- forward: S = Q K^T and O += P V: 2 matmuls, 4 bq bkv D FLOPs; bq bkv exps.
- dq: S, dP = dO V^T, dQ += dS K: 3 matmuls, 6 bq bkv D FLOPs; bq bkv exps (P from the saved logsumexp).
- dkv: S, dV += P^T dO, dP, dK += dS^T Q: 4 matmuls, 8 bq bkv D FLOPs; bq bkv exps.

Tiles: ``model/splash.py`` builds the kernel's block tables from each row's segment ids at run time
(``splash.tile_table``), so the tiles a call computes depend on the data, which a compile does not see. A call
is priced at the mean tiles the recipe's rows need where the caller gives that figure (``expected_tiles``,
keyed by (sequence, causal): ``aot_programs`` computes it for the language model's rows at the recipe's length
profile), else at every tile its static mask allows: causal when the kernel has a ``mask_function`` (j bkv <=
i bq + bq - 1: the only computable mask ``model/splash.py`` builds is ``CausalMask``), all of them otherwise
(``FullMask``), an upper bound on what the chip computes.

Bytes: the operands that stay in VMEM across the inner grid axis are read once per head, the outputs written
once, the streamed operands read once per computed tile: forward and dq stream K and V (per query head, GQA groups re-read their
KV head); dkv streams Q, dO and the per-row f32 logsumexp and delta. Segment ids and the mask tables (under
1% of the bytes) are left out.
"""
from __future__ import annotations

import contextlib

import jax
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel

# operand positions of the three splash pallas_calls (after the 3 scalar-prefetch mask tables); the backward
# kernels also take the forward's logsumexp, dO and delta = rowsum(dO * O)
_Q, _K, _V, _LSE, _DO, _DELTA = 3, 4, 5, 9, 10, 11
_FLOPS_PER_TILE_ELEMENT = {"fwd": 4, "dq": 6, "dkv": 8}   # x bq bkv D per head, see the module docstring
# (operands read once per head, operands streamed once per computed tile) for each kernel; the outputs are
# written once
_RESIDENT = {"fwd": (_Q,), "dq": (_Q, _LSE, _DO, _DELTA), "dkv": (_K, _V)}
_STREAMED = {"fwd": (_K, _V), "dq": (_K, _V), "dkv": (_Q, _DO, _LSE, _DELTA)}


def tile_pairs(q_len: int, kv_len: int, block_q: int, block_kv: int, causal: bool) -> int:
    """(q tile, kv tile) pairs the kernel computes for one head: all of them, or, causal, those with a key
    at or before the tile's last query (diagonal tiles count whole: the kernel computes them masked)."""
    q_tiles, kv_tiles = -(-q_len // block_q), -(-kv_len // block_kv)
    if not causal:
        return q_tiles * kv_tiles
    return sum(min(kv_tiles, (i * block_q + block_q - 1) // block_kv + 1) for i in range(q_tiles))


def _nbytes(x) -> int:
    return 0 if x is None else int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def _phase(name: str) -> str:
    for phase in ("dkv", "dq", "fwd"):
        if f"_{phase}" in name:
            return phase
    raise ValueError(f"not a splash attention kernel: {name!r}")


def kernel_cost(name: str, block_q: int, block_kv: int, causal: bool, operands: tuple,
                out_shapes, expected_tiles: dict | None = None) -> pl.CostEstimate:
    """The CostEstimate of one splash ``pallas_call`` ``name`` (its phase in the name: fwd, dq or dkv) on one
    example: q [H, Sq, D], k/v [KV, Sk, D] at operands 3-5, tiles block_q x block_kv; ``out_shapes`` its
    outputs (None for absent ones); ``expected_tiles`` {(Sq, causal): mean tiles per head} for calls whose
    tiles the data decides (see the module docstring). Raises ValueError for a kernel name of none of the three
    phases."""
    phase = _phase(name)
    heads, q_len, head_dim = operands[_Q].shape
    kv_len = operands[_K].shape[1]
    pairs = (expected_tiles or {}).get((q_len, causal)) or tile_pairs(q_len, kv_len, block_q, block_kv, causal)
    flops = _FLOPS_PER_TILE_ELEMENT[phase] * heads * pairs * block_q * block_kv * head_dim
    exps = heads * pairs * block_q * block_kv
    # a streamed operand's tile: its bytes per head and row (its own head count: K and V have the KV heads)
    # times the tile's rows along the axis the inner grid walks
    tile_rows = block_q if phase == "dkv" else block_kv
    rows = q_len if phase == "dkv" else kv_len
    streamed = sum(_nbytes(operands[i]) * tile_rows // (operands[i].shape[0] * rows)
                   for i in _STREAMED[phase] if operands[i] is not None)
    moved = (sum(_nbytes(operands[i]) for i in _RESIDENT[phase]) + heads * pairs * streamed
             + sum(_nbytes(o) for o in out_shapes))
    return pl.CostEstimate(flops=int(flops), transcendentals=int(exps), bytes_accessed=int(moved))


class _PallasWithCost:
    """``jax.experimental.pallas`` as the splash module sees it, with ``pallas_call`` adding a cost estimate."""

    def __init__(self, expected_tiles: dict | None):
        self.expected_tiles = expected_tiles

    def __getattr__(self, attr):
        return getattr(pl, attr)

    def pallas_call(self, kernel, *args, **kwargs):
        if kwargs.get("cost_estimate") is not None:
            return pl.pallas_call(kernel, *args, **kwargs)
        settings = getattr(kernel, "keywords", {})
        name = kwargs.get("name") or ""
        if "bq" not in settings or "bkv" not in settings:
            raise ValueError(f"splash kernel {name!r} no longer passes bq/bkv to its kernel (a jax version other "
                             "than 0.10.2?): aot_splash_cost cannot price it")

        def call(*operands):
            cost = kernel_cost(name, settings["bq"], settings["bkv"], settings.get("mask_function") is not None,
                               operands, kwargs.get("out_shape") or (), self.expected_tiles)
            return pl.pallas_call(kernel, *args, cost_estimate=cost, **kwargs)(*operands)
        return call


def active() -> bool:
    """Whether splash kernels traced now get cost estimates (only inside ``splash_cost_estimates()``)."""
    return isinstance(splash_kernel.pl, _PallasWithCost)


@contextlib.contextmanager
def splash_cost_estimates(expected_tiles: dict | None = None):
    """Within: splash ``pallas_call``s carry the estimates above; ``expected_tiles`` {(sequence, causal): mean
    tiles per head} prices the calls of that shape at the tiles the recipe's data needs. jax's trace caches are
    cleared on entry and exit: the splash kernel is a ``jax.jit`` function whose cached trace would otherwise
    give the cost variant an estimate-free kernel made earlier, or give later (training) traces the estimated
    one. Not reentrant."""
    if active():
        raise RuntimeError("splash_cost_estimates() is already active")
    jax.clear_caches()
    splash_kernel.pl = _PallasWithCost(expected_tiles)
    try:
        yield
    finally:
        splash_kernel.pl = pl
        jax.clear_caches()

