"""Splash attention: the Pallas TPU flash-attention kernel with block-sparse masks, for ``layers.attention``.

``jax.experimental.pallas.ops.tpu.splash_attention`` never materialises the [heads, Q, K] scores: it walks
(block_q x block_kv) tiles and ANDs in a segment-id mask (a query sees only keys of its own segment) and, causal,
the causal mask. Padding, packed examples, the vision tower's 112-px windows and its per-frame full attention
are all segment ids here, so one kernel covers every self-attention of the model. Forward and backward are the
kernel's own (its custom VJP runs the dq and dk/dv kernels).

**Tiles skipped by segment.** The kernel's block tables (``MaskInfo``: which tiles to compute and which block
to fetch next) are built here per row from its segment ids, inside the trace: a tile is computed only when one
of its queries may see one of its keys. Segment ids mask inside the tiles, not between them, so with the static
tables a packed 4096-token row of five examples computed every causal tile, including those that lie across
examples, and padding's tiles too; with these tables it computes the block diagonal the examples make. A
skipped tile's "next block" repeats the last computed one, so the pipeline fetches nothing for it
(``tile_table``, ``skipping_mask_info``). Every layer of a forward attends over the same segment ids, so a model
builds the tables once (``block_tables``, carried on ``layers.AttentionMask``) and each call reuses them; a call
given none builds its own.

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
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as splash_mask_info
from jax.sharding import PartitionSpec

from robust_r1_jax import parallel

LANES = 128                      # block sizes (and so the padded sequence) are multiples of this
_BLOCK_CHOICES = (512, 256, 128)
PAD_SEGMENT = int(jnp.iinfo(jnp.int32).min)   # padding (the caller's, and that appended here); no real segment


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, *, causal: bool,
                     padding_segment: int | None = None, tables: BlockTables | None = None,
                     interpret: bool = False) -> jax.Array:
    """Self-attention of q [B, S, H, D] over k, v [B, S, KV, D] (H a multiple of KV) -> [B, S, H, D], q.dtype.

    segment_ids int [B, S]: query i attends to key j iff their ids are equal (and j <= i when ``causal``), so
    every query sees at least itself. ``padding_segment``: the id of padding, whose outputs the caller never
    uses: its queries are computed over their own diagonal tile only (finite, and their keys are seen by no
    other segment), so padding costs no tiles off the diagonal. ``tables``: ``block_tables`` of the same
    segment ids, ``causal`` and ``padding_segment`` (built here when None). Scores are scaled by 1/sqrt(D) as in
    the XLA path; the kernel accumulates in float32. ``interpret`` runs the Pallas kernel in interpret mode (any
    backend; CPU tests). Raises ValueError unless q, k, v and segment_ids share B and S, or when ``tables`` are
    not [B, S / block, S / block] for the padded S.
    """
    b, s, h, d = q.shape
    if k.shape[:2] != (b, s) or v.shape[:2] != (b, s) or segment_ids.shape != (b, s):
        raise ValueError(f"splash attention is self-attention: q {q.shape}, k {k.shape}, v {v.shape}, "
                         f"segment_ids {segment_ids.shape}")
    padded = padded_length(s)
    if tables is None:
        tables = block_tables(segment_ids, causal=causal, padding_segment=padding_segment)
    tiles = padded // block_size(padded)
    if tables.computed.shape != (b, tiles, tiles):
        raise ValueError(f"block tables {tables.computed.shape} do not fit {b} rows of {s} tokens "
                         f"({tiles} x {tiles} tiles a row)")
    q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)
    heads_major = lambda x: jnp.pad(x, ((0, 0), (0, padded - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    run = functools.partial(_attend, causal=causal, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        run = _sharded(run, mesh, b, k.shape[2])
    out = run(heads_major(q), heads_major(k), heads_major(v), kernel_segments(segment_ids, padding_segment), tables)
    return out.transpose(0, 2, 1, 3)[:, :s]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BlockTables:
    """Each row's block tables for the kernel (``skipping_mask_info``), all int32 [B, T, T] over T x T tiles of
    the padded sequence: ``computed`` 1 where the (query tile, key tile) is computed, 0 where skipped;
    ``next_along_keys`` the block the forward and dq kernels fetch at each step of their walk over the key
    tiles, ``next_along_queries`` the dk/dv kernel's along its walk over the query tiles."""
    computed: jax.Array
    next_along_keys: jax.Array
    next_along_queries: jax.Array


def padded_length(seq: int) -> int:
    """The sequence length the kernel runs at: ``seq`` rounded up to a multiple of 128."""
    return -(-seq // LANES) * LANES


def kernel_segments(segment_ids: jax.Array, padding_segment: int | None) -> jax.Array:
    """int32 [B, padded_length(S)]: ``segment_ids`` [B, S] with padding (``padding_segment`` and the lanes
    appended) as ``PAD_SEGMENT``."""
    segments = segment_ids.astype(jnp.int32)
    if padding_segment is not None:
        segments = jnp.where(segments == padding_segment, PAD_SEGMENT, segments)
    return jnp.pad(segments, ((0, 0), (0, padded_length(segments.shape[1]) - segments.shape[1])),
                   constant_values=PAD_SEGMENT)


def block_tables(segment_ids: jax.Array, *, causal: bool, padding_segment: int | None = None) -> BlockTables:
    """The kernel's block tables of every row of ``segment_ids`` int [B, S] (see ``splash_attention`` for
    ``causal`` and ``padding_segment``): an S x S comparison per row, so a model builds them once per forward
    and hands them to each layer's ``splash_attention``. With a mesh in context (as ``splash_attention`` needs
    it) they are built under the same ``shard_map`` as the kernel: each device its own rows."""
    segments = kernel_segments(segment_ids, padding_segment)
    build = functools.partial(_row_tables, block=block_size(segments.shape[1]), causal=causal)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.size > 1:
        rows = PartitionSpec(_row_axes(mesh, segments.shape[0]))
        build = jax.shard_map(build, mesh=mesh, in_specs=rows, out_specs=rows, check_vma=False)
    return build(segments)


def _row_tables(segments: jax.Array, *, block: int, causal: bool) -> BlockTables:
    """``BlockTables`` of segments [b, S] (S a multiple of ``block``), row by row."""
    def one_row(s):
        tiles = tile_table(s, block, causal)
        along_keys = skipping_mask_info(tiles, None, walks_queries=False)
        along_queries = skipping_mask_info(tiles, None, walks_queries=True)
        return BlockTables(computed=along_keys.block_mask[0], next_along_keys=along_keys.data_next[0],
                           next_along_queries=along_queries.data_next[0])
    return jax.vmap(one_row)(segments)


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


def tile_table(segment_ids: jax.Array, block: int, causal: bool) -> jax.Array:
    """bool [S / block, S / block]: the (query tile, key tile) pairs of one row that hold a query and a key of one
    segment (causal: the key not after the query), the tiles the kernel must compute. ``segment_ids`` int [S],
    S a multiple of ``block``; queries of ``PAD_SEGMENT`` (padding) count on their diagonal tile alone. Every
    diagonal tile is in the table (a token sees itself)."""
    tiles = segment_ids.shape[0] // block
    may_attend = (segment_ids[:, None] == segment_ids[None, :]) & (segment_ids != PAD_SEGMENT)[:, None]
    if causal:
        position = jnp.arange(segment_ids.shape[0])
        may_attend &= position[None, :] <= position[:, None]
    return may_attend.reshape(tiles, block, tiles, block).any(axis=(1, 3)) | jnp.eye(tiles, dtype=bool)


def skipping_mask_info(tiles: jax.Array, q_sequence, *, walks_queries: bool) -> splash_mask_info.MaskInfo:
    """The kernel's block tables for ``tiles`` bool [Q tiles, K tiles] (``tile_table``), one head's worth (the
    kernel then uses them for every head). The forward and dq kernels walk the key tiles of each query tile, the
    dk/dv kernel (``walks_queries``) the query tiles of each key tile; ``data_next`` gives the block to fetch at
    each step: its own index where the tile is computed, else the last computed one before it along the walk
    (the first after it at the walk's start), which the pipeline already holds. ``q_sequence``: the static
    causal kernel's (its mask function reads it), None for a full mask."""
    axis = 0 if walks_queries else 1
    index = jnp.arange(tiles.shape[axis], dtype=jnp.int32)
    index = index[:, None] if walks_queries else index[None, :]
    last = jax.lax.cummax(jnp.where(tiles, index, -1), axis=axis)
    first = jnp.argmax(tiles, axis=axis, keepdims=True).astype(jnp.int32)
    data_next = jnp.where(last >= 0, last, first)
    return splash_mask_info.MaskInfo(data_next=data_next[None], mask_next=None,
                                     block_mask=tiles.astype(jnp.int32)[None], partial_mask_blocks=None,
                                     q_sequence=q_sequence)


def _with_tables(kernel, tables: BlockTables):
    """``kernel`` (the static one of ``_kernel``) with one row's ``tables`` (leaves [T, T]) as its block tables,
    for every head; the static kernel's ``q_sequence`` stays (its causal mask function reads it)."""
    info = lambda next_block, static: splash_mask_info.MaskInfo(
        data_next=next_block[None], mask_next=None, block_mask=tables.computed[None], partial_mask_blocks=None,
        q_sequence=static.q_sequence)
    return splash_kernel.SplashAttentionKernel(info(tables.next_along_keys, kernel.fwd_mask_info),
                                               info(tables.next_along_keys, kernel.dq_mask_info),
                                               info(tables.next_along_queries, kernel.dkv_mask_info),
                                               **kernel.kwargs)


def _attend(q, k, v, segments, tables: BlockTables, *, causal: bool, interpret: bool):
    """q [b, H, S, D], k/v [b, KV, S, D], segments [b, S] (S a multiple of 128), tables (leaves [b, T, T])
    -> [b, H, S, D]."""
    kernel = _kernel(q.shape[1], q.shape[2], causal, interpret)
    return jax.vmap(lambda q, k, v, s, t: _with_tables(kernel, t)(q, k, v, splash.SegmentIds(s, s)))(
        q, k, v, segments, tables)


def _row_axes(mesh, batch: int):
    """The mesh axes the batch rule splits ``batch`` rows over (None: rows whole)."""
    return parallel.logical_to_spec(("batch",), (batch,), mesh)[0]


def _sharded(run, mesh, batch: int, kv_heads: int):
    """``run`` under shard_map: rows over the batch rule's mesh axes, heads over "tensor" when it divides the
    KV heads (each shard then holds whole query groups), sequence and head_dim whole; the block tables by row."""
    rows = _row_axes(mesh, batch)
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and kv_heads % tensor == 0 else None
    activations = PartitionSpec(rows, heads, None, None)
    return jax.shard_map(run, mesh=mesh,
                         in_specs=(activations, activations, activations, PartitionSpec(rows), PartitionSpec(rows)),
                         out_specs=activations, check_vma=False)
