"""Vision special tokens inside a completion are text: the learner scores them exactly as the sampler decoded them
(no image slot, no position jump), and the sampler does not emit them unless told to."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unit_scale_model import unit_scale_model

from robust_r1_jax.model import config as model_config
from robust_r1_jax.model import generate as gen
from robust_r1_jax.rl import grpo

GROUP, NEW = 2, 7
GRIDS = [(1, 4, 4), (1, 4, 8)]  # 4 and 8 image tokens
PATCH_BUCKET = 32


@pytest.fixture(scope="module")
def cfg():
    tiny = model_config.tiny()
    return tiny.replace(text=dataclasses.replace(tiny.text, tie_word_embeddings=False),
                        vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)))


@pytest.fixture(scope="module")
def model(cfg):
    model, draw = unit_scale_model(cfg, 3)
    head = model.language.lm_head.kernel
    head.set_value(draw(head.shape, 3 / math.sqrt(cfg.text.hidden_size)))
    return model


def _prompts(cfg, seed=0):
    """Two left-padded prompts with one image each, batched layout (ids, mask, pixels [B, N, D], grid [B, 1, 3])."""
    rng = np.random.default_rng(seed)
    rows = []
    for (t, h, w), before in zip(GRIDS, (3, 1)):
        rows.append(list(rng.integers(0, cfg.bos_token_id - 8, before)) + [cfg.vision_start_token_id]
                    + [cfg.image_token_id] * (t * h * w // cfg.vision.merge_unit) + [cfg.vision_end_token_id]
                    + list(rng.integers(0, cfg.bos_token_id - 8, 2)))
    width = max(map(len, rows))
    ids = np.array([[cfg.bos_token_id] * (width - len(r)) + r for r in rows], np.int32)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int32)
    pixels = np.zeros((len(rows), PATCH_BUCKET, cfg.vision.patch_dim), np.float32)
    for b, (t, h, w) in enumerate(GRIDS):
        pixels[b, :t * h * w] = rng.normal(size=(t * h * w, cfg.vision.patch_dim))
    return ids, mask, pixels, np.array(GRIDS, np.int32)[:, None, :]


def _forced_sampler_logprobs(model, prompts, tokens, suppress=()):
    """What the sampler computes for these tokens: prefill once, then one cached decode step per token, each
    fed back as text; log_softmax of the (suppressed) logits at the forced token. float32 [B*G, T]."""
    ids, mask, pixels, grid = (np.repeat(a, GROUP, axis=0) for a in prompts)
    logits, cache = model.prefill(ids, mask, pixels, grid, max_len=ids.shape[1] + tokens.shape[1])
    out = []
    for t in range(tokens.shape[1]):
        lp = jax.nn.log_softmax(gen.suppress_tokens(logits, suppress), axis=-1)
        out.append(np.asarray(lp)[np.arange(len(tokens)), tokens[:, t]])
        if t + 1 < tokens.shape[1]:
            logits, cache = model.decode(tokens[:, t], cache)
    return np.stack(out, axis=1)


def _learner_logprobs(model, prompts, tokens, suppress=()):
    ids, mask, pixels, grid = prompts
    batch = dict(prompt_ids=jnp.asarray(np.repeat(ids, GROUP, axis=0)),
                 prompt_mask=jnp.asarray(np.repeat(mask, GROUP, axis=0)), tokens=jnp.asarray(tokens),
                 mask=jnp.ones(tokens.shape, jnp.int32), pixel_values=jnp.asarray(pixels),
                 image_grid_thw=jnp.asarray(grid))
    gcfg = grpo.GRPOConfig(num_samples=GROUP, temperature=1.0, suppress_token_ids=tuple(suppress))
    return np.asarray(jax.jit(lambda b: grpo.completion_logprobs(model, b, GROUP, gcfg))(batch))


@pytest.mark.parametrize("which", ["vision_start", "vision_end", "image", "video"])
def test_learner_and_sampler_agree_on_a_completion_holding_a_vision_token(model, cfg, which):
    """Before the fix an <|image_pad|> in row 0's completion took an image feature, moved every later position
    and shifted the image features of all the rows after it: log-probs up to ~1 nat off, silently."""
    vision_id = getattr(cfg, f"{which}_token_id")
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg.bos_token_id - 8, (len(GRIDS) * GROUP, NEW)).astype(np.int32)
    tokens[0, 2] = vision_id                   # the first row: one, mid-completion
    tokens[1, [0, 3, 4]] = vision_id           # its group's other sample: three, the first token included
    tokens[2, NEW - 1] = vision_id             # the next prompt's first sample: as the last token
    prompts = _prompts(cfg)
    want = _forced_sampler_logprobs(model, prompts, tokens)
    got = _learner_logprobs(model, prompts, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_suppressed_tokens_are_never_sampled_even_as_the_top_choice(cfg):
    """The vision tokens hold the largest logits of every row: greedy, tempered and top-k / top-p sampling all
    pick another token, and the log-probs are those of the distribution without them."""
    vision = gen.vision_token_ids(cfg)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, cfg.text.vocab_size)).astype(np.float32)
    logits[:, list(vision)] = 30.0
    rest = np.delete(np.arange(cfg.text.vocab_size), vision)
    for kw in (dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9)):
        config = gen.SamplerConfig(max_new_tokens=1, suppress_token_ids=vision, **kw)
        tokens, logprobs = gen.sample_tokens(jnp.asarray(logits), jax.random.key(1), config)
        tokens = np.asarray(tokens)
        assert not np.isin(tokens, vision).any(), kw
        scaled = logits[:, rest] / (kw["temperature"] or 1.0)
        scaled = scaled.astype(np.float64)
        norm = scaled.max(1) + np.log(np.exp(scaled - scaled.max(1, keepdims=True)).sum(1))
        want = logits[np.arange(64), tokens] / (kw["temperature"] or 1.0) - norm
        np.testing.assert_allclose(np.asarray(logprobs), want, atol=1e-5)
        free, _ = gen.sample_tokens(jnp.asarray(logits), jax.random.key(1), dataclasses.replace(
            config, suppress_token_ids=()))
        assert np.isin(np.asarray(free), vision).all(), kw   # without the setting they win


def test_a_suppressed_rollout_is_scored_by_the_learner_with_the_same_distribution(model, cfg):
    prompts = _prompts(cfg)
    vision = gen.vision_token_ids(cfg)
    config = gen.SamplerConfig(max_new_tokens=NEW, num_samples=GROUP, pad_token_id=cfg.bos_token_id,
                               temperature=1.0, suppress_token_ids=vision)
    rollout = gen.generate(model, *prompts, config, jax.random.key(0))
    tokens = np.asarray(rollout.tokens)
    assert not np.isin(tokens, vision).any()
    got = _learner_logprobs(model, prompts, tokens, suppress=vision)
    mask = np.asarray(rollout.mask) > 0
    np.testing.assert_allclose(got[mask], np.asarray(rollout.logprobs)[mask], atol=1e-5, rtol=0)
    unmasked = _learner_logprobs(model, prompts, tokens)
    assert np.all(unmasked[mask] < got[mask])   # the full softmax gives the vision tokens some mass


def test_suppression_is_the_sampling_default_and_reaches_every_sampler(cfg):
    from robust_r1_jax.model import sampling
    assert sampling.default_config().suppress_vision_tokens is True
    assert sampling.unset_config().suppress_vision_tokens is True
    config = grpo.default_config()
    assert grpo.sampler_config(config, grpo.grpo_config(config), cfg).suppress_token_ids == tuple(
        sorted(gen.vision_token_ids(cfg)))
    assert grpo.grpo_config(config, cfg).suppress_token_ids == gen.vision_token_ids(cfg)
    config.sampling.suppress_vision_tokens = False
    assert grpo.sampler_config(config, grpo.grpo_config(config), cfg).suppress_token_ids == ()
    assert grpo.grpo_config(config, cfg).suppress_token_ids == ()
