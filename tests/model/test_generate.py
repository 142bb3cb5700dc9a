"""Generation (the rollout sampler) against the model's full forward: greedy parity at every step with images
and left padding, per-row stops, one prefill per prompt for G samples, reproducible sampling, no recompilation."""
import collections
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unit_scale_model import unit_scale_model

from robust_r1_jax.model import config as model_config
from robust_r1_jax.model import generate as gen
from robust_r1_jax.model.generate import SamplerConfig

NEW_TOKENS = 6
GRIDS = [(1, 4, 4), (1, 4, 8)]  # 4 and 8 image tokens
TEXT = [(3, 4), (2, 3)]  # text tokens before / after each row's image
PATCH_BUCKET = 32


def _random_model(cfg, seed=0):
    """Unit-scale weights (drawn with NumPy, which skips the slow per-shape init programs) and a sharper
    untied lm head: the logits are peaked (top probability about 0.25 against 1/512 for uniform), greedy
    decoding does not just repeat a token, and sampling still varies."""
    model, draw = unit_scale_model(cfg, seed)
    head = model.language.lm_head.kernel
    head.set_value(draw(head.shape, 3 / math.sqrt(cfg.text.hidden_size)))
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "scanned"])
def cfg(request):
    """Both layer layouts: unrolled, and stacked under lax.scan (the KV cache as the scan's carry)."""
    tiny = model_config.tiny(scan_layers=request.param)
    # one vision block keeps the compile times short; the decoder keeps its two layers
    return tiny.replace(text=dataclasses.replace(tiny.text, tie_word_embeddings=False),
                        vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)))


@pytest.fixture(scope="module")
def model(cfg):
    return _random_model(cfg)


def _prompts(cfg, seed, grids=GRIDS, text=TEXT, layout="batched"):
    """Left-padded prompts with one image each: (prompt_ids, prompt_mask, pixel_values, image_grid_thw)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (t, h, w), (before, after) in zip(grids, text):
        n_image = t * h * w // cfg.vision.merge_unit
        rows.append(list(rng.integers(0, cfg.bos_token_id, before)) + [cfg.vision_start_token_id]
                    + [cfg.image_token_id] * n_image + [cfg.vision_end_token_id]
                    + list(rng.integers(0, cfg.bos_token_id, after)))
    width = max(map(len, rows))
    ids = np.array([[cfg.bos_token_id] * (width - len(r)) + r for r in rows], np.int32)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int32)
    patches = [rng.normal(size=(t * h * w, cfg.vision.patch_dim)).astype(np.float32) for t, h, w in grids]
    if layout == "flat":
        return ids, mask, np.concatenate(patches), np.array(grids, np.int32)
    pixels = np.zeros((len(rows), PATCH_BUCKET, cfg.vision.patch_dim), np.float32)
    for b, p in enumerate(patches):
        pixels[b, :len(p)] = p
    return ids, mask, pixels, np.array(grids, np.int32)[:, None, :]


def _full_logits(model, prompts, completions, group=1):
    """The full forward on prompt + completion (every completion token treated as real)."""
    ids, mask, pixels, grid = prompts
    ids, mask = np.repeat(ids, group, axis=0), np.repeat(mask, group, axis=0)
    if group > 1:
        if pixels.ndim == 3:
            pixels, grid = np.repeat(pixels, group, axis=0), np.repeat(grid, group, axis=0)
        else:
            per_image = [int(np.prod(g)) for g in grid]
            chunks = np.split(pixels, np.cumsum(per_image)[:-1])
            pixels = np.concatenate([c for c in chunks for _ in range(group)])
            grid = np.repeat(grid, group, axis=0)
    completions = np.asarray(completions)
    full_ids = np.concatenate([ids, completions], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(completions)], axis=1)
    logits = np.asarray(model(full_ids, pixel_values=pixels, image_grid_thw=grid, attention_mask=full_mask))
    # logits[:, S - 1 + t] predicts completion token t
    return logits[:, ids.shape[1] - 1:-1]


def _greedy(cfg, **kw):
    return SamplerConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, pad_token_id=cfg.bos_token_id, **kw)


@pytest.fixture(scope="module")
def greedy_rollout(model, cfg):
    prompts = _prompts(cfg, seed=0)
    return prompts, gen.generate(model, *prompts, _greedy(cfg), jax.random.key(0))


def test_greedy_equals_argmax_of_the_full_forward_at_every_step(model, greedy_rollout):
    prompts, rollout = greedy_rollout
    tokens = np.asarray(rollout.tokens)
    assert tokens.shape == (2, NEW_TOKENS) and tokens.dtype == np.int32
    reference = _full_logits(model, prompts, tokens)
    np.testing.assert_array_equal(tokens, reference.argmax(-1))
    assert len(set(tokens.ravel().tolist())) > NEW_TOKENS  # not a repeated token
    np.testing.assert_array_equal(np.asarray(rollout.mask), np.ones((2, NEW_TOKENS)))
    np.testing.assert_array_equal(np.asarray(rollout.lengths), [NEW_TOKENS] * 2)
    assert int(rollout.steps) == NEW_TOKENS
    # greedy log-probs are the model's own log_softmax at the chosen tokens
    want = np.take_along_axis(jax.nn.log_softmax(reference), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(rollout.logprobs), want, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(rollout.prompt_ids), prompts[0])


def test_group_samples_share_one_prefill(model, cfg, greedy_rollout):
    _, single = greedy_rollout
    prompts = _prompts(cfg, seed=0, layout="flat")  # same prompts, transformers' flat image layout
    names = ("generate", "prefill", "decode")
    before = [gen.trace_count(name) for name in names]
    rollout = gen.generate(model, *prompts, _greedy(cfg, num_samples=3), jax.random.key(0))
    assert [gen.trace_count(name) - count for name, count in zip(names, before)] == [1, 1, 1]
    new_traces = dict(gen.trace_log()[-3:])  # exactly three traces since `before`: the last three entries
    assert [name for name, _ in gen.trace_log()[-3:]] == list(names)
    assert new_traces["generate"] == (2, prompts[0].shape[1], NEW_TOKENS, 3)
    assert new_traces["prefill"] == ((2, prompts[0].shape[1]),)  # batch B, not B*G
    assert new_traces["decode"] == ((6,),)
    # each group equals the single-sample rollout, which matches the full forward step by step
    np.testing.assert_array_equal(np.asarray(rollout.tokens), np.repeat(np.asarray(single.tokens), 3, axis=0))
    np.testing.assert_allclose(np.asarray(rollout.logprobs), np.repeat(np.asarray(single.logprobs), 3, axis=0),
                               atol=1e-5)
    np.testing.assert_array_equal(np.asarray(rollout.prompt_ids), np.repeat(prompts[0], 3, axis=0))
    np.testing.assert_array_equal(np.asarray(rollout.prompt_mask), np.repeat(prompts[1], 3, axis=0))


def _first_stops(tokens, stop_ids):
    hits = np.isin(tokens, list(stop_ids))
    return np.where(hits.any(1), hits.argmax(1), tokens.shape[1] - 1)


def test_stopped_rows_stay_stopped_and_the_loop_exits_early(model, cfg, greedy_rollout):
    prompts, free = greedy_rollout
    free_tokens = np.asarray(free.tokens)
    # stop row 0 at its first token and row 1 at a later one; pick ids that do not stop row 1 sooner
    stop_ids = None
    for k in range(1, NEW_TOKENS - 1):
        candidate = (int(free_tokens[0, 0]), int(free_tokens[1, k]))
        if list(_first_stops(free_tokens, candidate)) == [0, k]:
            stop_ids = candidate
            break
    assert stop_ids is not None, f"no usable stop ids in {free_tokens}"
    stops = _first_stops(free_tokens, stop_ids)
    rollout = gen.generate(model, *prompts, _greedy(cfg, stop_token_ids=stop_ids), jax.random.key(0))
    tokens, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)
    positions = np.arange(NEW_TOKENS)[None]
    live = positions <= stops[:, None]
    np.testing.assert_array_equal(mask, live.astype(np.int32))
    np.testing.assert_array_equal(tokens[live], free_tokens[live])
    assert np.all(tokens[~live] == cfg.bos_token_id)  # padding after the stop token
    assert np.all(np.asarray(rollout.logprobs)[~live] == 0)
    np.testing.assert_array_equal(np.asarray(rollout.lengths), stops + 1)
    assert int(rollout.steps) == stops.max() + 1 < NEW_TOKENS  # left the loop before T


def _sampling(cfg, **kw):
    return SamplerConfig(**{**dict(max_new_tokens=NEW_TOKENS, temperature=1.0, num_samples=2,
                                   pad_token_id=cfg.bos_token_id), **kw})


def test_sampling_is_reproducible_and_its_logprobs_match_the_full_forward(model, cfg):
    prompts = _prompts(cfg, seed=1)
    config = _sampling(cfg)
    first = gen.generate(model, *prompts, config, jax.random.key(7))
    again = gen.generate(model, *prompts, config, jax.random.key(7))
    other = gen.generate(model, *prompts, config, jax.random.key(8))
    tokens, logprobs = np.asarray(first.tokens), np.asarray(first.logprobs)
    np.testing.assert_array_equal(tokens, np.asarray(again.tokens))
    np.testing.assert_array_equal(logprobs, np.asarray(again.logprobs))
    assert np.any(tokens != np.asarray(other.tokens))
    assert np.any(tokens[0] != tokens[1]) and np.any(tokens[2] != tokens[3])  # independent samples per group
    for sample in range(2):  # rows of one sample per prompt: the full forward's shapes of the greedy test
        rows = tokens[sample::2]
        reference = _full_logits(model, prompts, rows)
        assert np.any(rows != reference.argmax(-1))  # really sampled, not greedy
        want = np.take_along_axis(jax.nn.log_softmax(reference), rows[..., None], -1)[..., 0]
        np.testing.assert_allclose(logprobs[sample::2], want, atol=1e-4)


def test_no_recompilation_across_rl_steps(model, cfg):
    config = _sampling(cfg)
    steps = [_prompts(cfg, seed=10), _prompts(cfg, seed=11, grids=GRIDS[::-1], text=[(1, 4), (5, 3)]),
             _prompts(cfg, seed=12, text=[(2, 2), (4, 1)])]
    assert len({p[0].shape for p in steps}) == 1 and len({p[2].shape for p in steps}) == 1
    outputs, counts, sizes = [], [], []
    for i, prompts in enumerate(steps):
        outputs.append(np.asarray(gen.generate(model, *prompts, config, jax.random.key(i)).tokens))
        counts.append(gen.trace_count("generate"))
        sizes.append(gen.compiled_cache_size())
    assert counts[0] >= 1 and sizes[0] >= 1
    assert counts[0] == counts[1] == counts[2] and sizes[0] == sizes[1] == sizes[2]
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])


def test_stream_yields_the_greedy_tokens_and_stops_at_a_stop_token(model, cfg, greedy_rollout):
    prompts, greedy = greedy_rollout
    ids, mask, _, _ = prompts
    flat = _prompts(cfg, seed=0, layout="flat")
    row = 1  # with its own image only: the patches of GRIDS[0] come first in the flat layout
    pixels, grid = flat[2][int(np.prod(GRIDS[0])):], flat[3][row:row + 1]
    run = lambda config, seed=0: list(gen.stream(model, ids[row], mask[row], pixels, grid, config,
                                                     jax.random.key(seed)))
    want = np.asarray(greedy.tokens)[row].tolist()
    assert run(_greedy(cfg)) == want
    # top-k = 1 is greedy whatever the temperature and the rng
    top1 = SamplerConfig(max_new_tokens=NEW_TOKENS, temperature=0.7, top_k=1, pad_token_id=cfg.bos_token_id)
    assert run(top1, seed=3) == want
    stop_at = next(k for k in range(1, NEW_TOKENS) if want[k] not in want[:k])
    assert run(_greedy(cfg, stop_token_ids=(want[stop_at],))) == want[:stop_at + 1]


@pytest.mark.slow  # another compilation (batch 1): about 10 s
def test_stream_draws_the_same_samples_as_generate(model, cfg):
    ids, mask, pixels, grid = _prompts(cfg, seed=4, layout="flat")
    row = 0  # its image's patches come first in the flat layout
    pixels, grid = pixels[:int(np.prod(GRIDS[0]))], grid[:1]
    config = _sampling(cfg, num_samples=1)
    streamed = list(gen.stream(model, ids[row], mask[row], pixels, grid, config, jax.random.key(5)))
    rollout = gen.generate(model, ids[row:row + 1], mask[row:row + 1], pixels, grid, config,
                               jax.random.key(5))
    assert streamed == np.asarray(rollout.tokens)[0].tolist()
    assert streamed != list(gen.stream(model, ids[row], mask[row], pixels, grid, config, jax.random.key(6)))


# ---- token selection on small hand-made distributions ----------------------------------------------------------
def test_trace_log_keeps_the_recent_entries_and_exact_counts(monkeypatch):
    assert gen._RECENT_TRACES.maxlen == gen.TRACE_LOG_LENGTH  # the real log is bounded too
    monkeypatch.setattr(gen, "_RECENT_TRACES", collections.deque(maxlen=4))
    monkeypatch.setattr(gen, "_TRACE_COUNTS", collections.Counter())
    for step in range(10):
        gen._record_trace("decode", (step,))
    gen._record_trace("generate", 1, 2, 3, 4)
    assert gen.trace_log() == (("decode", ((7,),)), ("decode", ((8,),)), ("decode", ((9,),)),
                               ("generate", (1, 2, 3, 4)))
    assert gen.trace_count("decode") == 10 and gen.trace_count("generate") == 1 and gen.trace_count("prefill") == 0


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))
    kept = lambda x: np.isfinite(np.asarray(x)).astype(int).tolist()
    assert kept(gen.filter_top_k(logits, 2)) == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert kept(gen.filter_top_p(logits, 0.75)) == [[1, 1, 0, 0], [0, 0, 1, 1]]
    assert kept(gen.filter_top_p(logits, 0.85)) == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert kept(gen.filter_top_p(logits, 0.01)) == [[1, 0, 0, 0], [0, 0, 0, 1]]
    np.testing.assert_array_equal(np.asarray(gen.filter_top_p(logits, 1.0)), np.asarray(logits))


def _sorted_top_k(x: np.ndarray, k: int) -> np.ndarray:
    kth = np.sort(x, axis=-1)[:, ::-1][:, k - 1:k]
    return np.where(x < kth, -np.inf, x)


def _sorted_top_p(x: np.ndarray, p: float) -> np.ndarray:
    ordered = np.sort(x, axis=-1)[:, ::-1]
    probs = np.asarray(jax.nn.softmax(jnp.asarray(ordered), axis=-1))
    kept = np.maximum((np.cumsum(probs, axis=-1) - probs < p).sum(axis=-1, keepdims=True), 1)
    return np.where(x < np.take_along_axis(ordered, kept - 1, axis=-1), -np.inf, x)


def test_sort_free_filters_equal_the_sorted_definitions():
    """The bit-search filters against sorting, on a fixed vocabulary with ties, -inf, -0.0 and huge ranges."""
    rng = np.random.default_rng(0)
    top_k = jax.jit(gen.filter_top_k, static_argnums=1)
    top_p = jax.jit(gen.filter_top_p, static_argnums=1)
    for trial in range(60):
        x = (rng.normal(size=(6, 97)) * rng.uniform(0.05, 30)).astype(np.float32)
        if trial % 3 == 0:
            x = np.round(x)  # ties, and -0.0 next to 0.0
        if trial % 4 == 0:
            x[:, rng.integers(0, 97, size=5)] = -np.inf
        k, p = int(rng.integers(1, 97)), float(rng.choice([0.01, 0.3, 0.5, 0.9, 0.95, 0.999]))
        np.testing.assert_array_equal(np.asarray(top_k(jnp.asarray(x), k)), _sorted_top_k(x, k))
        np.testing.assert_array_equal(np.asarray(top_p(jnp.asarray(x), p)), _sorted_top_p(x, p))


def test_sampled_frequencies_follow_the_filtered_distribution():
    probs = np.array([0.4, 0.3, 0.2, 0.1])
    logits = jnp.log(jnp.asarray(np.tile(probs, (4000, 1)), jnp.float32))
    draw = lambda **kw: np.asarray(gen.sample_tokens(logits, jax.random.key(0), SamplerConfig(1, **kw))[0])
    freq = np.bincount(draw(), minlength=4) / 4000
    np.testing.assert_allclose(freq, probs, atol=0.03)
    freq = np.bincount(draw(top_k=2), minlength=4) / 4000
    np.testing.assert_allclose(freq, [4 / 7, 3 / 7, 0, 0], atol=0.03)
    freq = np.bincount(draw(top_p=0.8), minlength=4) / 4000  # 0.4 + 0.3 < 0.8, so three tokens stay
    np.testing.assert_allclose(freq, [4 / 9, 3 / 9, 2 / 9, 0], atol=0.03)
    # temperature 2 flattens: probabilities proportional to sqrt(p); log-probs are of that distribution
    tokens, logprobs = gen.sample_tokens(logits, jax.random.key(1), SamplerConfig(1, temperature=2.0))
    flat = np.sqrt(probs) / np.sqrt(probs).sum()
    np.testing.assert_allclose(np.bincount(np.asarray(tokens), minlength=4) / 4000, flat, atol=0.03)
    np.testing.assert_allclose(np.asarray(logprobs), np.log(flat)[np.asarray(tokens)], atol=1e-5)


def test_bad_configs_and_prompts_are_clear_errors(model, cfg):
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplerConfig(4, top_p=0.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        SamplerConfig(4, temperature=-1.0)
    ids, mask, pixels, grid = _prompts(cfg, seed=0)
    with pytest.raises(ValueError, match="cache_len=8 is too short"):
        gen.generate(model, ids, mask, pixels, grid, _greedy(cfg, cache_len=8), jax.random.key(0))
    with pytest.raises(ValueError, match=r"LEFT-padded.*rows \[0\]"):
        gen.generate(model, ids, mask[:, ::-1], pixels, grid, _greedy(cfg), jax.random.key(0))
    smaller = grid.copy()
    smaller[1, 0] = GRIDS[0]
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        gen.generate(model, ids, mask, pixels, smaller, _greedy(cfg), jax.random.key(0))
    with pytest.raises(ValueError, match="one prompt and num_samples=1"):
        next(gen.stream(model, ids, mask, pixels, grid, _greedy(cfg), jax.random.key(0)))


# ---- length buckets: the decode reads only the filled part of the cache ------------------------------------------
def test_decode_buckets_cover_every_step_and_every_written_slot():
    assert gen.decode_buckets(10, 6, 16, 0) == [(6, 16)]
    assert gen.decode_buckets(10, 6, 16, 6) == [(6, 16)]
    buckets = gen.decode_buckets(10, 7, 17, 3)
    assert buckets == [(3, 13), (6, 16), (7, 17)]
    for t in range(1, 7):   # step t writes slot 10 + t - 1 and must attend over it
        end, attend = next(b for b in buckets if t < b[0])
        assert 10 + t - 1 < attend <= 17


def test_decode_over_the_filled_slots_equals_decode_over_the_whole_cache(model, cfg):
    """The cache read in a bucket (``attend`` < max_len) gives today's logits: the whole-cache decode, float32,
    within 1e-5 of max |logit|; and the prefill's cache is the same either way."""
    ids, mask, pixels, grid = _prompts(cfg, seed=3)
    logits, cache = model.prefill(ids, mask, pixels, grid, max_len=ids.shape[1] + 8)
    token = jnp.argmax(logits, -1).astype(jnp.int32)
    whole, whole_cache = model.decode_traced(token, cache)
    part, part_cache = model.decode_traced(token, cache, attend=ids.shape[1] + 1)
    scale = max(1.0, float(jnp.max(jnp.abs(whole))))
    np.testing.assert_allclose(np.asarray(part), np.asarray(whole), rtol=0, atol=1e-5 * scale)
    np.testing.assert_array_equal(np.asarray(part_cache.keys), np.asarray(whole_cache.keys))
    with pytest.raises(ValueError, match="attend=0"):
        model.decode_traced(token, cache, attend=0)


def test_bucketed_rollouts_equal_the_whole_cache_rollout(model, cfg, greedy_rollout):
    """Buckets of 2 new tokens (three loops over 6 tokens): greedy token-identical to the one whole-cache loop,
    log-probs within 1e-5 relative; sampled rollouts draw the same tokens."""
    prompts, _ = greedy_rollout
    whole = gen.generate(model, *prompts, _greedy(cfg, decode_bucket=0, num_samples=2), jax.random.key(0))
    bucketed = gen.generate(model, *prompts, _greedy(cfg, decode_bucket=2, num_samples=2), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(bucketed.tokens), np.asarray(whole.tokens))
    np.testing.assert_allclose(np.asarray(bucketed.logprobs), np.asarray(whole.logprobs), rtol=1e-5, atol=1e-6)
    assert int(bucketed.steps) == int(whole.steps) == NEW_TOKENS
    sampled = [gen.generate(model, *prompts, dataclasses.replace(_sampling(cfg), decode_bucket=b),
                            jax.random.key(5)) for b in (0, 2)]
    np.testing.assert_array_equal(np.asarray(sampled[0].tokens), np.asarray(sampled[1].tokens))


def test_a_bucketed_rollout_stops_in_the_bucket_where_every_row_is_done(model, cfg, greedy_rollout):
    prompts, single = greedy_rollout
    stop = int(np.asarray(single.tokens)[0, 2])   # row 0 stops at its third token
    config = _greedy(cfg, decode_bucket=2, stop_token_ids=(stop,))
    rollout = gen.generate(model, *prompts, config, jax.random.key(0))
    reference = gen.generate(model, *prompts, dataclasses.replace(config, decode_bucket=0), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(rollout.tokens), np.asarray(reference.tokens))
    np.testing.assert_array_equal(np.asarray(rollout.lengths), np.asarray(reference.lengths))
    assert int(rollout.steps) == int(reference.steps)


def test_cached_attention_reads_bfloat16_and_accumulates_in_float32():
    from robust_r1_jax.model import layers
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in ((2, 1, 4, 8), (2, 2, 5, 8), (2, 2, 5, 8)))
    mask = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], bool)[:, None, None, :]
    length_major = lambda a: np.swapaxes(a, 1, 2)   # the cache is heads-major, attention() takes [B, K, KV, D]
    exact = layers.attention(q, length_major(k), length_major(v), mask, implementation="xla")
    np.testing.assert_allclose(np.asarray(layers.cached_attention(q, k, v, mask)), np.asarray(exact),
                               rtol=1e-6, atol=1e-6)
    bf = lambda a: jnp.asarray(a, jnp.bfloat16)
    low = layers.cached_attention(bf(q), bf(k), bf(v), mask)   # on this CPU: widened first (XLA:CPU)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), np.asarray(exact), atol=3e-2)
    # as traced for TPU (the aot mode's "splash" models): bf16 operands, float32 accumulation, no f32 cache copy
    tpu = lambda *a: layers.cached_attention(*a, implementation="splash")
    jaxpr = str(jax.make_jaxpr(tpu)(bf(q), bf(k), bf(v), mask))
    assert "preferred_element_type=float32" in jaxpr
    assert "f32[2,2,5,8]" not in jaxpr
    assert "f32[2,2,5,8]" in str(jax.make_jaxpr(layers.cached_attention)(bf(q), bf(k), bf(v), mask))
