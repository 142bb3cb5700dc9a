"""Robust-R1 rewards (SPEC §3) as jitted functions of completion token ids: no decoding on the host.

Public RL stacks decode completions to strings and run ``re`` on the host. Here the completion's tokens become
its UTF-8 bytes on the device through a token -> bytes table, and each regex of SPEC §3 is evaluated over those
bytes with scans and gathers, so the rewards run inside the compiled RL step with static shapes.

Exactness. The text scored is ``tokenizer.decode(ids, skip_special_tokens=True)``:

* the table maps a token to the bytes its byte-level decoder emits and a special token to nothing (what
  ``skip_special_tokens`` does); ``token_bytes_table`` checks this against ``tokenizer.decode`` when it is built;
* \\w, \\s and \\d are Python's str classes. Every code point is classified once on the host with Python's own ``re``
  and every byte of a character carries its character's class, so a run of characters is a run of bytes;
* bytes that are not valid UTF-8 stand for the U+FFFD the decoder prints, which is none of \\w, \\s, \\d and no tag
  character. (A reference *answer* containing U+FFFD is therefore refused by ``prepare_references``.)

The regexes are decided structurally (argued next to each function) rather than by a general regex engine.
Numbers are float32 on the device (Python uses float64): r_deg agrees to about 1e-7 per pair for numbers of order
one, to float32 precision for large ones, and overflows to -inf above 3.4e38.

Semantics chosen where SPEC §3 leaves room (mirrored by the plain-Python reference in the tests):
* accuracy: a completion without a complete ``<ANSWER>…<ANSWER_END>`` scores 0; every reference must have one;
* reference pairs form a dict (the released code's ``dict(B)``): a repeated reference name keeps its last value;
* reference-code variant: a pair whose number is not a valid decimal (where the released code would crash) scores
  -1 and, as in the paper variant, does not count as a match of its name;
* length: the completion length is the number of masked tokens (``score`` masks exactly
  ``tokenizer.encode(text, add_special_tokens=False)``; a sampler that keeps the stop token in the mask counts it).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import weakref
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

TYPE_OPEN, TYPE_CLOSE = "<TYPE>", "<TYPE_END>"
ANSWER_OPEN, ANSWER_CLOSE = "<ANSWER>", "<ANSWER_END>"
# The format regex as a chain of segments separated by ".*?": "A\s*B" pairs are glued segments.
_FORMAT_SEGMENTS = (("<TYPE>", None), ("<TYPE_END>", "<INFLUENCE>"), ("<INFLUENCE_END>", "<REASONING>"),
                    ("<REASONING_END>", "<CONCLUSION>"), ("<CONCLUSION_END>", "<ANSWER>"), ("<ANSWER_END>", None))
PAIR_PATTERN = r"(\w+(?:\s+\w+)*)\(([\d.]+)\)"
VARIANTS = ("paper", "reference_code")

# Per-code-point class flags, and the digit value of \d characters in the high nibble.
_WORD, _SPACE, _DIGIT = 1, 2, 4
_N_CODEPOINTS = 0x110000
with np.errstate(over="ignore"):  # 10**39 and up are inf in float32, as intended
    _POW10 = np.power(10.0, np.arange(65)).astype(np.float32)


# ---- host: character classes and the token -> bytes table -----------------------------------------------------------

@functools.cache
def char_class_table() -> np.ndarray:
    """uint8[0x110000]: bit 0 \\w, bit 1 \\s, bit 2 \\d (Python str regexes), bits 4-7 the digit's value."""
    every_char = "".join(map(chr, range(_N_CODEPOINTS)))
    flags = np.zeros(_N_CODEPOINTS, np.uint8)
    for pattern, bit in ((r"\w", _WORD), (r"\s", _SPACE), (r"\d", _DIGIT)):
        hits = np.fromiter((m.start() for m in re.finditer(pattern, every_char)), dtype=np.int64)
        flags[hits] |= bit
    for cp in np.flatnonzero(flags & _DIGIT):
        flags[cp] |= int(chr(cp), 10) << 4  # int() and float() read any Unicode decimal digit
    if np.any((flags & _WORD) & ((flags & _SPACE) >> 1)):
        raise AssertionError("a character is both \\w and \\s in this Python; name stripping would not be a no-op")
    return flags


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the others for code points from 256."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenBytes:
    """What each token id decodes to, as bytes: ``flat[offsets[t]:offsets[t] + lengths[t]]``.

    Stored flat rather than as [V, max_token_bytes] because byte-level vocabularies hold a few very long tokens.
    ``char_classes`` is ``char_class_table()`` on the device.
    """
    flat: jax.Array          # uint8 [total bytes]
    offsets: jax.Array       # int32 [V]
    lengths: jax.Array       # int32 [V]
    char_classes: jax.Array  # uint8 [0x110000]
    max_token_bytes: int = dataclasses.field(metadata=dict(static=True))

    @property
    def vocab_size(self) -> int:
        return self.lengths.shape[0]


def token_bytes_table(tokenizer, vocab_size: int | None = None, check: bool = True) -> TokenBytes:
    """The token -> bytes table of a byte-level BPE transformers tokenizer.

    ``vocab_size`` may exceed ``len(tokenizer)`` (a model's padded vocabulary): ids the tokenizer does not know
    decode to nothing, as in ``tokenizer.decode``. With ``check``, random id sequences are decoded both ways and a
    mismatch is an error, so an unusual tokenizer cannot silently be scored on the wrong text.
    """
    token_bytes = _token_byte_strings(tokenizer)
    vocab_size = len(token_bytes) if vocab_size is None else vocab_size
    if vocab_size < len(token_bytes):
        raise ValueError(f"vocab_size={vocab_size} is smaller than the tokenizer's {len(token_bytes)} tokens")
    token_bytes += [b""] * (vocab_size - len(token_bytes))
    lengths = np.array([len(b) for b in token_bytes], np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
    flat = np.frombuffer(b"".join(token_bytes) or b"\0", np.uint8)
    if check:
        _check_against_decode(tokenizer, token_bytes)
    return TokenBytes(flat=jnp.asarray(flat), offsets=jnp.asarray(offsets), lengths=jnp.asarray(lengths),
                      char_classes=jnp.asarray(char_class_table()), max_token_bytes=int(max(lengths.max(), 1)))


def _token_byte_strings(tokenizer) -> list[bytes]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no tokenizers backend; a byte-level BPE fast tokenizer "
                         f"is required")
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise ValueError(f"the tokenizer's decoder is {decoder.get('type')!r}; only byte-level (ByteLevel) decoders "
                         f"map each token to fixed bytes")
    alphabet = _byte_level_alphabet()
    size = len(tokenizer)
    out = []
    for token_id in range(size):
        token = backend.id_to_token(token_id)
        if token is None:
            out.append(b"")
        elif all(c in alphabet for c in token):
            out.append(bytes(alphabet[c] for c in token))
        else:  # the ByteLevel decoder passes a token with characters outside its alphabet through as UTF-8
            out.append(token.encode("utf-8"))
    skippable = set(getattr(tokenizer, "all_special_ids", [])) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    for token_id in skippable:
        if 0 <= token_id < size and tokenizer.decode([token_id], skip_special_tokens=True) == "":
            out[token_id] = b""
    return out


def _check_against_decode(tokenizer, token_bytes: list[bytes], samples: int = 48, seed: int = 0) -> None:
    """Random id sequences, plus every added or special token between random neighbours, decode the same both ways."""
    rng = np.random.default_rng(seed)
    size = len(tokenizer)
    sequences = [rng.integers(0, size, size=int(rng.integers(0, 40))).tolist() for _ in range(samples)]
    added = sorted(set(getattr(tokenizer, "all_special_ids", [])) | set(getattr(tokenizer, "added_tokens_decoder", {})))
    sequences += [[int(rng.integers(0, size)), t, int(rng.integers(0, size))] for t in added if 0 <= t < size]
    for ids in sequences:
        expected = tokenizer.decode(ids, skip_special_tokens=True)
        got = b"".join(token_bytes[t] for t in ids).decode("utf-8", errors="replace")
        if got != expected:
            raise ValueError(f"token -> bytes table disagrees with tokenizer.decode on ids {ids}: "
                             f"{got!r} != {expected!r}")


# ---- host: reference arrays -----------------------------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RewardReferences:
    """Per-example reference arrays, fixed shapes. Padding names have ``name_len == -1``."""
    answer: jax.Array      # uint8 [B, A]: UTF-8 of the stripped reference answer
    answer_len: jax.Array  # int32 [B]
    names: jax.Array       # uint8 [B, R, L]: UTF-8 of each distinct reference degradation name
    name_len: jax.Array    # int32 [B, R]
    values: jax.Array      # float32 [B, R]: its intensity (the last one given for a repeated name)
    token_len: jax.Array   # int32 [B]: tokens of the whole reference chain

    @property
    def batch_size(self) -> int:
        return self.answer_len.shape[0]


def reference_answer(chain: str) -> str | None:
    match = re.search(r"<ANSWER>(.*?)<ANSWER_END>", chain, re.DOTALL)
    return match.group(1).strip() if match else None


def reference_pairs(chain: str) -> dict[str, float]:
    """Name -> intensity of the first ``<TYPE>`` block; a number Python's ``float`` rejects raises ValueError."""
    block = re.search(r"<TYPE>(.*?)<TYPE_END>", chain, re.DOTALL)
    if block is None:
        return {}
    return {name.strip(): float(value) for name, value in re.findall(PAIR_PATTERN, block.group(1))}


def prepare_references(reference_chains: Sequence[str], tokenizer, *, answer_bytes: int | None = None,
                       max_names: int | None = None, name_bytes: int | None = None) -> RewardReferences:
    """Reference arrays for ``compute``. Sizes default to powers of two covering the inputs; give them to fix shapes
    across batches (a reference that does not fit is an error)."""
    answers, pair_lists, token_lens = [], [], []
    for i, chain in enumerate(reference_chains):
        if not isinstance(chain, str):
            raise TypeError(f"reference chain {i} is a {type(chain).__name__}, expected str")
        answer = reference_answer(chain)
        if answer is None:
            raise ValueError(f"reference chain {i} has no <ANSWER>...<ANSWER_END> block: {chain[:80]!r}")
        if "\ufffd" in answer:
            raise ValueError(f"reference chain {i}: the answer contains U+FFFD, which cannot be told apart from "
                             f"invalid UTF-8 in a completion")
        try:
            pairs = reference_pairs(chain)
        except ValueError as e:
            raise ValueError(f"reference chain {i}: a <TYPE> intensity is not a number ({e})") from e
        n_tokens = len(tokenizer.encode(chain, add_special_tokens=False))
        if n_tokens == 0:
            raise ValueError(f"reference chain {i} has no tokens; r_len divides by its length")
        answers.append(answer.encode("utf-8"))
        pair_lists.append([(name.encode("utf-8"), value) for name, value in pairs.items()])
        token_lens.append(n_tokens)
    a = _fixed_size(answer_bytes, max((len(x) for x in answers), default=0), 8, "answer_bytes")
    r = _fixed_size(max_names, max((len(p) for p in pair_lists), default=0), 4, "max_names")
    n = _fixed_size(name_bytes, max((len(k) for p in pair_lists for k, _ in p), default=0), 16, "name_bytes")
    b = len(answers)
    answer = np.zeros((b, a), np.uint8)
    names = np.zeros((b, r, n), np.uint8)
    name_len = np.full((b, r), -1, np.int32)
    values = np.zeros((b, r), np.float32)
    for i, (ans, pairs) in enumerate(zip(answers, pair_lists)):
        answer[i, :len(ans)] = np.frombuffer(ans, np.uint8)
        for k, (name, value) in enumerate(pairs):
            names[i, k, :len(name)] = np.frombuffer(name, np.uint8)
            name_len[i, k] = len(name)
            values[i, k] = value
    return RewardReferences(answer=answer, answer_len=np.array([len(x) for x in answers], np.int32), names=names,
                            name_len=name_len, values=values, token_len=np.array(token_lens, np.int32))


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def _fixed_size(requested: int | None, needed: int, minimum: int, what: str) -> int:
    if requested is None:
        return _bucket(needed, minimum)
    if requested < needed:
        raise ValueError(f"{what}={requested} is too small: the inputs need {needed}")
    return requested


# ---- device: bytes and character classes ---------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("max_bytes",))
def detokenize(ids: jax.Array, mask: jax.Array, table: TokenBytes, max_bytes: int) -> tuple[jax.Array, jax.Array]:
    """The UTF-8 bytes of each sequence's masked tokens, int32 [B, max_bytes] zero-padded, and their count [B].

    Text beyond ``max_bytes`` is cut off (see ``completion_byte_lengths`` to size the buffer).
    """
    batch, length = ids.shape
    known = mask.astype(bool) & (ids >= 0) & (ids < table.vocab_size)
    ids = jnp.clip(ids, 0, table.vocab_size - 1)
    tok_len = jnp.where(known, table.lengths[ids], 0)
    end = jnp.cumsum(tok_len, axis=1)
    start = end - tok_len
    # Each byte position takes the last token that starts at or before it (empty tokens start nowhere).
    marker = jnp.full((batch, max_bytes), -1, jnp.int32).at[
        jnp.arange(batch)[:, None], jnp.where(tok_len > 0, start, max_bytes)].max(
        jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)), mode="drop")
    token_at = jnp.maximum(jax.lax.cummax(marker, axis=1), 0)
    pos = jnp.arange(max_bytes)[None, :]
    within = pos - jnp.take_along_axis(start, token_at, axis=1)
    source = table.offsets[jnp.take_along_axis(ids, token_at, axis=1)] + within
    n = jnp.minimum(end[:, -1], max_bytes)
    x = jnp.where(pos < n[:, None], table.flat[jnp.clip(source, 0, table.flat.shape[0] - 1)], 0)
    return x.astype(jnp.int32), n.astype(jnp.int32)


@jax.jit
def completion_byte_lengths(ids: jax.Array, mask: jax.Array, table: TokenBytes) -> jax.Array:
    """Bytes each sequence decodes to (uncut), to size ``max_bytes`` or to count cut-off completions."""
    known = mask.astype(bool) & (ids >= 0) & (ids < table.vocab_size)
    return jnp.where(known, table.lengths[jnp.clip(ids, 0, table.vocab_size - 1)], 0).sum(axis=1)


def _shift(a: jax.Array, k: int, fill=0) -> jax.Array:
    """a[:, i + k] (k > 0 looks ahead, k < 0 behind), ``fill`` outside the buffer."""
    if k == 0:
        return a
    if k > 0:
        return jnp.pad(a[:, k:], ((0, 0), (0, k)), constant_values=fill)
    return jnp.pad(a[:, :k], ((0, 0), (-k, 0)), constant_values=fill)


def _char_flags(x: jax.Array, n: jax.Array, char_classes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Class flags of every byte's character, and of characters at their first byte only (int32 [B, N] each).

    UTF-8 is decoded at every byte (well-formed sequences only, Unicode table 3-7); a continuation byte takes the
    flags of the valid lead within three bytes before it that covers it (at most one does). Zero padding is never a
    continuation byte, so no sequence runs past the text; invalid bytes get no flags, like U+FFFD.
    """
    inside = jnp.arange(x.shape[1])[None, :] < n[:, None]
    b0, b1, b2, b3 = x, _shift(x, 1), _shift(x, 2), _shift(x, 3)

    def cont(b, lo=0x80, hi=0xBF):
        return (b >= lo) & (b <= hi)

    one = inside & (b0 < 0x80)
    two = (b0 >= 0xC2) & (b0 <= 0xDF) & cont(b1)
    three = (((b0 == 0xE0) & cont(b1, 0xA0)) | ((b0 >= 0xE1) & (b0 <= 0xEC) & cont(b1))
             | ((b0 == 0xED) & cont(b1, 0x80, 0x9F)) | ((b0 >= 0xEE) & (b0 <= 0xEF) & cont(b1))) & cont(b2)
    four = (((b0 == 0xF0) & cont(b1, 0x90)) | ((b0 >= 0xF1) & (b0 <= 0xF3) & cont(b1))
            | ((b0 == 0xF4) & cont(b1, 0x80, 0x8F))) & cont(b2) & cont(b3)
    c1, c2, c3 = b1 & 0x3F, b2 & 0x3F, b3 & 0x3F
    codepoint = jnp.select([one, two, three, four],
                           [b0, ((b0 & 0x1F) << 6) | c1, ((b0 & 0x0F) << 12) | (c1 << 6) | c2,
                            ((b0 & 0x07) << 18) | (c1 << 12) | (c2 << 6) | c3], 0)
    size = jnp.select([one, two, three, four], [1, 2, 3, 4], 0)
    lead = jnp.where(size > 0, char_classes[codepoint].astype(jnp.int32), 0)
    spread = lead
    for back in (1, 2, 3):
        spread = spread | jnp.where(_shift(size, -back) > back, _shift(lead, -back), 0)
    return spread, lead


@dataclasses.dataclass(frozen=True)
class _Text:
    """The decoded bytes with, per byte, its character's classes and the nearest bytes of interest.

    next_*: first index >= i where it holds, else N; last_*: last index <= i, else -1; *_before: [B, N + 1] counts
    over [0, k). All scans are stacked into three cumulative ops (each scan costs compile time on CPU).
    """
    x: jax.Array
    n: jax.Array
    word: jax.Array
    space: jax.Array
    numeric: jax.Array        # \d or '.'
    dot: jax.Array
    digit_lead: jax.Array     # first byte of a \d character
    digit_value: jax.Array
    next_nonspace: jax.Array
    next_word: jax.Array
    next_nonnumeric: jax.Array
    next_dot: jax.Array
    next_significant: jax.Array  # a \d character other than zero
    last_nonspace: jax.Array
    last_break: jax.Array     # neither \w nor \s
    last_nonnumeric: jax.Array
    digits_before: jax.Array
    dots_before: jax.Array


def _analyse(x: jax.Array, n: jax.Array, char_classes: jax.Array) -> _Text:
    flags, lead = _char_flags(x, n, char_classes)
    word, space, digit = (flags & _WORD) > 0, (flags & _SPACE) > 0, (flags & _DIGIT) > 0
    size = x.shape[1]
    idx = jnp.arange(size, dtype=jnp.int32)
    dot = (idx[None, :] < n[:, None]) & (x == ord("."))
    numeric = digit | dot
    digit_lead = (lead & _DIGIT) > 0
    significant = digit_lead & ((lead >> 4) > 0)
    nexts = jax.lax.cummin(jnp.where(jnp.stack([~space, word, ~numeric, dot, significant]), idx, size), axis=2,
                           reverse=True)
    lasts = jax.lax.cummax(jnp.where(jnp.stack([~space, ~(word | space), ~numeric]), idx, -1), axis=2)
    counts = jnp.pad(jnp.cumsum(jnp.stack([digit_lead, dot]).astype(jnp.int32), axis=2), ((0, 0), (0, 0), (1, 0)))
    return _Text(x=x, n=n, word=word, space=space, numeric=numeric, dot=dot, digit_lead=digit_lead,
                 digit_value=lead >> 4, next_nonspace=nexts[0], next_word=nexts[1], next_nonnumeric=nexts[2],
                 next_dot=nexts[3], next_significant=nexts[4], last_nonspace=lasts[0], last_break=lasts[1],
                 last_nonnumeric=lasts[2], digits_before=counts[0], dots_before=counts[1])


def _literal(t: _Text, text: str) -> jax.Array:
    """bool [B, N]: the ASCII ``text`` starts at each byte. ASCII bytes are always whole characters."""
    data = text.encode("ascii")
    hit = (jnp.arange(t.x.shape[1])[None, :] + len(data)) <= t.n[:, None]
    for k, byte in enumerate(data):
        hit = hit & (_shift(t.x, k) == byte)
    return hit


def _at(a: jax.Array, idx: jax.Array, fill) -> jax.Array:
    """a[b, idx[b, ...]] per row, ``fill`` where idx is outside [0, a.shape[1])."""
    size = a.shape[1]
    idx = jnp.broadcast_to(idx, (a.shape[0],) + jnp.shape(idx)[1:])
    flat = idx.reshape(idx.shape[0], -1)
    got = jnp.take_along_axis(a, jnp.clip(flat, 0, size - 1), axis=1).reshape(idx.shape)
    return jnp.where((idx >= 0) & (idx < size), got, fill)


def _first_from(cond: jax.Array, start: jax.Array) -> jax.Array:
    """int32 [B]: the first index >= start[b] where cond holds, else N."""
    size = cond.shape[1]
    pos = jnp.arange(size, dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(cond & (pos >= start[:, None]), pos, size), axis=1)


def _positions(t: _Text) -> jax.Array:
    return jnp.arange(t.x.shape[1], dtype=jnp.int32)[None, :]


# ---- device: the rewards ------------------------------------------------------------------------------------------

def format_reward(t: _Text) -> jax.Array:
    """1 iff the format regex has a match anywhere (re.search, DOTALL).

    The pattern is six segments joined by ``.*?`` (any text, possibly empty): "<TYPE>", "<TYPE_END>\\s*<INFLUENCE>",
    ..., "<ANSWER_END>". Such a chain occurs iff repeatedly taking, among the next segment's occurrences that start
    no earlier than the previous one ended, the one that ends first never fails. Inside a glued segment "A\\s*B",
    B starts with '<', which is not whitespace, so B must start at the first non-whitespace byte after A.
    """
    size = t.x.shape[1]
    pos = _positions(t)
    never, no_key = size + 1, 2 * size + 1
    # key = 2 i + (B does not start at i) on non-whitespace bytes: a reverse running minimum then tells, from any
    # byte, where the first non-whitespace byte is and whether B starts there, for all four B at once.
    glued = [second for _, second in _FORMAT_SEGMENTS if second is not None]
    keys = jnp.stack([jnp.where(t.space, no_key, 2 * pos + (~_literal(t, b)).astype(jnp.int32)) for b in glued])
    nearest = jax.lax.cummin(keys, axis=2, reverse=True)
    reached = jnp.zeros(t.x.shape[0], jnp.int32)  # where the next segment may start
    k = 0
    for first, second in _FORMAT_SEGMENTS:
        occurs, end = _literal(t, first), pos + len(first)
        if second is not None:
            key = _shift(nearest[k], len(first), fill=no_key)
            occurs, end, k = occurs & (key % 2 == 0), key // 2 + len(second), k + 1
        reached = jnp.min(jnp.where(occurs & (pos >= reached[:, None]), end, never), axis=1)
    return (reached <= t.n).astype(jnp.float32)


def _first_block(t: _Text, open_tag: str, close_tag: str):
    """Content span [start, end) of re.search(open(.*?)close, DOTALL), and whether it exists.

    The leftmost match opens at the first ``open`` (a later one has fewer closers after it) and closes at the first
    ``close`` after it, if any.
    """
    size = t.x.shape[1]
    opened = _first_from(_literal(t, open_tag), jnp.zeros(t.x.shape[0], jnp.int32))
    start = opened + len(open_tag)
    end = _first_from(_literal(t, close_tag), start)
    return start, end, (opened < size) & (end < size)


def accuracy_reward(t: _Text, refs: RewardReferences) -> jax.Array:
    """1 iff the stripped text of the first <ANSWER>…<ANSWER_END> equals the reference answer (bytewise = as str)."""
    start, end, found = _first_block(t, ANSWER_OPEN, ANSWER_CLOSE)
    left = jnp.minimum(_at(t.next_nonspace, start, t.x.shape[1]), end)
    right = jnp.maximum(_at(t.last_nonspace, end - 1, -1) + 1, left)
    k = jnp.arange(refs.answer.shape[1])[None, :]
    text = _at(t.x, left[:, None] + k, -1)
    same = jnp.all((text == refs.answer.astype(jnp.int32)) | (k >= refs.answer_len[:, None]), axis=1)
    return (found & (right - left == refs.answer_len) & same).astype(jnp.float32)


def _pairs(t: _Text):
    """Every ``name(number)`` of ``re.findall(PAIR_PATTERN, block)`` in the first <TYPE> block, keyed by its '('.

    A name is \\w and \\s characters starting and ending with \\w, followed by '(' -- which is neither, so the name is
    the tail of the maximal \\w/\\s run that ends right before that '('; the run must end with \\w and the name starts
    at the run's first \\w. ``[\\d.]+`` then takes the maximal run of \\d and '.' after '(' (backtracking cannot help:
    ')' is neither) and ')' must follow. Runs never cross the block's edges ('>' and '<' are neither \\w nor \\s),
    and no findall match can start inside another one's number (every \\w run there ends at '.' or ')', not '('),
    so each such '(' is one findall match, in order.

    Returns is_pair, name_start, whether the number is a valid decimal, and its value: [B, N] each.
    """
    size = t.x.shape[1]
    pos = _positions(t)
    block_start, block_end, found = _first_block(t, TYPE_OPEN, TYPE_CLOSE)
    run_start = jnp.where(pos == 0, 0, _shift(t.last_break, -1) + 1)  # of the \w/\s run ending before i
    name_start = _at(t.next_word, run_start, size)
    number_end = _shift(t.next_nonnumeric, 1, fill=size)  # where ')' must be
    n_digits = _at(t.digits_before, number_end, 0) - t.digits_before[:, 1:]
    n_dots = _at(t.dots_before, number_end, 0) - t.dots_before[:, 1:]
    is_pair = (found[:, None] & (pos >= block_start[:, None]) & (pos < block_end[:, None])
               & (t.x == ord("(")) & _shift(t.word, -1) & (number_end > pos + 1)
               & (number_end < t.n[:, None]) & (_at(t.x, number_end, -1) == ord(")")))
    valid = (n_digits >= 1) & (n_dots <= 1)  # what Python's float() accepts among [\d.]+ strings
    return is_pair, name_start, valid, _number_values(t, number_end)


def _number_values(t: _Text, number_end: jax.Array) -> jax.Array:
    """float32 [B, N]: at each '(' the value of the \\d/'.' run after it, up to ``number_end`` (used where valid).

    The first nine significant digits form an integer M (exact in int32: a digit adds d * 10**(8 - rank) and
    per-run sums are differences of one wrapping cumsum); the value is M * 10**(p - 8), p the power of ten of the
    leading significant digit. Digits past the ninth change the value by under 1e-8 relative.
    """
    size = t.x.shape[1]
    pos = _positions(t)
    run_first = jnp.where(pos == 0, 0, _shift(t.last_nonnumeric, -1) + 1)
    leading = _at(t.next_significant, run_first, size)
    rank = t.digits_before[:, :-1] - _at(t.digits_before, leading, 0)
    place = jnp.asarray(10 ** np.arange(8, -1, -1), jnp.int32)[jnp.clip(rank, 0, 8)]
    digit = jnp.where(t.digit_lead & (rank >= 0) & (rank <= 8), t.digit_value * place, 0)
    mantissa_before = jnp.pad(jnp.cumsum(digit, axis=1), ((0, 0), (1, 0)))

    # The run after a '(' at q starts at q + 1.
    mantissa = _at(mantissa_before, number_end, 0) - mantissa_before[:, 1:]
    first = _shift(leading, 1, fill=size)
    point = jnp.minimum(_shift(t.next_dot, 1, fill=size), number_end)
    exponent = _at(t.digits_before, point, 0) - _at(t.digits_before, first + 1, 0) - 8
    pow10 = jnp.asarray(_POW10)  # 10**k is exact in float32 up to k = 10, so most values see one rounding
    up, down = pow10[jnp.clip(exponent, 0, 64)], pow10[jnp.clip(-exponent, 0, 64)]
    m = mantissa.astype(jnp.float32)
    value = jnp.where(exponent >= 0, m * up, m / down)
    return jnp.where(first < number_end, value, 0.0)


def _reference_index(t: _Text, name_start: jax.Array, refs: RewardReferences) -> jax.Array:
    """int32 [B, N]: which reference name equals the name ending before each byte (bytewise), or -1."""
    length = _positions(t) - name_start
    names = refs.names.astype(jnp.int32)

    def compare_byte(j, equal):
        byte = _at(t.x, name_start + j, -1)
        return equal & ((byte[:, :, None] == names[:, None, :, j]) | (j >= refs.name_len[:, None, :]))

    equal = jax.lax.fori_loop(0, names.shape[2], compare_byte, length[:, :, None] == refs.name_len[:, None, :])
    return jnp.where(equal.any(-1), jnp.argmax(equal, axis=-1), -1).astype(jnp.int32)


def degradation_reward(t: _Text, refs: RewardReferences, paper: jax.Array) -> jax.Array:
    """r_deg of SPEC §3: the paper variant where ``paper`` (bool), else the reference-code variant (see the module
    docstring for invalid numbers)."""
    size = t.x.shape[1]
    pos = _positions(t)
    is_pair, name_start, valid, value = _pairs(t)
    ref = jnp.where(is_pair, _reference_index(t, name_start, refs), -1)
    known = is_pair & valid & (ref >= 0)
    n_names = refs.values.shape[1]
    ref_safe = jnp.clip(ref, 0, n_names - 1)
    one_hot = known[:, :, None] & (ref[:, :, None] == jnp.arange(n_names)[None, None, :])
    first_at = jnp.min(jnp.where(one_hot, pos[:, :, None], size), axis=1)  # [B, R]: first valid match per name
    closeness = -jnp.abs(value - jnp.take_along_axis(refs.values, ref_safe, axis=1))
    first = known & (jnp.take_along_axis(first_at, ref_safe, axis=1) == pos)
    per_pair = jnp.where(paper, jnp.where(first, 1.0 + closeness, -1.0), jnp.where(known, 1.5 + closeness, -1.0))
    unmatched = ((refs.name_len >= 0) & (first_at == size)).sum(axis=1)
    return jnp.where(is_pair, per_pair, 0.0).sum(axis=1) - unmatched.astype(jnp.float32)


def length_reward(mask: jax.Array, refs: RewardReferences) -> jax.Array:
    """1 - |len(Y) - len(Y_ref)| / len(Y_ref), unclipped, lengths in tokens."""
    length = mask.astype(jnp.int32).sum(axis=1)
    return 1.0 - jnp.abs(length - refs.token_len).astype(jnp.float32) / refs.token_len.astype(jnp.float32)


# ---- weights and the jitted entry points ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """R = accuracy*r_acc + format*r_fmt + degradation*r_deg + length*r_len. Defaults: the released code."""
    accuracy: float = 1.0
    format: float = 1.0
    degradation: float = 1.0
    length: float = 1.0


REFERENCE_CODE = RewardWeights()
PAPER = RewardWeights(accuracy=0.0, format=0.0, degradation=1.0, length=1.0)


def _compute(completion_ids, completion_mask, refs: RewardReferences, table: TokenBytes, paper: jax.Array,
             weights: jax.Array, max_bytes: int) -> dict[str, jax.Array]:
    text = _analyse(*detokenize(completion_ids, completion_mask, table, max_bytes), table.char_classes)
    out = {"accuracy": accuracy_reward(text, refs), "format": format_reward(text),
           "degradation": degradation_reward(text, refs, paper), "length": length_reward(completion_mask, refs)}
    out["total"] = sum(w * out[k] for w, k in zip(weights, ("accuracy", "format", "degradation", "length")))
    return out


# The variant and the weights are traced, so neither changes the compilation; only shapes and max_bytes do.
_compute_jit = jax.jit(_compute, static_argnames=("max_bytes",))


def compute(completion_ids, completion_mask, refs: RewardReferences, table: TokenBytes, variant: str = "paper",
            weights: RewardWeights = REFERENCE_CODE, max_bytes: int | None = None) -> dict[str, jax.Array]:
    """All rewards, float32 [B] each: format, accuracy, degradation, length, total.

    ``completion_ids``/``completion_mask`` are [B, T]; ``max_bytes`` (static) sizes the byte buffer. Its default,
    T * the longest token, never cuts text off but is large for a 151k vocabulary (whose longest tokens are far
    longer than the average of about 4 bytes): an RL step should pass a few bytes per token and count cut-off
    completions with ``completion_byte_lengths``. Jitted: one compilation per shape and ``max_bytes``; the
    variant and the weights are traced.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown r_deg variant {variant!r}; expected one of {VARIANTS}")
    if not isinstance(weights, RewardWeights):
        raise TypeError(f"weights must be a RewardWeights, got {type(weights).__name__}")
    if jnp.ndim(completion_ids) != 2 or jnp.shape(completion_mask) != jnp.shape(completion_ids):
        raise ValueError(f"completion ids and mask must both be [B, T]; got {jnp.shape(completion_ids)} and "
                         f"{jnp.shape(completion_mask)}")
    if refs.batch_size != jnp.shape(completion_ids)[0]:
        raise ValueError(f"{jnp.shape(completion_ids)[0]} completions but {refs.batch_size} references")
    if max_bytes is None:
        max_bytes = jnp.shape(completion_ids)[1] * table.max_token_bytes
    weight_vector = jnp.asarray([weights.accuracy, weights.format, weights.degradation, weights.length], jnp.float32)
    return _compute_jit(completion_ids, completion_mask, refs, table, jnp.asarray(variant == "paper"),
                        weight_vector, max_bytes=int(max_bytes))


# ---- host convenience: strings in, NumPy out -----------------------------------------------------------------------

_TABLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _table_for(tokenizer) -> tuple[TokenBytes, np.ndarray]:
    cached = _TABLES.get(tokenizer)
    if cached is None:
        table = token_bytes_table(tokenizer)
        cached = (table, np.asarray(table.lengths))
        _TABLES[tokenizer] = cached
    return cached


def pad_completions(id_lists: Sequence[Sequence[int]], length: int | None = None,
                    batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """int32 ids and bool mask [batch, length], sizes defaulting to powers of two covering the inputs."""
    longest = max((len(ids) for ids in id_lists), default=0)
    length = _fixed_size(length, longest, 16, "length")
    batch = _fixed_size(batch, len(id_lists), 8, "batch")
    ids = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), bool)
    for i, seq in enumerate(id_lists):
        ids[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    return ids, mask


def _pad_references(refs: RewardReferences, batch: int) -> RewardReferences:
    """Repeat the last reference so padded rows are well defined (their rewards are dropped)."""
    extra = batch - refs.batch_size
    return jax.tree_util.tree_map(lambda a: np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]), refs)


def score(completions: Sequence[str], references: Sequence[str], tokenizer, variant: str = "paper",
          weights: RewardWeights = REFERENCE_CODE) -> dict[str, np.ndarray]:
    """Rewards of completion strings against reference chains, through the jitted device path.

    Completions are tokenized with ``tokenizer.encode(text, add_special_tokens=False)`` and scored as the text those
    ids decode to. Shapes are bucketed to powers of two so repeated calls reuse one compilation.
    """
    completions, references = list(completions), list(references)
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    if not completions:
        return {k: np.zeros(0, np.float32) for k in ("format", "accuracy", "degradation", "length", "total")}
    table, host_lengths = _table_for(tokenizer)
    id_lists = [tokenizer.encode(text, add_special_tokens=False) for text in completions]
    ids, mask = pad_completions(id_lists)
    refs = _pad_references(prepare_references(references, tokenizer), ids.shape[0])
    max_bytes = _bucket(int(max((host_lengths[seq].sum() for seq in id_lists if seq), default=0)), 64)
    out = compute(ids, mask, refs, table, variant=variant, weights=weights, max_bytes=max_bytes)
    return {k: np.asarray(v)[:len(completions)] for k, v in out.items()}
