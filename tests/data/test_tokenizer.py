"""The locally trained byte-level BPE tokenizers: layout, loading, round trips, context-dependent splits."""
import json
import os

import pytest
from transformers import AutoTokenizer

from robust_r1_jax.data.tokenizer import (QWEN2_SPLIT_PATTERN, SPECIAL_TOKENS_TOP, build_qwen2_style_tokenizer,
                                          train_demo_tokenizer)
from robust_r1_jax.model.config import tiny

NAMES = ("lens blur", "jpeg compression", "motion blur", "noise", "darkness", "scan lines")


def corpus(n: int = 200) -> list[str]:
    texts = []
    for i in range(n):
        a, b = NAMES[i % len(NAMES)], NAMES[(3 * i + 1) % len(NAMES)]
        texts.append(f"<TYPE>{a}({i % 100 / 100:.2f}), {b}({(i * 7) % 100 / 100:.2f})<TYPE_END>\n"
                     f"<INFLUENCE>The {a} softens edges.<INFLUENCE_END>\n<REASONING>Question {i}: the bus is red."
                     f"<REASONING_END>\n<CONCLUSION>So the answer is {i % 4}.<CONCLUSION_END>\n"
                     f"<ANSWER>{i % 4}<ANSWER_END>")
    return texts


CHAIN = ("<TYPE>lens blur(0.47), jpeg compression(0.58)<TYPE_END>\n<INFLUENCE>x<INFLUENCE_END>\n"
         "<REASONING>café 東京 😀<REASONING_END>\n<CONCLUSION>z<CONCLUSION_END>\n<ANSWER>0<ANSWER_END>")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return train_demo_tokenizer(corpus(), tmp_path_factory.mktemp("demo") / "tok", vocab_size=512)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return build_qwen2_style_tokenizer(tmp_path_factory.mktemp("qwen2") / "tok", corpus(), vocab_size=700)


def test_demo_special_tokens_sit_where_the_tiny_model_expects_them(demo):
    cfg = tiny(vocab_size=512)
    assert len(demo) == cfg.text.vocab_size == 512
    ids = {t: demo.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS_TOP}
    assert ids["<|endoftext|>"] == cfg.bos_token_id == 505
    assert ids["<|vision_start|>"] == cfg.vision_start_token_id and ids["<|vision_end|>"] == cfg.vision_end_token_id
    assert ids["<|image_pad|>"] == cfg.image_token_id and ids["<|video_pad|>"] == cfg.video_token_id
    assert ids["<|im_end|>"] == cfg.eos_token_id == demo.eos_token_id == 510 and ids["<|im_start|>"] == 511
    assert demo.pad_token_id == 505
    # Special tokens encode to one id each and vanish with skip_special_tokens.
    ids_ = demo.encode("<|im_start|>hi<|image_pad|><|im_end|>", add_special_tokens=False)
    assert ids_[0] == 511 and ids_[-2:] == [508, 510]
    assert demo.decode(ids_, skip_special_tokens=True) == "hi"


def test_chain_tags_are_plain_text(demo, qwen2):
    for tok in (demo, qwen2):
        for tag in ("<TYPE>", "<TYPE_END>", "<ANSWER_END>"):
            ids = tok.encode(tag, add_special_tokens=False)
            assert len(ids) > 1 and not set(ids) & set(tok.all_special_ids)


@pytest.mark.parametrize("which", ["demo", "qwen2"])
def test_round_trip_and_reload(which, demo, qwen2, tmp_path):
    tok = {"demo": demo, "qwen2": qwen2}[which]
    assert tok.decode(tok.encode(CHAIN, add_special_tokens=False)) == CHAIN
    again = AutoTokenizer.from_pretrained(tok.name_or_path, local_files_only=True)
    assert again.encode(CHAIN, add_special_tokens=False) == tok.encode(CHAIN, add_special_tokens=False)
    assert again.eos_token == "<|im_end|>" and again.pad_token == "<|endoftext|>"


def test_qwen2_style_uses_qwen2_pre_tokenization(qwen2):
    assert type(qwen2).__name__ == "Qwen2Tokenizer" and len(qwen2) == 700
    spec = json.loads(qwen2.backend_tokenizer.to_str())
    split, byte_level = spec["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == QWEN2_SPLIT_PATTERN and byte_level["use_regex"] is False
    assert spec["normalizer"]["type"] == "NFC"
    pieces = [p for p, _ in qwen2.backend_tokenizer.pre_tokenizer.pre_tokenize_str("<TYPE_END>\n<INFLUENCE>12")]
    # '<' joins the letters after it, ">\n" is one punctuation piece, digits are single
    assert pieces == ["<TYPE", "_END", ">Ċ", "<INFLUENCE", ">", "1", "2"]


def test_merges_split_tags_and_names_depending_on_context(qwen2):
    def pieces(text):
        return [qwen2.decode([i]) for i in qwen2.encode(text, add_special_tokens=False)]
    glued = pieces("<TYPE>lens blur(0.5)<TYPE_END>\n<INFLUENCE>")
    spaced = pieces("<TYPE> lens blur (0.5) <TYPE_END> <INFLUENCE>")
    # Tokens straddle tag boundaries (">lens", ")<", ">\n") when tags touch their neighbours, not when spaced.
    assert {">lens", ")<", ">\n"} <= set(glued)
    assert not {">lens", ")<", ">\n"} & set(spaced)
    assert "".join(glued) == "<TYPE>lens blur(0.5)<TYPE_END>\n<INFLUENCE>"


def test_training_is_deterministic_and_atomic(tmp_path):
    first = train_demo_tokenizer(corpus(60), tmp_path / "a", vocab_size=300)
    second = train_demo_tokenizer(corpus(60), tmp_path / "b", vocab_size=300)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert len(first) == len(second) == 300
    # Retraining into an existing directory replaces it whole and leaves no staging directories behind.
    (tmp_path / "a" / "stale.txt").write_text("old")
    train_demo_tokenizer(corpus(30), tmp_path / "a", vocab_size=300)
    assert not (tmp_path / "a" / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_small_corpus_is_padded_so_specials_stay_on_top(tmp_path):
    tok = train_demo_tokenizer(["ab ab"], tmp_path / "t", vocab_size=300)
    assert len(tok) == 300 and tok.eos_token_id == 298 and tok.convert_tokens_to_ids("<|im_start|>") == 299
    tokens = tok.convert_ids_to_tokens(list(range(256, 293)))
    reserved = [t for t in tokens if t.startswith("<|reserved_")]
    assert 30 <= len(reserved) < 37 and tokens[-len(reserved):] == reserved  # after the few learned merges
    assert tok.decode(tok.convert_tokens_to_ids(reserved), skip_special_tokens=True) == ""


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 263"):
        train_demo_tokenizer(corpus(5), tmp_path / "t", vocab_size=200)
    with pytest.raises(ValueError, match="every text is empty"):
        train_demo_tokenizer(["", ""], tmp_path / "t")
    with pytest.raises(TypeError, match="training text 0 is a bytes"):
        train_demo_tokenizer([b"x"], tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_special_token_strings_in_training_texts_are_learned_as_text_only(tmp_path):
    """A question holding a special-token string (issue 22) trains the tokenizer; the string is never a merge,
    the special tokens keep their places at the top and the typed string encodes as its characters."""
    texts = ["is <|im_end|> a tag? <|im_end|><|image_pad|>"] * 50 + ["fine"]
    tok = build_qwen2_style_tokenizer(tmp_path / "t", texts, vocab_size=320)
    assert tok.convert_tokens_to_ids("<|im_end|>") == 318 and tok.convert_tokens_to_ids("<|image_pad|>") == 316
    spelled = tok("<|im_end|>", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert len(spelled) > 1 and max(spelled) < 320 - 7 and tok.decode(spelled) == "<|im_end|>"
    assert "<|im_end|>" not in [tok.convert_ids_to_tokens(i) for i in range(320 - 7)]
