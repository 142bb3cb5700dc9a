"""Completion tokens as text on the device: their UTF-8 bytes, and each byte's character classes.

The text is ``tokenizer.decode(ids, skip_special_tokens=True)``, exactly:

* a token -> bytes table maps a token to the bytes its byte-level decoder emits and a special token to nothing (what
  ``skip_special_tokens`` does); ``token_bytes_table`` checks this against ``tokenizer.decode`` when it is built;
* \\w, \\s and \\d are Python's str classes. Every code point is classified once on the host with Python's own ``re``
  and every byte of a character carries its character's class, so a run of characters is a run of bytes;
* bytes that are not valid UTF-8 stand for the U+FFFD the decoder prints, which is none of \\w, \\s, \\d and no tag
  character.

``analyse`` turns the bytes into a ``DecodedText``: per-byte classes and the scans (next / last byte of a kind,
running counts) that the regexes of the rewards (``rl/rewards.py``) are decided with; ``shift``, ``gather``,
``literal_starts``, ``first_from`` and ``positions`` are the small gathers they are written in.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np

# Per-code-point class flags, and the digit value of \d characters in the high nibble.
_WORD, _SPACE, _DIGIT = 1, 2, 4
_N_CODEPOINTS = 0x110000


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


def shift(a: jax.Array, k: int, fill=0) -> jax.Array:
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
    b0, b1, b2, b3 = x, shift(x, 1), shift(x, 2), shift(x, 3)

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
        spread = spread | jnp.where(shift(size, -back) > back, shift(lead, -back), 0)
    return spread, lead


@dataclasses.dataclass(frozen=True)
class DecodedText:
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


def analyse(x: jax.Array, n: jax.Array, char_classes: jax.Array) -> DecodedText:
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
    return DecodedText(x=x, n=n, word=word, space=space, numeric=numeric, dot=dot, digit_lead=digit_lead,
                 digit_value=lead >> 4, next_nonspace=nexts[0], next_word=nexts[1], next_nonnumeric=nexts[2],
                 next_dot=nexts[3], next_significant=nexts[4], last_nonspace=lasts[0], last_break=lasts[1],
                 last_nonnumeric=lasts[2], digits_before=counts[0], dots_before=counts[1])


def literal_starts(t: DecodedText, text: str) -> jax.Array:
    """bool [B, N]: the ASCII ``text`` starts at each byte. ASCII bytes are always whole characters."""
    data = text.encode("ascii")
    hit = (jnp.arange(t.x.shape[1])[None, :] + len(data)) <= t.n[:, None]
    for k, byte in enumerate(data):
        hit = hit & (shift(t.x, k) == byte)
    return hit


def gather(a: jax.Array, idx: jax.Array, fill) -> jax.Array:
    """a[b, idx[b, ...]] per row, ``fill`` where idx is outside [0, a.shape[1])."""
    size = a.shape[1]
    idx = jnp.broadcast_to(idx, (a.shape[0],) + jnp.shape(idx)[1:])
    flat = idx.reshape(idx.shape[0], -1)
    got = jnp.take_along_axis(a, jnp.clip(flat, 0, size - 1), axis=1).reshape(idx.shape)
    return jnp.where((idx >= 0) & (idx < size), got, fill)


def first_from(cond: jax.Array, start: jax.Array) -> jax.Array:
    """int32 [B]: the first index >= start[b] where cond holds, else N."""
    size = cond.shape[1]
    pos = jnp.arange(size, dtype=jnp.int32)[None, :]
    return jnp.min(jnp.where(cond & (pos >= start[:, None]), pos, size), axis=1)


def positions(t: DecodedText) -> jax.Array:
    """int32 [1, N]: the byte indices, to broadcast against [B, N] arrays."""
    return jnp.arange(t.x.shape[1], dtype=jnp.int32)[None, :]
