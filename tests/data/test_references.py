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


def test_one_chain_gives_one_row_of_the_batch_arrays():
    chains = [CHAIN, CHAIN.replace("lens blur(0.47), ", "").replace(" 2\n", "10")]
    sizes = dict(answer_bytes=16, max_names=16, name_bytes=32)
    batch = references.prepare_references(chains, ByteTokenizer(), **sizes)
    for i, chain in enumerate(chains):
        row = references.chain_references(chain, ByteTokenizer(), **sizes)
        for name, value in references.as_row(row).items():
            expected = getattr(batch, name.removeprefix("reference_"))[i]
            assert value.dtype == expected.dtype and value.shape == expected.shape, name
            np.testing.assert_array_equal(value, expected, err_msg=name)
    rows = [references.as_row(references.chain_references(c, ByteTokenizer(), **sizes)) for c in chains]
    stacked = references.from_batch({k: np.stack([r[k] for r in rows]) for k in rows[0]})
    jax.tree.map(np.testing.assert_array_equal, stacked, batch)


def test_a_chain_that_does_not_fit_names_where_it_came_from():
    sizes = dict(answer_bytes=16, max_names=16, name_bytes=32)
    with pytest.raises(ValueError, match="record 7: max_names=1 is too small: its chain needs 2"):
        references.chain_references(CHAIN, ByteTokenizer(), **{**sizes, "max_names": 1}, where="record 7")
    with pytest.raises(ValueError, match="record 7: name_bytes=8 is too small: its chain needs 9"):
        references.chain_references(CHAIN, ByteTokenizer(), **{**sizes, "name_bytes": 8}, where="record 7")
    with pytest.raises(ValueError, match="record 7: answer_bytes=0 is too small"):
        references.chain_references(CHAIN, ByteTokenizer(), **{**sizes, "answer_bytes": 0}, where="record 7")
    with pytest.raises(ValueError, match="record 7 has no <ANSWER>"):
        references.chain_references("<TYPE>noise(0.1)<TYPE_END>", ByteTokenizer(), **sizes, where="record 7")
