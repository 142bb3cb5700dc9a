"""Robust-R1 rewards (SPEC §3) as jitted functions of completion token ids: no decoding on the host.

Public RL stacks decode completions to strings and run ``re`` on the host. Here the completion's tokens become
its UTF-8 bytes on the device through a token -> bytes table (``rl/token_text.py``, which also states why that text
is exactly ``tokenizer.decode(ids, skip_special_tokens=True)``), and each regex of SPEC §3 -- the chain format of
``data/chains.py`` -- is evaluated over those bytes with scans and gathers, so the rewards run inside the compiled
RL step with static shapes. The references they compare with are arrays built by ``data/references.py``; a
reference answer containing U+FFFD is refused there, since a completion's invalid UTF-8 reads as U+FFFD.

The regexes are decided structurally (argued next to each function) rather than by a general regex engine.
Numbers are float32 on the device (Python uses float64): r_deg agrees to about 1e-7 per pair for numbers of order
one, to float32 precision for large ones, and overflows to -inf above 3.4e38.

Semantics chosen where SPEC §3 leaves room (mirrored by the plain-Python reference in the tests):
* accuracy: a completion without a complete ANSWER block scores 0; every reference must have one;
* reference pairs form a dict (the released code's ``dict(B)``): a repeated reference name keeps its last value;
* reference-code variant: a pair whose number is not a valid decimal (where the released code would crash) scores
  -1 and, as in the paper variant, does not count as a match of its name;
* length: the completion length is the number of masked tokens (``score`` masks exactly
  ``tokenizer.encode(text, add_special_tokens=False)``; a sampler that keeps the stop token in the mask counts it).
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_r1_jax.data import chains
from robust_r1_jax.data.references import RewardReferences, bucket_size, fixed_size, prepare_references
from robust_r1_jax.rl.token_text import (DecodedText, TokenBytes, analyse, detokenize, first_from, gather,
                                         literal_starts, positions, shift, token_bytes_table)

VARIANTS = ("paper", "reference_code")
with np.errstate(over="ignore"):  # 10**39 and up are inf in float32, as intended
    _POW10 = np.power(10.0, np.arange(65)).astype(np.float32)


# ---- device: the rewards ------------------------------------------------------------------------------------------

def format_reward(t: DecodedText) -> jax.Array:
    """1 iff the format regex has a match anywhere (re.search, DOTALL).

    The pattern is the segments of ``chains.FORMAT_SEGMENTS`` joined by ``.*?`` (any text, possibly empty): the TYPE
    opening tag, then glued pairs "A\\s*B" (a closing tag, whitespace, the next opening tag), then the ANSWER closing
    tag. Such a chain occurs iff repeatedly taking, among the next segment's occurrences that start
    no earlier than the previous one ended, the one that ends first never fails. Inside a glued segment "A\\s*B",
    B starts with '<', which is not whitespace, so B must start at the first non-whitespace byte after A.
    """
    size = t.x.shape[1]
    pos = positions(t)
    never, no_key = size + 1, 2 * size + 1
    # key = 2 i + (B does not start at i) on non-whitespace bytes: a reverse running minimum then tells, from any
    # byte, where the first non-whitespace byte is and whether B starts there, for all four B at once.
    glued = [second for _, second in chains.FORMAT_SEGMENTS if second is not None]
    keys = jnp.stack([jnp.where(t.space, no_key, 2 * pos + (~literal_starts(t, b)).astype(jnp.int32)) for b in glued])
    nearest = jax.lax.cummin(keys, axis=2, reverse=True)
    reached = jnp.zeros(t.x.shape[0], jnp.int32)  # where the next segment may start
    k = 0
    for first, second in chains.FORMAT_SEGMENTS:
        occurs, end = literal_starts(t, first), pos + len(first)
        if second is not None:
            key = shift(nearest[k], len(first), fill=no_key)
            occurs, end, k = occurs & (key % 2 == 0), key // 2 + len(second), k + 1
        reached = jnp.min(jnp.where(occurs & (pos >= reached[:, None]), end, never), axis=1)
    return (reached <= t.n).astype(jnp.float32)


def _first_block(t: DecodedText, tag: str):
    """Content span [start, end) of the first ``tag`` block (``chains.extract_block``), and whether it exists.

    The leftmost match opens at the first ``open`` (a later one has fewer closers after it) and closes at the first
    ``close`` after it, if any.
    """
    size = t.x.shape[1]
    open_tag, close_tag = chains.open_tag(tag), chains.close_tag(tag)
    opened = first_from(literal_starts(t, open_tag), jnp.zeros(t.x.shape[0], jnp.int32))
    start = opened + len(open_tag)
    end = first_from(literal_starts(t, close_tag), start)
    return start, end, (opened < size) & (end < size)


def accuracy_reward(t: DecodedText, refs: RewardReferences) -> jax.Array:
    """1 iff the stripped text of the first ANSWER block equals the reference answer (bytewise = as str)."""
    start, end, found = _first_block(t, "ANSWER")
    left = jnp.minimum(gather(t.next_nonspace, start, t.x.shape[1]), end)
    right = jnp.maximum(gather(t.last_nonspace, end - 1, -1) + 1, left)
    k = jnp.arange(refs.answer.shape[1])[None, :]
    text = gather(t.x, left[:, None] + k, -1)
    same = jnp.all((text == refs.answer.astype(jnp.int32)) | (k >= refs.answer_len[:, None]), axis=1)
    return (found & (right - left == refs.answer_len) & same).astype(jnp.float32)


def _pairs(t: DecodedText):
    """Every ``name(number)`` of ``chains.TYPE_PAIR_PATTERN.findall(block)`` in the first TYPE block, keyed by its '('.

    A name is \\w and \\s characters starting and ending with \\w, followed by '(' -- which is neither, so the name is
    the tail of the maximal \\w/\\s run that ends right before that '('; the run must end with \\w and the name starts
    at the run's first \\w. ``[\\d.]+`` then takes the maximal run of \\d and '.' after '(' (backtracking cannot help:
    ')' is neither) and ')' must follow. Runs never cross the block's edges ('>' and '<' are neither \\w nor \\s),
    and no findall match can start inside another one's number (every \\w run there ends at '.' or ')', not '('),
    so each such '(' is one findall match, in order.

    Returns is_pair, name_start, whether the number is a valid decimal, and its value: [B, N] each.
    """
    size = t.x.shape[1]
    pos = positions(t)
    block_start, block_end, found = _first_block(t, "TYPE")
    run_start = jnp.where(pos == 0, 0, shift(t.last_break, -1) + 1)  # of the \w/\s run ending before i
    name_start = gather(t.next_word, run_start, size)
    number_end = shift(t.next_nonnumeric, 1, fill=size)  # where ')' must be
    n_digits = gather(t.digits_before, number_end, 0) - t.digits_before[:, 1:]
    n_dots = gather(t.dots_before, number_end, 0) - t.dots_before[:, 1:]
    is_pair = (found[:, None] & (pos >= block_start[:, None]) & (pos < block_end[:, None])
               & (t.x == ord("(")) & shift(t.word, -1) & (number_end > pos + 1)
               & (number_end < t.n[:, None]) & (gather(t.x, number_end, -1) == ord(")")))
    valid = (n_digits >= 1) & (n_dots <= 1)  # what Python's float() accepts among [\d.]+ strings
    return is_pair, name_start, valid, _number_values(t, number_end)


def _number_values(t: DecodedText, number_end: jax.Array) -> jax.Array:
    """float32 [B, N]: at each '(' the value of the \\d/'.' run after it, up to ``number_end`` (used where valid).

    The first nine significant digits form an integer M (exact in int32: a digit adds d * 10**(8 - rank) and
    per-run sums are differences of one wrapping cumsum); the value is M * 10**(p - 8), p the power of ten of the
    leading significant digit. Digits past the ninth change the value by under 1e-8 relative.
    """
    size = t.x.shape[1]
    pos = positions(t)
    run_first = jnp.where(pos == 0, 0, shift(t.last_nonnumeric, -1) + 1)
    leading = gather(t.next_significant, run_first, size)
    rank = t.digits_before[:, :-1] - gather(t.digits_before, leading, 0)
    place = jnp.asarray(10 ** np.arange(8, -1, -1), jnp.int32)[jnp.clip(rank, 0, 8)]
    digit = jnp.where(t.digit_lead & (rank >= 0) & (rank <= 8), t.digit_value * place, 0)
    mantissa_before = jnp.pad(jnp.cumsum(digit, axis=1), ((0, 0), (1, 0)))

    # The run after a '(' at q starts at q + 1.
    mantissa = gather(mantissa_before, number_end, 0) - mantissa_before[:, 1:]
    first = shift(leading, 1, fill=size)
    point = jnp.minimum(shift(t.next_dot, 1, fill=size), number_end)
    exponent = gather(t.digits_before, point, 0) - gather(t.digits_before, first + 1, 0) - 8
    pow10 = jnp.asarray(_POW10)  # 10**k is exact in float32 up to k = 10, so most values see one rounding
    up, down = pow10[jnp.clip(exponent, 0, 64)], pow10[jnp.clip(-exponent, 0, 64)]
    m = mantissa.astype(jnp.float32)
    value = jnp.where(exponent >= 0, m * up, m / down)
    return jnp.where(first < number_end, value, 0.0)


def _reference_index(t: DecodedText, name_start: jax.Array, refs: RewardReferences) -> jax.Array:
    """int32 [B, N]: which reference name equals the name ending before each byte (bytewise), or -1."""
    length = positions(t) - name_start
    names = refs.names.astype(jnp.int32)

    def compare_byte(j, equal):
        byte = gather(t.x, name_start + j, -1)
        return equal & ((byte[:, :, None] == names[:, None, :, j]) | (j >= refs.name_len[:, None, :]))

    equal = jax.lax.fori_loop(0, names.shape[2], compare_byte, length[:, :, None] == refs.name_len[:, None, :])
    return jnp.where(equal.any(-1), jnp.argmax(equal, axis=-1), -1).astype(jnp.int32)


def degradation_reward(t: DecodedText, refs: RewardReferences, paper: jax.Array) -> jax.Array:
    """r_deg of SPEC §3: the paper variant where ``paper`` (bool), else the reference-code variant (see the module
    docstring for invalid numbers)."""
    size = t.x.shape[1]
    pos = positions(t)
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
    text = analyse(*detokenize(completion_ids, completion_mask, table, max_bytes), table.char_classes)
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
    completions with ``token_text.completion_byte_lengths``. Jitted: one compilation per shape and ``max_bytes``; the
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
    length = fixed_size(length, longest, 16, "length")
    batch = fixed_size(batch, len(id_lists), 8, "batch")
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
    max_bytes = bucket_size(int(max((host_lengths[seq].sum() for seq in id_lists if seq), default=0)), 64)
    out = compute(ids, mask, refs, table, variant=variant, weights=weights, max_bytes=max_bytes)
    return {k: np.asarray(v)[:len(completions)] for k, v in out.items()}
