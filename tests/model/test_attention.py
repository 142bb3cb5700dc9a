"""The xla attention path (model/layers.py): causal self-attention in query chunks equals the whole row, values and
gradients, against jax.nn.dot_product_attention as the independent reference; other masks are not chunked."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_r1_jax.model import layers
from robust_r1_jax.model.vlm import causal_mask


def _qkv(b, s, h, kv, d=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(keys[0], (b, s, h, d)), jax.random.normal(keys[1], (b, s, kv, d)),
            jax.random.normal(keys[2], (b, s, kv, d)))


def _packed_segments(s):
    """Two rows: three examples then padding; one example crossing every chunk border, then a second."""
    segments = np.zeros((2, s), np.int32)
    segments[0, :300], segments[0, 300:700], segments[0, 700:1050] = 1, 2, 3
    segments[1, :900], segments[1, 900:] = 1, 2
    return jnp.asarray(segments)


def _dots(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("dot_general")


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))


def test_causal_self_attention_in_query_chunks_equals_the_whole_row_and_the_reference():
    s = 2 * layers.XLA_QUERY_CHUNK + 76   # chunks of 512, 512 and 76 queries
    segments = _packed_segments(s)
    mask = causal_mask(segments)
    q, k, v = _qkv(2, s, 4, 2)
    weights = jax.random.normal(jax.random.key(9), q.shape) * (segments > 0)[:, :, None, None]
    chunked = lambda q, k, v: jnp.sum(layers.attention(q, k, v, mask, implementation="xla") * weights)
    whole = lambda q, k, v: jnp.sum(layers._xla_attention(q, k, v, mask.dense) * weights)
    reference = lambda q, k, v: jnp.sum(jax.nn.dot_product_attention(q, k, v, mask=mask.dense,
                                                                      implementation="xla") * weights)
    assert _dots(chunked, q, k, v) == 2 * 3 and _dots(whole, q, k, v) == 2
    got = jax.grad(chunked, argnums=(0, 1, 2))(q, k, v)
    for want in (jax.grad(whole, argnums=(0, 1, 2))(q, k, v), jax.grad(reference, argnums=(0, 1, 2))(q, k, v)):
        for g, w in zip(got, want):
            _close(g, w)
    # every output row, padding included (a padding query sees itself): the chunks read all the keys it may
    out = layers.attention(q, k, v, mask, implementation="xla")
    _close(out, layers._xla_attention(q, k, v, mask.dense))
    _close(out, jax.nn.dot_product_attention(q, k, v, mask=mask.dense, implementation="xla"))


@pytest.mark.parametrize("mask_heads", [None, 1, 4])
def test_bool_masks_per_head_or_shared_and_no_mask_match_the_reference(mask_heads):
    q, k, v = _qkv(2, 40, 4, 2, seed=1)
    mask = None if mask_heads is None else jax.random.bernoulli(jax.random.key(3), 0.7, (2, mask_heads, 40, 40))
    if mask is not None:
        mask = mask | jnp.eye(40, dtype=bool)   # every query sees at least itself
    _close(layers.attention(q, k, v, mask, implementation="xla"),
           jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla"))


def test_attention_that_is_not_causal_self_attention_is_not_chunked():
    """The vision tower's window masks (not causal) and a prompt attending into a longer key range."""
    s = layers.XLA_QUERY_CHUNK + 8
    q, k, v = _qkv(1, s, 2, 2, seed=2)
    windows = jnp.arange(s)[None] // 64
    window_mask = layers.AttentionMask(dense=(windows[:, :, None] == windows[:, None, :])[:, None],
                                       segment_ids=windows)
    assert _dots(lambda q: layers.attention(q, k, v, window_mask, implementation="xla"), q) == 2
    _close(layers.attention(q, k, v, window_mask, implementation="xla"),
           jax.nn.dot_product_attention(q, k, v, mask=window_mask.dense, implementation="xla"))
