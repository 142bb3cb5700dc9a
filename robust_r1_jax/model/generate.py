"""Generation: one jitted program runs the prompt prefill once per prompt, repeats the KV cache for the G
samples of each prompt, and decodes in a ``lax.while_loop`` until every row has stopped. GRPO's rollouts, the
evaluation and the ``generate`` mode all sample through it.

Usage::

    config = SamplerConfig(max_new_tokens=256, temperature=1.0, num_samples=8,
                           stop_token_ids=default_stop_token_ids(model.config), pad_token_id=pad)
    rollout = generate(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, config, rng)

Shapes are static: one compilation serves every call with the same (batch, prompt length, patch bucket,
image slots) and the same ``SamplerConfig``. :func:`trace_count` counts every trace and :func:`trace_log`
keeps the most recent ones, so callers and tests can assert that RL steps do not recompile.

Log-probabilities. ``Rollout.logprobs`` holds, for each generated token, ``log_softmax(logits / temperature)``
at that token: the temperature-scaled distribution *before* top-k / top-p filtering (and after the repetition
penalty, when one is set) (the GRPO learner
recomputes log-probs with its own forward; these are for monitoring and for the first inner iteration's
"old" log-probs when no filtering is used). With ``temperature == 0`` (greedy) it is ``log_softmax(logits)``,
the model's own distribution.

Random numbers: the token at step ``t`` (0 = first generated token) is drawn with
``jax.random.fold_in(rng, t)``, so :func:`stream` with the same rng reproduces row 0 of :func:`generate`
for a single prompt.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from robust_r1_jax import parallel
from robust_r1_jax.model.config import ModelConfig
from robust_r1_jax.model.language import KVCache
from robust_r1_jax.model.vlm import check_image_tokens


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How to sample. Hashable: it is a static argument of the compiled rollout."""
    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # 1 = off
    top_k: int = 0  # 0 = off
    num_samples: int = 1  # G completions per prompt
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    cache_len: int | None = None  # None: prompt length + max_new_tokens
    repetition_penalty: float = 1.0  # 1 = off; transformers' RepetitionPenaltyLogitsProcessor, see below
    # Token ids never sampled (logit -inf before everything else); see vision_token_ids.
    suppress_token_ids: tuple[int, ...] = ()
    # Decode steps run in length buckets of this many new tokens, each its own while loop whose attention reads
    # only the cache slots filled by the bucket's end (0: one loop over the whole cache, the old behaviour).
    decode_bucket: int = 256

    def __post_init__(self):
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "suppress_token_ids", tuple(sorted({int(t) for t in self.suppress_token_ids})))
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.num_samples < 1:
            problems.append(f"num_samples must be >= 1, got {self.num_samples}")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.decode_bucket < 0:
            problems.append(f"decode_bucket must be >= 0 (0 = off), got {self.decode_bucket}")
        if self.cache_len is not None and self.cache_len < 1:
            problems.append(f"cache_len must be positive or None, got {self.cache_len}")
        if problems:
            raise ValueError("invalid SamplerConfig: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def vision_token_ids(model_config: ModelConfig) -> tuple[int, int, int, int]:
    """``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>`` and ``<|video_pad|>``: the tokens that frame or
    stand for image features in a prompt. As text in a completion they mean nothing the model was trained on, so
    ``config.sampling.suppress_vision_tokens`` (on by default) keeps the sampler from emitting them."""
    return (model_config.vision_start_token_id, model_config.vision_end_token_id, model_config.image_token_id,
            model_config.video_token_id)


def suppress_tokens(logits: jax.Array, token_ids: tuple[int, ...]) -> jax.Array:
    """logits [..., V] with the entries of ``token_ids`` set to -inf (so they get probability 0 and every other
    token's log-probability is taken over the rest, in the sampler and in the GRPO learner alike)."""
    if not token_ids:
        return logits
    banned = jnp.zeros((logits.shape[-1],), bool).at[jnp.asarray(token_ids, jnp.int32)].set(True)
    return jnp.where(banned, -jnp.inf, logits)


def default_stop_token_ids(model_config: ModelConfig) -> tuple[int, int]:
    """``<|im_end|>`` (the chat turn's end) and ``<|endoftext|>``."""
    return (model_config.eos_token_id, model_config.bos_token_id)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Rollout:
    """Completions of B prompts x G samples, rows grouped by prompt (prompt b owns rows b*G .. b*G+G-1).

    tokens    int32   [B*G, T]  generated ids; ``pad_token_id`` after the stop token
    logprobs  float32 [B*G, T]  see the module docstring; 0 where ``mask`` is 0
    mask      int32   [B*G, T]  1 on generated tokens up to and including the stop token
    lengths   int32   [B*G]     number of generated tokens (the stop token counts)
    prompt_ids, prompt_mask  int32 [B*G, S]  each prompt repeated G times
    steps     int32   []        decode steps run: < T when every row stopped early
    """
    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    prompt_ids: jax.Array
    prompt_mask: jax.Array
    steps: jax.Array


# ---- trace bookkeeping ----------------------------------------------------------------------------------------
# A long run traces a handful of programs, but a process that runs many tests or benchmarks keeps tracing: the
# counts stay exact while only the most recent entries are kept.
TRACE_LOG_LENGTH = 64
_RECENT_TRACES: collections.deque[tuple[str, tuple]] = collections.deque(maxlen=TRACE_LOG_LENGTH)
_TRACE_COUNTS: collections.Counter[str] = collections.Counter()


def _record_trace(what: str, *shape_info) -> None:
    """Runs only while JAX traces, so each entry is one (re)compilation of the enclosing program."""
    _RECENT_TRACES.append((what, tuple(shape_info)))
    _TRACE_COUNTS[what] += 1


def trace_log() -> tuple[tuple[str, tuple], ...]:
    """The last ``TRACE_LOG_LENGTH`` traces, oldest first: ("generate", (B, S, T, G)), ("prefill", prompt_ids
    shape), ("decode", tokens shape)."""
    return tuple(_RECENT_TRACES)


def trace_count(what: str = "generate") -> int:
    """Number of traces of ``what`` since the process started (not bounded by the log's length)."""
    return _TRACE_COUNTS[what]


# ---- token selection ------------------------------------------------------------------------------------------
# Both filters find their cut-off without sorting the vocabulary: XLA's CPU sort of a [rows, vocab] array costs
# ~40 ms per decode step, a 32-step search over the bits of a float ~2 ms. The search builds, bit by bit from the
# top, the largest key for which the kept set (every entry whose key is at least it) still satisfies
# ``enough``; that key belongs to an entry, so the result equals the sort-based definition, ties included.
def _ordered_keys(values: jax.Array) -> jax.Array:
    """uint32 keys with the order of the float32 values (sign bit flipped for >= 0, all bits for < 0); -0.0 is
    keyed as +0.0, since the two compare equal."""
    values = values.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(jnp.where(values == 0, 0.0, values), jnp.uint32)
    return jnp.where(bits >> 31 == 0, bits | jnp.uint32(1 << 31), ~bits)


def _largest_cutoff(keys: jax.Array, enough) -> jax.Array:
    """Per row, the largest t such that ``enough(keys >= t)`` holds; ``enough`` must be monotone in t."""
    def try_bit(i, cutoff):
        candidate = cutoff | (jnp.uint32(1) << (31 - i).astype(jnp.uint32))
        return jnp.where(enough(keys >= candidate[..., None]), candidate, cutoff)
    return jax.lax.fori_loop(0, 32, try_bit, jnp.zeros(keys.shape[:-1], jnp.uint32))


def filter_top_k(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row (ties with the k-th all stay), the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    keys = _ordered_keys(logits)
    kth = _largest_cutoff(keys, lambda kept: kept.sum(axis=-1) >= k)
    return jnp.where(keys < kth[..., None], -jnp.inf, logits)


def filter_top_p(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most likely tokens whose probability reaches p (ties with the
    last one kept all stay; the top token always stays)."""
    if p >= 1.0:
        return logits
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    keys = _ordered_keys(probs)
    # an empty set never reaches p > 0, so the cut-off is at most the top token's key and that token stays
    cutoff = _largest_cutoff(keys, lambda kept: jnp.sum(jnp.where(kept, probs, 0.0), axis=-1) >= p)
    return jnp.where(keys < cutoff[..., None], -jnp.inf, logits)


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
    """transformers' ``RepetitionPenaltyLogitsProcessor`` (CTRL, Keskar et al. 2019, arXiv:1909.05858): the
    logit of every token already in the sequence (``seen`` bool [N, V]) is divided by ``penalty`` when positive
    and multiplied by it when negative. logits [N, V] float32."""
    return jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)


def seen_tokens(prompt_ids: jax.Array, prompt_mask: jax.Array, vocab_size: int) -> jax.Array:
    """bool [B, V]: the tokens of each prompt's real (mask 1) positions; padding does not count."""
    rows = jnp.arange(prompt_ids.shape[0])[:, None]
    return jnp.zeros((prompt_ids.shape[0], vocab_size), jnp.int32).at[rows, prompt_ids].max(
        prompt_mask.astype(jnp.int32)) > 0


def _uses_penalty(config: SamplerConfig) -> bool:
    return config.repetition_penalty != 1.0


def sample_tokens(logits: jax.Array, key: jax.Array, config: SamplerConfig,
                  seen: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """logits [N, V] float32 -> (token ids int32 [N], their log-probs [N]; see the module docstring).

    ``seen`` bool [N, V] (the prompt's and the generated tokens) is needed when ``config.repetition_penalty``
    is not 1; as in transformers, the penalty applies before temperature, top-k and top-p, greedy included.
    ``config.suppress_token_ids`` are masked first, so the log-probs are those of the distribution without them.
    """
    logits = suppress_tokens(logits.astype(jnp.float32), config.suppress_token_ids)
    if _uses_penalty(config):
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        scaled = logits
    else:
        scaled = logits / config.temperature
        filtered = filter_top_p(filter_top_k(scaled, config.top_k), config.top_p)
        tokens = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens, logprobs


def _is_stop(tokens: jax.Array, stop_token_ids: tuple[int, ...]) -> jax.Array:
    stopped = jnp.zeros(tokens.shape, bool)
    for stop in stop_token_ids:
        stopped = stopped | (tokens == stop)
    return stopped


# ---- the compiled rollout -------------------------------------------------------------------------------------
def decode_buckets(prompt_len: int, horizon: int, cache_len: int, bucket: int) -> list[tuple[int, int]]:
    """The rollout's decode loops as (end, attend): steps ``t < end`` (t = 1 .. horizon - 1; step t feeds token
    t - 1 into slot ``prompt_len + t - 1``) attend over the first ``attend = min(cache_len, prompt_len + end)``
    slots, which hold every slot written by then. ``bucket`` 0 (or >= horizon): one loop over the whole cache."""
    if bucket <= 0 or bucket >= horizon:
        return [(horizon, cache_len)]
    ends = list(range(bucket, horizon, bucket)) + [horizon]
    return [(end, min(cache_len, prompt_len + end)) for end in ends]


def rows_first(logits: jax.Array) -> jax.Array:
    """logits [rows, vocab] pinned to whole vocabulary rows split over the batch axes of the mesh in context (no
    mesh: unchanged), so the token draw needs no collective. Where the rules in context split the vocabulary (the
    "tensor" rollout layout) the head's output is first pinned to its own vocab-split layout, so the step gathers
    the logits ([rows, vocab] float32) rather than the [vocab, hidden] head, which the partitioner otherwise picks."""
    return parallel.constrain(parallel.constrain(logits, ("batch", "vocab")), ("batch", None))


def laid_out_cache(cache: KVCache) -> KVCache:
    """The cache's keys and values pinned to rows over the batch axes and KV heads over "tensor" of the mesh in
    context (the layout the decode's attention reads; no mesh: unchanged). It is made inside the prefill as a
    zeros array, which the partitioner would otherwise lay out as it pleases."""
    pin = lambda a: parallel.constrain(a, (None, "batch", "kv_heads", None, None))
    return dataclasses.replace(cache, keys=pin(cache.keys), values=pin(cache.values))


def decode_step(model, tokens: jax.Array, cache: KVCache, attend: int | None = None) -> tuple[jax.Array, KVCache]:
    """One decode step of the rollout: tokens int32 [rows] -> (logits float32 [rows, vocab], rows first; the
    cache with the tokens' keys and values written). ``attend`` as ``decode_traced``'s."""
    logits, cache = model.decode_traced(tokens, cache, attend=attend)
    return rows_first(logits), laid_out_cache(cache)


@dataclasses.dataclass
class _Progress:
    """While-loop state. ``done`` marks rows whose stop token is already written."""
    step: jax.Array
    last: jax.Array
    done: jax.Array
    lengths: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    cache: KVCache
    seen: jax.Array | None = None  # bool [rows, V], only with a repetition penalty


jax.tree_util.register_dataclass(_Progress)


def _write(progress: _Progress, sampled: jax.Array, logprobs: jax.Array, config: SamplerConfig) -> _Progress:
    """Stores step ``progress.step``'s tokens; rows that stopped earlier get padding and mask 0."""
    live = ~progress.done
    token = jnp.where(live, sampled, config.pad_token_id)
    column = progress.step
    seen = progress.seen
    if seen is not None:
        seen = seen.at[jnp.arange(seen.shape[0]), token].set(True)  # a stopped row's padding never matters
    return dataclasses.replace(
        progress,
        seen=seen,
        step=column + 1,
        last=token,
        done=progress.done | (live & _is_stop(sampled, config.stop_token_ids)),
        lengths=progress.lengths + live.astype(jnp.int32),
        tokens=jax.lax.dynamic_update_slice_in_dim(progress.tokens, token[:, None], column, axis=1),
        logprobs=jax.lax.dynamic_update_slice_in_dim(
            progress.logprobs, jnp.where(live, logprobs, 0.0)[:, None], column, axis=1),
    )


def rollout(graphdef, state, prompt_ids, prompt_mask, pixel_values, image_grid_thw, rng,
             config: SamplerConfig, cache_len: int) -> Rollout:
    """The traceable body of :func:`generate` (the AOT report lowers it with abstract arguments)."""
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompt_ids.shape
    group, horizon = config.num_samples, config.max_new_tokens
    rows = batch * group
    _record_trace("generate", batch, prompt_len, horizon, group)
    _record_trace("prefill", prompt_ids.shape)

    logits, cache = model.prefill_traced(prompt_ids, pixel_values, image_grid_thw, prompt_mask, cache_len)
    if group > 1:
        logits, cache = jnp.repeat(logits, group, axis=0), cache.repeat(group)
    logits, cache = rows_first(logits), laid_out_cache(cache)

    progress = _Progress(
        step=jnp.zeros((), jnp.int32), last=jnp.zeros((rows,), jnp.int32), done=jnp.zeros((rows,), bool),
        lengths=jnp.zeros((rows,), jnp.int32),
        tokens=jnp.full((rows, horizon), config.pad_token_id, jnp.int32),
        logprobs=jnp.zeros((rows, horizon), jnp.float32), cache=cache,
        seen=jnp.repeat(seen_tokens(prompt_ids, prompt_mask, logits.shape[-1]), group, axis=0)
        if _uses_penalty(config) else None)
    first, first_logprobs = sample_tokens(logits, jax.random.fold_in(rng, 0), config, progress.seen)
    progress = _write(progress, first, first_logprobs, config)

    def decode_until(end: int, attend: int):
        def unfinished(p: _Progress):
            return (p.step < end) & ~jnp.all(p.done)

        def decode_one(p: _Progress) -> _Progress:
            _record_trace("decode", p.last.shape)
            step_logits, next_cache = decode_step(model, p.last, p.cache, attend=attend)
            sampled, logprobs = sample_tokens(step_logits, jax.random.fold_in(rng, p.step), config, p.seen)
            return _write(dataclasses.replace(p, cache=next_cache), sampled, logprobs, config)
        return unfinished, decode_one

    # The cache is loop state: XLA updates it in place, one buffer for the whole rollout. Each length bucket is
    # a while loop of its own whose attention reads the first ``attend`` slots, so a step costs the filled part
    # of the cache; a bucket whose loop finds every row done (or the horizon reached) runs no step.
    for end, attend in decode_buckets(prompt_len, horizon, cache.max_len, config.decode_bucket):
        progress = jax.lax.while_loop(*decode_until(end, attend), progress)
    mask = (jnp.arange(horizon)[None, :] < progress.lengths[:, None]).astype(jnp.int32)
    return Rollout(tokens=progress.tokens, logprobs=progress.logprobs, mask=mask, lengths=progress.lengths,
                   prompt_ids=jnp.repeat(prompt_ids, group, axis=0),
                   prompt_mask=jnp.repeat(prompt_mask, group, axis=0), steps=progress.step)


_compiled_rollout = jax.jit(rollout, static_argnums=(0,), static_argnames=("config", "cache_len"))


def compiled_cache_size() -> int:
    """Number of programs the rollout's jit holds (one per distinct shapes / config / model structure)."""
    return _compiled_rollout._cache_size()


def generate(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, config: SamplerConfig,
             rng: jax.Array) -> Rollout:
    """Samples ``config.num_samples`` completions for each LEFT-padded prompt [B, S].

    Images: ``pixel_values`` [N, patch_dim] with ``image_grid_thw`` [I, 3] (transformers' layout) or
    [B, N, patch_dim] with [B, I, 3] (the data pipeline's); both None for text only.
    """
    ids = jnp.asarray(prompt_ids, jnp.int32)
    mask = jnp.asarray(prompt_mask, jnp.int32)
    pixels = None if pixel_values is None else jnp.asarray(pixel_values)
    grid = None if image_grid_thw is None else jnp.asarray(image_grid_thw, jnp.int32)
    _check_prompt(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw)
    cache_len = _cache_len(config, ids.shape[1])
    graphdef, state = nnx.split(model)
    return _compiled_rollout(graphdef, state, ids, mask, pixels, grid, rng, config=config, cache_len=cache_len)


# ---- streaming (generate, the playground) ----------------------------------------------------------------------------
def _mark_seen(seen: jax.Array | None, tokens: jax.Array) -> jax.Array | None:
    return None if seen is None else seen.at[jnp.arange(tokens.shape[0]), tokens].set(True)


def _stream_prefill(graphdef, state, prompt_ids, prompt_mask, pixel_values, image_grid_thw, seen, rng, *,
                    config: SamplerConfig, cache_len: int):
    _record_trace("stream_prefill", prompt_ids.shape)
    model = nnx.merge(graphdef, state)
    logits, cache = model.prefill_traced(prompt_ids, pixel_values, image_grid_thw, prompt_mask, cache_len)
    token, _ = sample_tokens(logits, jax.random.fold_in(rng, 0), config, seen)
    return token, cache, _mark_seen(seen, token)


def _stream_decode(graphdef, state, token, cache, seen, rng, step, *, config: SamplerConfig):
    _record_trace("stream_decode", token.shape)
    model = nnx.merge(graphdef, state)
    logits, cache = model.decode_traced(token, cache)
    token, _ = sample_tokens(logits, jax.random.fold_in(rng, step), config, seen)
    return token, cache, _mark_seen(seen, token)


_jit_stream_prefill = jax.jit(_stream_prefill, static_argnums=(0,), static_argnames=("config", "cache_len"))
# The cache is donated: XLA writes the new key/value slot in place instead of copying the whole cache per token.
_jit_stream_decode = jax.jit(_stream_decode, static_argnums=(0,), static_argnames=("config",),
                             donate_argnames=("cache",))


class Streamer:
    """Token-by-token sampling of one prompt: the model is split once into (graphdef, state) at construction and
    two jitted programs (prefill + first token, one decode step + token) take the state as an argument, so a
    long-lived caller (the web playground) holds one copy of the weights and compiles once per (prompt length,
    patch bucket, SamplerConfig); their traces count as ``trace_count("stream_prefill" / "stream_decode")``."""

    def __init__(self, model, config: SamplerConfig):
        if config.num_samples != 1:
            raise ValueError(f"stream takes one prompt and num_samples=1, got num_samples={config.num_samples}")
        self.config = config
        self.model = model
        self.graphdef, self.state = nnx.split(model)

    def stream(self, prompt_ids, prompt_mask, pixel_values, image_grid_thw, rng: jax.Array) -> Iterator[int]:
        """Yields the token ids of one completion as they are sampled, ending with the stop token when one is
        sampled. prompt_ids / prompt_mask int32 [1, S] (left padded), pixel_values float32 [1, N, patch_dim] or
        [N, patch_dim] with image_grid_thw to match (or None for text)."""
        ids, mask, config = np.asarray(prompt_ids, np.int32), np.asarray(prompt_mask, np.int32), self.config
        if ids.ndim != 2 or ids.shape[0] != 1:
            raise ValueError(f"stream takes one prompt and num_samples=1, got prompt_ids of shape "
                             f"{np.shape(prompt_ids)}")
        _check_prompt(self.model, ids, mask, pixel_values, image_grid_thw)
        seen = seen_tokens(jnp.asarray(ids), jnp.asarray(mask), self.model.config.text.vocab_size) \
            if _uses_penalty(config) else None
        token, cache, seen = _jit_stream_prefill(self.graphdef, self.state, ids, mask, pixel_values, image_grid_thw,
                                                 seen, rng, config=config,
                                                 cache_len=_cache_len(config, ids.shape[1]))
        for step in range(1, config.max_new_tokens + 1):
            token_id = int(token[0])
            yield token_id
            if token_id in config.stop_token_ids or step == config.max_new_tokens:
                return
            token, cache, seen = _jit_stream_decode(self.graphdef, self.state, token, cache, seen, rng,
                                                    jnp.asarray(step, jnp.int32), config=config)


def stream(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, config: SamplerConfig,
           rng: jax.Array) -> Iterator[int]:
    """Yields the token ids of one completion of ONE prompt ([S] or [1, S]) as they are produced, ending with
    the stop token when one is sampled (:class:`Streamer` for a model that serves many prompts)."""
    ids, mask = np.asarray(prompt_ids, np.int32), np.asarray(prompt_mask, np.int32)
    if ids.ndim == 1:
        ids, mask = ids[None], mask[None]
    yield from Streamer(model, config).stream(ids, mask, pixel_values, image_grid_thw, rng)


# ---- host-side checks -----------------------------------------------------------------------------------------
def _cache_len(config: SamplerConfig, prompt_len: int) -> int:
    # The last sampled token is never fed back, so T - 1 decode slots follow the prompt.
    needed = prompt_len + config.max_new_tokens - 1
    cache_len = prompt_len + config.max_new_tokens if config.cache_len is None else config.cache_len
    if cache_len < needed:
        raise ValueError(f"SamplerConfig.cache_len={cache_len} is too short for a {prompt_len}-token prompt and "
                         f"{config.max_new_tokens} new tokens (needs at least {needed})")
    return cache_len


def _on_host(array: Any) -> bool:
    """True when the values can be read here: not a tracer, not an array spread over other hosts."""
    if isinstance(array, jax.core.Tracer):
        return False
    return not isinstance(array, jax.Array) or array.is_fully_addressable


def _check_prompt(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw) -> None:
    """Shape and padding checks; the value checks run only where the arrays are on this host."""
    ids_shape, mask_shape = np.shape(prompt_ids), np.shape(prompt_mask)
    if len(ids_shape) != 2 or ids_shape != mask_shape:
        raise ValueError(f"prompt_ids {ids_shape} and prompt_mask {mask_shape} must both be [batch, prompt_len]")
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("pixel_values and image_grid_thw must be given together (or both be None)")
    if pixel_values is not None and np.ndim(pixel_values) == 3 and np.shape(pixel_values)[0] != ids_shape[0]:
        raise ValueError(f"batched pixel_values {np.shape(pixel_values)} do not match {ids_shape[0]} prompts")
    if not all(map(_on_host, (prompt_ids, prompt_mask, pixel_values, image_grid_thw))):
        return
    mask = np.asarray(prompt_mask)
    if np.any(np.diff(mask.astype(np.int8), axis=1) < 0):
        bad = sorted(set(np.nonzero(np.diff(mask.astype(np.int8), axis=1) < 0)[0].tolist()))
        raise ValueError(f"prompts must be LEFT-padded (padding only before the first real token); rows {bad} "
                         f"of prompt_mask have padding after a real token")
    check_image_tokens(model.config, prompt_ids, image_grid_thw, pixel_values)
