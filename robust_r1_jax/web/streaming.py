"""Token-by-token sampling for the web app: one jitted prefill (+ first token) and one jitted decode step, each
compiled once per shape bucket, driven from Python so every token reaches the page as soon as it exists.

``model/generate.py``'s rollout keeps the whole decode loop on the device (one call, no tokens until it ends), and
its ``stream`` re-traverses the nnx graph on every step. Here the model is split once into ``(graphdef, state)``
and both programs take the state as an argument, so a long-lived server holds one copy of the weights and two
programs per (prompt bucket, patch bucket, cache length, sampler settings), whatever the request.

Random numbers follow ``model/generate.py``: token ``t`` is drawn with ``fold_in(rng, t)``, so a stream with the
same rng reproduces row 0 of ``generate`` for one prompt, and the selection is ``generate.sample_tokens``.
"""
from __future__ import annotations

import collections
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax.model import generate as gen

# Program name -> traces since the process started: each trace is one compilation, so a server that keeps its
# shapes fixed shows constant counts after warm-up (the page and the tests read them).
_TRACES: collections.Counter[str] = collections.Counter()


def trace_counts() -> dict[str, int]:
    """{"prefill": n, "decode": n}: compilations of the two programs so far in this process."""
    return {name: _TRACES[name] for name in ("prefill", "decode")}


def _prefill(graphdef, state, prompt_ids, prompt_mask, pixel_values, image_grid_thw, rng, *,
             config: gen.SamplerConfig, cache_len: int):
    _TRACES["prefill"] += 1  # runs only while tracing
    model = nnx.merge(graphdef, state)
    logits, cache = model.prefill_traced(prompt_ids, pixel_values, image_grid_thw, prompt_mask, cache_len)
    token, _ = gen.sample_tokens(logits, jax.random.fold_in(rng, 0), config)
    return token, cache


def _decode(graphdef, state, last_token, cache, rng, step, *, config: gen.SamplerConfig):
    _TRACES["decode"] += 1
    model = nnx.merge(graphdef, state)
    logits, cache = model.decode_traced(last_token, cache)
    token, _ = gen.sample_tokens(logits, jax.random.fold_in(rng, step), config)
    return token, cache


_jit_prefill = jax.jit(_prefill, static_argnums=(0,), static_argnames=("config", "cache_len"))
# The cache is donated: XLA writes the new key/value slot in place instead of copying the whole cache per token.
_jit_decode = jax.jit(_decode, static_argnums=(0,), static_argnames=("config",), donate_argnames=("cache",))


class TokenStreamer:
    """Streams the completion of one left-padded prompt with a model split once at construction."""

    def __init__(self, model, config: gen.SamplerConfig):
        if config.num_samples != 1:
            raise ValueError(f"the web sampler streams one completion per prompt, got num_samples={config.num_samples}")
        self.config = config
        self.model_config = model.config
        self.graphdef, self.state = nnx.split(model)

    def stream(self, prompt_ids: np.ndarray, prompt_mask: np.ndarray, pixel_values: np.ndarray,
               image_grid_thw: np.ndarray, rng: jax.Array) -> Iterator[int]:
        """Yields token ids as they are sampled, ending with the stop token when one is sampled.

        prompt_ids / prompt_mask int32 [1, S] (LEFT padded), pixel_values float32 [1, N, patch_dim],
        image_grid_thw int32 [1, 1, 3] (the batched layout of ``eval.inference.pack_batch``). The cache holds
        S + max_new_tokens slots, so its length is fixed by the prompt bucket.
        """
        if np.shape(prompt_ids)[0] != 1:
            raise ValueError(f"stream takes one prompt, got prompt_ids of shape {np.shape(prompt_ids)}")
        cache_len = np.shape(prompt_ids)[1] + self.config.max_new_tokens
        token, cache = _jit_prefill(self.graphdef, self.state, jnp.asarray(prompt_ids, jnp.int32),
                                    jnp.asarray(prompt_mask, jnp.int32), jnp.asarray(pixel_values),
                                    jnp.asarray(image_grid_thw, jnp.int32), rng, config=self.config,
                                    cache_len=cache_len)
        stops = set(self.config.stop_token_ids)
        for step in range(1, self.config.max_new_tokens + 1):
            token_id = int(token[0])
            yield token_id
            if token_id in stops or step == self.config.max_new_tokens:
                return
            token, cache = _jit_decode(self.graphdef, self.state, token, cache, rng,
                                       jnp.asarray(step, jnp.int32), config=self.config)
