"""Forward + backward time of the xla attention path (model/layers.py) at a language model's head layout.

The path as it runs (``layers.attention``: causal self-attention in query chunks of ``layers.XLA_QUERY_CHUNK``)
against the same layout over the whole row (``layers._xla_attention``, every score computed, as before the
chunks), on a packed causal mask (two examples per row), float32, one attention layer. Prints one JSON line and
writes it atomically to ``--out`` (``auto``: benchmarks/results/<date>-<device>-attention-xla.json).

    python benchmarks/attention_xla.py                              # the 3B's 16 query / 2 KV heads of 128
    python benchmarks/attention_xla.py --bsz 2 --seqlen 4096
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from robust_r1_jax.model import layers  # noqa: E402
from robust_r1_jax.model.vlm import causal_mask  # noqa: E402


def seconds(fn, args, repeats: int) -> list[float]:
    jax.block_until_ready(fn(*args))   # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bsz", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON path, or 'auto'")
    a = p.parse_args(argv)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (a.bsz, a.seqlen, a.heads, a.head_dim), jnp.float32)
    k, v = (jax.random.normal(key, (a.bsz, a.seqlen, a.kv_heads, a.head_dim), jnp.float32) for key in keys[1:])
    half = a.seqlen // 2
    segments = jnp.concatenate([jnp.full((a.bsz, half), 1), jnp.full((a.bsz, a.seqlen - half), 2)], 1)
    mask = causal_mask(segments.astype(jnp.int32))
    grad = lambda attend: jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v)), argnums=(0, 1, 2)))
    chunked = seconds(grad(lambda q, k, v: layers.attention(q, k, v, mask, implementation="xla")), (q, k, v),
                      a.repeats)
    whole = seconds(grad(lambda q, k, v: layers._xla_attention(q, k, v, mask.dense)), (q, k, v), a.repeats)
    result = dict(what="xla_attention_fwd_bwd", device=jax.devices()[0].device_kind, bsz=a.bsz, seqlen=a.seqlen,
                  heads=a.heads, kv_heads=a.kv_heads, head_dim=a.head_dim, dtype="float32",
                  query_chunk=layers.XLA_QUERY_CHUNK, chunked_s=min(chunked), chunked_s_all=chunked,
                  whole_row_s=min(whole), whole_row_s_all=whole, whole_over_chunked=min(whole) / min(chunked))
    common.finish(result, common.results_path("attention-xla") if a.out == "auto" else a.out)
    return result


if __name__ == "__main__":
    main()
