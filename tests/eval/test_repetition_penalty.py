"""The sampler's repetition penalty (a model folder's generation_config.json sets it for ``generate``) against
transformers' RepetitionPenaltyLogitsProcessor: the function itself, and greedy decoding of a tiny random model
step by step against the full forward (left padding does not count as seen), in the compiled rollout and the
streamed path."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from unit_scale_model import unit_scale_model

from robust_r1_jax.model import config as model_config
from robust_r1_jax.model import generate as gen
from robust_r1_jax.model.generate import SamplerConfig

NEW_TOKENS = 8
PENALTY = 3.0


def test_the_penalty_equals_transformers_processor():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32) * 4
    ids = rng.integers(0, 50, size=(3, 12))
    seen = np.zeros((3, 50), bool)
    seen[np.arange(3)[:, None], ids] = True
    want = RepetitionPenaltyLogitsProcessor(PENALTY)(torch.tensor(ids), torch.tensor(logits)).numpy()
    got = np.asarray(gen.apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), PENALTY))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not np.allclose(got, logits)
    mask = np.ones((3, 12), np.int32)
    mask[0, :5] = 0  # left padding: those ids are not seen unless they recur later
    expected = np.zeros((3, 50), bool)
    for row in range(3):
        expected[row, ids[row][mask[row] == 1]] = True
    np.testing.assert_array_equal(np.asarray(gen.seen_tokens(jnp.asarray(ids), jnp.asarray(mask), 50)), expected)
    with pytest.raises(ValueError, match="repetition_penalty must be > 0"):
        SamplerConfig(max_new_tokens=4, repetition_penalty=0.0)


@pytest.fixture(scope="module")
def model_and_config():
    tiny = model_config.tiny()
    cfg = tiny.replace(text=dataclasses.replace(tiny.text, tie_word_embeddings=False),
                       vision=dataclasses.replace(tiny.vision, depth=1, fullatt_block_indexes=(0,)))
    model, draw = unit_scale_model(cfg, 1)
    # An output head close to the input embeddings: the residual stream carries the last token, so greedy
    # decoding without a penalty repeats what it has seen, and the penalty has something to change.
    embed = np.asarray(model.language.embed[...])
    head = model.language.lm_head.kernel
    head.set_value(jnp.asarray(2.0 * embed.T, jnp.float32) + draw(head.shape, 0.1))
    return model, cfg


def prompts(cfg):
    rng = np.random.default_rng(2)
    rows = [list(rng.integers(0, cfg.bos_token_id, 7)), list(rng.integers(0, cfg.bos_token_id, 4))]
    ids = np.array([[cfg.bos_token_id] * (7 - len(r)) + r for r in rows], np.int32)
    mask = np.array([[0] * (7 - len(r)) + [1] * len(r) for r in rows], np.int32)
    return ids, mask


def test_greedy_with_a_penalty_follows_transformers_step_by_step(model_and_config):
    model, cfg = model_and_config
    ids, mask = prompts(cfg)
    config = SamplerConfig(max_new_tokens=NEW_TOKENS, temperature=0.0, pad_token_id=cfg.bos_token_id,
                           stop_token_ids=(), repetition_penalty=PENALTY)
    tokens = np.asarray(gen.generate(model, ids, mask, None, None, config, jax.random.key(0)).tokens)
    full = np.asarray(model(np.concatenate([ids, tokens], 1),
                            attention_mask=np.concatenate([mask, np.ones_like(tokens)], 1)))
    next_logits = full[:, ids.shape[1] - 1:-1]
    processor = RepetitionPenaltyLogitsProcessor(PENALTY)
    for row in range(len(ids)):
        real = list(ids[row][mask[row] == 1])
        for step in range(NEW_TOKENS):
            history = torch.tensor([real + list(tokens[row, :step])])
            scores = processor(history, torch.tensor(next_logits[row:row + 1, step]))
            assert int(scores.argmax()) == tokens[row, step], (row, step)
    # Without the penalty this model would have repeated a token at some step: the penalty was exercised.
    assert np.any(next_logits.argmax(-1) != tokens)
    # The streamed path (the single-image generate) gives the same tokens for the left-padded row.
    real = ids[1][mask[1] == 1]
    streamed = list(gen.stream(model, real, np.ones_like(real), None, None, config, jax.random.key(0)))
    assert streamed == tokens[1].tolist()
