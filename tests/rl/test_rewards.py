"""The jitted rewards against a plain-Python reference of SPEC §3 (tests/rl/reward_reference.py)."""
import random
import re
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import reward_reference as reference  # noqa: E402

from robust_r1_jax.data.tokenizer import (build_qwen2_style_tokenizer, train_demo_tokenizer,  # noqa: E402
                                          train_phrase_tokenizer)
from robust_r1_jax.data.references import bucket_size, prepare_references  # noqa: E402
from robust_r1_jax.rl import rewards, token_text  # noqa: E402

KEYS = ("format", "accuracy", "degradation", "length", "total")
SPEC_CHAIN = ("<TYPE>lens blur(0.47), jpeg compression(0.58)<TYPE_END>\n"
              "<INFLUENCE>what these degradations do to the image<INFLUENCE_END>\n"
              "<REASONING>the semantic reasoning<REASONING_END>\n"
              "<CONCLUSION>summary of the reasoning and the answer<CONCLUSION_END>\n"
              "<ANSWER>0<ANSWER_END>")
BODY = SPEC_CHAIN[SPEC_CHAIN.index("<TYPE_END>") + len("<TYPE_END>"):]
NON_ASCII_REF = ("<TYPE>模糊(0.5), Straße blur(0.2), noise(0.9), noise(0.3)<TYPE_END>" + BODY)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    corpus = reference.training_corpus(seed=0, n=300)
    root = tmp_path_factory.mktemp("tokenizers")
    # demo_phrase: the embedded run's tokenizer (merges cross words, so tags fuse with their neighbours).
    return {"demo": train_demo_tokenizer(corpus, root / "demo", vocab_size=512),
            "demo_phrase": train_phrase_tokenizer(corpus, 1024, atoms=("red", "square"), max_token_length=32),
            "qwen2": build_qwen2_style_tokenizer(root / "qwen2", corpus, vocab_size=1024)}


def chain(type_text: str, answer: str = "0", body: str | None = None) -> str:
    text = f"<TYPE>{type_text}<TYPE_END>" + (BODY if body is None else body)
    return text.replace("<ANSWER>0<ANSWER_END>", f"<ANSWER>{answer}<ANSWER_END>")


# ---- hand-written cases with exact numbers ------------------------------------------------------------------------

CASES = [  # completion, reference, expected (format, accuracy, r_deg paper, r_deg reference code)
    (SPEC_CHAIN, SPEC_CHAIN, (1, 1, 2.0, 3.0)),
    (chain("lens blur(0.40), jpeg compression(0.58)"), SPEC_CHAIN, (1, 1, 1.93, 2.93)),
    # unknown name -1, repeated name -1 (paper) or scored again (reference code), jpeg never matched -1
    (chain("lens blur(0.40), noise(0.2), lens blur(0.47)"), SPEC_CHAIN, (1, 1, -2.07, 0.93)),
    # invalid numbers: -1 each and no match; the valid lens blur after the invalid one is the first occurrence
    (chain("lens blur(0..5), lens blur(0.5), jpeg compression(.)"), SPEC_CHAIN, (1, 1, -2.03, -1.53)),
    # no TYPE block: both reference names unmatched; answer padded with whitespace is stripped
    ("<ANSWER> \u30000\n<ANSWER_END>", SPEC_CHAIN, (0, 1, -2.0, -2.0)),
    # wrong answer; a space before '(' breaks the pair, as does '\u200b' (not \s) inside a name
    (chain("lens blur (0.47), jpeg\u200bcompression(0.58)", answer="1"), SPEC_CHAIN, (1, 0, -3.0, -3.0)),
    # other whitespace inside a name makes a different name; other scripts' digits are \d and float() reads them
    (chain("lens\u3000blur(0.47), jpeg compression(٠.٥٨)"), SPEC_CHAIN, (1, 1, -1.0, -0.5)),
    # whitespace of every kind between tags still matches; a letter between them does not
    (chain("lens blur(0.47)", body=BODY.replace("\n", "\u3000\x85\t")), SPEC_CHAIN, (1, 1, 0.0, 0.5)),
    (chain("lens blur(0.47)", body=BODY.replace("\n<REASONING>", "x<REASONING>")), SPEC_CHAIN, (0, 1, 0.0, 0.5)),
    # only the first TYPE and ANSWER blocks count
    (chain("noise(0.1)") + "<TYPE>lens blur(0.47)<TYPE_END><ANSWER>1<ANSWER_END>", SPEC_CHAIN, (1, 1, -3.0, -3.0)),
    ("", SPEC_CHAIN, (0, 0, -2.0, -2.0)),
    # non-ASCII names; a repeated reference name keeps its last value (dict semantics); fullwidth digits
    (chain("模糊(０.５)"), NON_ASCII_REF, (1, 1, 1.0 - 2, 1.5 - 2)),
    (chain("Straße blur(0.25), noise(0.3), 模糊(0.4)"), NON_ASCII_REF, (1, 1, 0.95 + 1.0 + 0.9, 1.45 + 1.5 + 1.4)),
    (chain("strasse blur(0.2)", answer="٣"), NON_ASCII_REF, (1, 0, -1.0 - 3, -1.0 - 3)),
    # a long completion: r_len is not clipped at 0
    (SPEC_CHAIN * 3, SPEC_CHAIN, (1, 1, 2.0, 3.0)),
]


def test_hand_written_cases_have_the_exact_rewards(tokenizers):
    tok = tokenizers["qwen2"]
    completions, references = [c for c, _, _ in CASES], [r for _, r, _ in CASES]
    paper = rewards.score(completions, references, tok)
    code = rewards.score(completions, references, tok, variant="reference_code")
    assert set(paper) == set(KEYS) and all(v.dtype == np.float32 and v.shape == (len(CASES),) for v in paper.values())
    expected = np.array([e for _, _, e in CASES], np.float64)
    np.testing.assert_array_equal(paper["format"], expected[:, 0])
    np.testing.assert_array_equal(paper["accuracy"], expected[:, 1])
    np.testing.assert_allclose(paper["degradation"], expected[:, 2], atol=1e-6)
    np.testing.assert_allclose(code["degradation"], expected[:, 3], atol=1e-6)
    n_ref = np.array([len(tok.encode(r, add_special_tokens=False)) for r in references])
    n = np.array([len(tok.encode(c, add_special_tokens=False)) for c in completions])
    np.testing.assert_allclose(paper["length"], 1 - np.abs(n - n_ref) / n_ref, atol=1e-6)
    assert paper["length"][0] == 1.0 and paper["length"][10] == 0.0 and paper["length"][-1] < -0.9
    for out in (paper, code):
        np.testing.assert_allclose(out["total"], out["format"] + out["accuracy"] + out["degradation"]
                                   + out["length"], atol=1e-6)
    # Weights are applied as given; the PAPER preset is r_deg + r_len.
    for weights in (rewards.PAPER, rewards.RewardWeights(accuracy=2.0, format=0.5, degradation=0.0, length=-1.0)):
        out = rewards.score(completions, references, tok, weights=weights)
        np.testing.assert_allclose(out["total"], weights.accuracy * paper["accuracy"] + weights.format * paper["format"]
                                   + weights.degradation * paper["degradation"] + weights.length * paper["length"],
                                   atol=1e-6)


# ---- parity with the reference on fuzzed completions --------------------------------------------------------------

def fuzz_batch(tok, count: int, seed: int):
    rng = random.Random(seed)
    special = sorted(set(tok.all_special_ids) | set(tok.added_tokens_decoder))
    cases = [reference.random_case(rng) for _ in range(count)]
    ids = [reference.tokenize_like_a_policy(rng, tok, text, special) for text, _ in cases]
    return ids, [ref for _, ref in cases]


def assert_parity(tok, ids_list, references, chunk: int = 1000, length: int = 512):
    """Device rewards equal the reference on the decoded ids, for both variants, in fixed shapes (one compilation
    per tokenizer). Returns the decoded texts and the device's paper-variant rewards."""
    table = token_text.token_bytes_table(tok)
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in ids_list]
    ref_lengths = [len(tok.encode(r, add_special_tokens=False)) for r in references]
    max_bytes = max(1024, bucket_size(max(int(np.asarray(table.lengths)[i].sum()) for i in ids_list if i), 64))
    outputs = []
    for start in range(0, len(ids_list), chunk):
        part = slice(start, start + chunk)
        size = len(references[part])
        refs = prepare_references(references[part] + [references[0]] * (chunk - size), tok,
                                  answer_bytes=32, max_names=8, name_bytes=32)
        ids, mask = rewards.pad_completions(ids_list[part], length=length, batch=chunk)
        for variant in rewards.VARIANTS:
            got = {k: np.asarray(v)[:size] for k, v in
                   rewards.compute(ids, mask, refs, table, variant=variant, max_bytes=max_bytes).items()}
            want = [reference.all_rewards(text, len(i), r, n, variant) for text, i, r, n in
                    zip(texts[part], ids_list[part], references[part], ref_lengths[part])]
            for key in KEYS:
                expected = np.array([w[key] for w in want])
                if key in ("format", "accuracy"):
                    bad = np.flatnonzero(got[key] != expected)
                else:  # float32 on the device: 1e-5, or float32 resolution for huge numbers
                    bad = np.flatnonzero(~(np.abs(got[key] - expected) <= 1e-5 + 1e-6 * np.abs(expected)))
                assert bad.size == 0, (f"{variant} {key}: {got[key][bad[0]]} != {expected[bad[0]]} for "
                                       f"{texts[start + bad[0]]!r} against {references[start + bad[0]]!r}")
            if variant == "paper":
                outputs.append(got)
    return texts, {k: np.concatenate([o[k] for o in outputs]) for k in KEYS}


@pytest.mark.parametrize("which", ["demo", "demo_phrase", "qwen2"])
def test_fuzzed_completions_match_the_reference(tokenizers, which):
    ids, refs = fuzz_batch(tokenizers[which], 2000, seed=1)
    texts, out = assert_parity(tokenizers[which], ids, refs)
    assert out["total"].shape == (2000,)
    # The fuzz is not vacuous: all outcomes occur, including the awkward inputs.
    fmt = np.mean([reference.format_reward(t) for t in texts])
    acc = np.mean([reference.accuracy_reward(t, r) for t, r in zip(texts, refs)])
    pairs = [p for t in texts for p in reference.pairs_of(t)]
    assert 0.2 < fmt < 0.8 and 0.2 < acc < 0.8
    assert sum(not t for t in texts) > 20 and sum("\ufffd" in t for t in texts) > 50
    assert sum(v.count(".") > 1 or not re.search(r"\d", v) for _, v in pairs) > 100  # invalid numbers
    assert sum(not (n + v).isascii() for n, v in pairs) > 200


@pytest.mark.slow
@pytest.mark.parametrize("which", ["demo", "demo_phrase", "qwen2"])
def test_ten_thousand_fuzzed_completions_match_the_reference(tokenizers, which):
    ids, refs = fuzz_batch(tokenizers[which], 10000, seed=2)
    _, out = assert_parity(tokenizers[which], ids, refs)
    assert out["total"].shape == (10000,)


def test_tags_split_across_tokens_in_many_ways(tokenizers):
    """Every way of cutting the SPEC chain's TYPE block in two, each half encoded apart, scores the same."""
    tok = tokenizers["qwen2"]
    text = SPEC_CHAIN.replace("lens blur(0.47)", "lens blur(0.45)")
    head = text.index("<TYPE_END>") + len("<TYPE_END>") + 1
    ids = [tok.encode(text[:cut], add_special_tokens=False) + tok.encode(text[cut:], add_special_tokens=False)
           for cut in range(head + 1)]
    assert len({tuple(i) for i in ids}) > 10  # really different token sequences
    _, out = assert_parity(tok, ids, [SPEC_CHAIN] * len(ids))
    np.testing.assert_allclose(out["degradation"], 1.98, atol=1e-6)
    np.testing.assert_array_equal(out["format"], 1.0)
    np.testing.assert_array_equal(out["accuracy"], 1.0)


# ---- the pieces ---------------------------------------------------------------------------------------------------

def test_character_classes_are_pythons():
    table = token_text.char_class_table()
    space = np.array([chr(c).isspace() for c in range(0x110000)])
    np.testing.assert_array_equal((table & 2) > 0, space)
    digits = np.flatnonzero(table & 4)
    assert 600 < digits.size < 1000  # Unicode Nd
    for c in digits[::7]:
        assert float(chr(c)) == table[c] >> 4
    assert table[ord("_")] & 1 and table[ord("é")] & 1 and table[ord("模")] & 1 and not table[ord("-")] & 1
    assert table[ord("٣")] >> 4 == 3 and not table[ord("²")] & 4 and not table[0x200B] & 2
    assert table[0x3000] & 2 and table[0x85] & 2 and table[0x1C] & 2


def test_table_matches_decode_and_drops_unknown_ids(tokenizers):
    tok = tokenizers["demo"]
    table = token_text.token_bytes_table(tok, vocab_size=600)
    assert table.vocab_size == 600 and table.max_token_bytes >= 2
    lengths = np.asarray(table.lengths)
    assert lengths[tok.convert_tokens_to_ids("<|im_end|>")] == 0 and lengths[511] == 0 and lengths[550] == 0
    ids = tok.encode(SPEC_CHAIN, add_special_tokens=False)
    noisy = ids[:5] + [550, tok.eos_token_id] + ids[5:]
    x, n = token_text.detokenize(jnp.asarray([noisy]), jnp.ones((1, len(noisy)), bool), table, 512)
    assert bytes(np.asarray(x[0, :int(n[0])]).astype(np.uint8)) == SPEC_CHAIN.encode()
    # A cap below the text cuts it off; completion_byte_lengths tells how much there was.
    x, n = token_text.detokenize(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool), table, 16)
    assert int(n[0]) == 16 and bytes(np.asarray(x[0]).astype(np.uint8)) == SPEC_CHAIN.encode()[:16]
    assert int(token_text.completion_byte_lengths(jnp.asarray([ids]), jnp.ones((1, len(ids)), bool), table)[0]) == \
        len(SPEC_CHAIN.encode())


def test_non_byte_level_tokenizers_are_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="byte-level"):
        token_text.token_bytes_table(PreTrainedTokenizerFast(tokenizer_object=backend))


def test_no_recompilation_within_a_bucket(tokenizers):
    tok = tokenizers["qwen2"]
    # The same buckets as the hand-written cases (16 rows, 256 tokens, 1024 bytes), so usually no compile at all.
    rewards.score([SPEC_CHAIN * 3] * 9, [SPEC_CHAIN] * 9, tok)
    before = rewards._compute_jit._cache_size()
    for k in (10, 13, 16):
        completions = [SPEC_CHAIN.replace("0.47", f"0.{k}")] * (k - 1) + [SPEC_CHAIN * 3]
        out = rewards.score(completions, [SPEC_CHAIN] * k, tok, variant="reference_code",
                            weights=rewards.RewardWeights(length=float(k)))
        assert out["total"].shape == (k,)
        np.testing.assert_allclose(out["degradation"][0], 1.5 - abs(k / 100 - 0.47) + 1.5, atol=1e-6)
    assert rewards._compute_jit._cache_size() == before


def test_bad_inputs_are_clear_errors(tokenizers):
    tok = tokenizers["demo"]
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        rewards.score(["a", "b"], [SPEC_CHAIN], tok)
    with pytest.raises(ValueError, match="reference chain 1 has no <ANSWER>"):
        rewards.score(["a", "b"], [SPEC_CHAIN, "<TYPE>noise(0.1)<TYPE_END>"], tok)
    with pytest.raises(ValueError, match="reference chain 0: a <TYPE> intensity is not a number"):
        prepare_references([chain("noise(0..1)")], tok)
    with pytest.raises(ValueError, match="unknown r_deg variant"):
        rewards.score([SPEC_CHAIN], [SPEC_CHAIN], tok, variant="eq6")
    with pytest.raises(ValueError, match="max_names=1 is too small"):
        prepare_references([SPEC_CHAIN], tok, max_names=1)
    empty = rewards.score([], [], tok)
    assert set(empty) == set(KEYS) and all(v.shape == (0,) for v in empty.values())
