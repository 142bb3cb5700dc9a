"""Splash attention: the Pallas TPU flash-attention kernel with block-sparse masks, for ``layers.attention``.

``jax.experimental.pallas.ops.tpu.splash_attention`` never materialises the [heads, Q, K] scores: it walks
(block_q x block_kv) tiles, skips the tiles its static mask (causal, or full) rules out, and ANDs in a
segment-id mask (a query sees only keys of its own segment). Padding, the vision tower's 112-px windows and
its per-frame full attention are all segment ids here, so one kernel covers every self-attention of the model.
Forward and backward are the kernel's own (its custom VJP runs the dq and dk/dv kernels).

Two things the kernel leaves to its caller:

- **Sharding.** XLA cannot partition a Mosaic kernel ("wrap the call in a shard_map"; ``custom_partitioning``
  is not wired through on TPU, jax-ml/jax#38196). With a mesh in context when traced (``jax.set_mesh``, or
  just its abstract mesh: ``jax.sharding.use_abstract_mesh``) the kernel runs under ``shard_map``: batch over
  the mesh axes the ``"batch"`` rule names, heads over ``"tensor"`` when it divides the KV heads, sequence
  and head_dim whole. Without one it runs as is (one device).
- **Shapes.** Block sizes are multiples of 128 that divide the sequence: the sequence is padded up to a
  multiple of 128 with a segment of its own and sliced back.
"""
from __future__ import annotations

import concurrent.futures
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from robust_r1_jax import parallel

LANES = 128                      # block sizes (and so the padded sequence) are multiples of this
_BLOCK_CHOICES = (512, 256, 128)
PAD_SEGMENT = int(jnp.iinfo(jnp.int32).min)   # the padding appended here; never a caller's segment id


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
                     interpret: bool = False) -> jax.Array:
    """Self-attention of q [B, S, H, D] over k, v [B, S, KV, D] (H a multiple of KV) -> [B, S, H, D], q.dtype.

    segment_ids int [B, S]: query i attends to key j iff their ids are equal (and j <= i when ``causal``), so
    every query sees at least itself. Scores are scaled by 1/sqrt(D) as in the XLA path; the kernel
    accumulates in float32. ``interpret`` runs the Pallas kernel in interpret mode (any backend; CPU tests).
    Raises ValueError unless q, k, v and segment_ids share B and S.
    """
    b, s, h, d = q.shape
    if k.shape[:2] != (b, s) or v.shape[:2] != (b, s) or segment_ids.shape != (b, s):
        raise ValueError(f"splash attention is self-attention: q {q.shape}, k {k.shape}, v {v.shape}, "
                         f"segment_ids {segment_ids.shape}")
    padded = -(-s // LANES) * LANES
    q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    heads_major = lambda x: jnp.pad(x, ((0, 0), (0, padded - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    segments = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, padded - s)), constant_values=PAD_SEGMENT)
    run = functools.partial(_attend, causal=causal, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        run = _sharded(run, mesh, b, k.shape[2])
    out = run(heads_major(q), heads_major(k), heads_major(v), segments)
    return out.transpose(0, 2, 1, 3)[:, :s]


def block_size(seq: int) -> int:
    """The largest kernel block (512, 256 or 128) that divides ``seq`` (a multiple of 128)."""
    return next(bs for bs in _BLOCK_CHOICES if seq % bs == 0)


@functools.lru_cache(maxsize=None)
def _kernel(heads: int, seq: int, causal: bool, interpret: bool):
    """The kernel for one example: q [heads, seq, D], k/v [kv_heads, seq, D] -> [heads, seq, D].

    Built on a fresh thread: its block tables are concrete arrays, and a thread has neither the caller's trace
    nor its mesh, whose devices may be an AOT target that cannot execute anything.
    """
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_make_kernel, heads, seq, causal, interpret).result()


def _make_kernel(heads: int, seq: int, causal: bool, interpret: bool):
    bs = block_size(seq)
    blocks = splash.BlockSizes(block_q=bs, block_kv=bs, block_kv_compute=bs, block_q_dkv=bs, block_kv_dkv=bs,
                               block_kv_dkv_compute=bs, block_q_dq=bs, block_kv_dq=bs)
    one_head = splash.CausalMask((seq, seq)) if causal else splash.FullMask((seq, seq))
    return splash.make_splash_mha(splash.MultiHeadMask([one_head] * heads), block_sizes=blocks,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def _attend(q, k, v, segments, *, causal: bool, interpret: bool):
    """q [b, H, S, D], k/v [b, KV, S, D], segments [b, S] (S a multiple of 128) -> [b, H, S, D]."""
    kernel = _kernel(q.shape[1], q.shape[2], causal, interpret)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, splash.SegmentIds(s, s)))(q, k, v, segments)


def _sharded(run, mesh, batch: int, kv_heads: int):
    """``run`` under shard_map: rows over the batch rule's mesh axes, heads over "tensor" when it divides the
    KV heads (each shard then holds whole query groups), sequence and head_dim whole."""
    rows = parallel.logical_to_spec(("batch",), (batch,), mesh)[0]
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and kv_heads % tensor == 0 else None
    activations = PartitionSpec(rows, heads, None, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(activations, activations, activations, PartitionSpec(rows)),
                         out_specs=activations, check_vma=False)
