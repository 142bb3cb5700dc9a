"""Reward references built on the host: answer and TYPE pairs of a chain, and their fixed-size arrays."""

import jax
import numpy as np
import pytest

from robust_r1_jax.data import references

CHAIN = ("<TYPE>lens blur(0.47), noise(0.2), noise(0.9)<TYPE_END>\n<INFLUENCE>i<INFLUENCE_END>\n"
         "<REASONING>r<REASONING_END>\n<CONCLUSION>c<CONCLUSION_END>\n<ANSWER> 2\n<ANSWER_END>")


class ByteTokenizer:
    """One token per UTF-8 byte: enough for the reference lengths."""

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))


def test_answer_and_pairs_of_a_chain():
    assert references.reference_answer(CHAIN) == "2"
    assert references.reference_answer("<TYPE>noise(0.1)<TYPE_END>") is None
    # dict semantics: a repeated name keeps its last value
    assert references.reference_pairs(CHAIN) == {"lens blur": 0.47, "noise": 0.9}
    assert references.reference_pairs("<ANSWER>1<ANSWER_END>") == {}
    with pytest.raises(ValueError):
        references.reference_pairs("<TYPE>noise(0..1)<TYPE_END>")


def test_arrays_are_bucketed_and_padded():
    chains = [CHAIN, CHAIN.replace("lens blur(0.47), ", "").replace(" 2\n", "10")]
    refs = references.prepare_references(chains, ByteTokenizer())
    assert refs.batch_size == 2 and len(jax.tree.leaves(refs)) == 6
    assert refs.answer.shape == (2, 8) and refs.names.shape == (2, 4, 16)
    assert refs.answer_len.tolist() == [1, 2] and bytes(refs.answer[1, :2]) == b"10"
    assert refs.name_len.tolist() == [[9, 5, -1, -1], [5, -1, -1, -1]]
    np.testing.assert_array_equal(refs.values[0, :2], np.float32([0.47, 0.9]))
    assert refs.token_len.tolist() == [len(c.encode()) for c in chains]
    fixed = references.prepare_references(chains, ByteTokenizer(), answer_bytes=3, max_names=2, name_bytes=9)
    assert fixed.answer.shape == (2, 3) and fixed.names.shape == (2, 2, 9)
    with pytest.raises(ValueError, match="name_bytes=8 is too small: the inputs need 9"):
        references.prepare_references(chains, ByteTokenizer(), name_bytes=8)


def test_bucket_sizes():
    assert [references.bucket_size(n, 8) for n in (0, 1, 8, 9, 100)] == [8, 8, 8, 16, 128]
    assert references.fixed_size(None, 5, 4, "x") == 8 and references.fixed_size(5, 5, 4, "x") == 5
