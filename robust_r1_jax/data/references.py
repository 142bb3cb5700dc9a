"""Reward references: the fixed-size arrays the jitted rewards (``rl/rewards.py``) compare completions with.

Built on the host from reference chains, with the chain format of ``data/chains.py``: the stripped ANSWER block, the
``name(number)`` pairs of the first TYPE block (a dict: a repeated name keeps its last value) and the chain's
length in tokens. The arrays are NumPy, built without jax (which only registers the dataclass as a pytree and
stacks per-chain arrays), so the RL input pipeline builds them once per example (``chain_references``) and the
GRPO loop only repeats them on the device.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from robust_r1_jax.data import chains

_ANSWER_BLOCK = f"{chains.open_tag('ANSWER')}...{chains.close_tag('ANSWER')}"  # as error messages name it
_TYPE_OPEN = chains.open_tag("TYPE")
_ROW_PREFIX = "reference_"  # pipeline rows carry each field as reference_<field>


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
    """The stripped text of the first ANSWER block, or None."""
    block = chains.extract_block(chain, "ANSWER")
    return None if block is None else block.strip()


def reference_pairs(chain: str) -> dict[str, float]:
    """Name -> intensity of the first TYPE block; a number Python's ``float`` rejects raises ValueError."""
    block = chains.extract_block(chain, "TYPE")
    if block is None:
        return {}
    return {name.strip(): float(value) for name, value in chains.TYPE_PAIR_PATTERN.findall(block)}


def chain_references(chain: str, tokenizer, *, answer_bytes: int, max_names: int, name_bytes: int,
                     where: str = "the reference chain") -> RewardReferences:
    """One chain's reference arrays, without the batch axis: answer uint8 [A], answer_len int32 [], names uint8
    [R, L], name_len int32 [R], values float32 [R], token_len int32 []. What the input pipeline builds per example.

    Raises ValueError naming ``where`` for a chain without an answer, a non-numeric intensity, no tokens, or an
    answer / pairs that do not fit ``answer_bytes`` (A), ``max_names`` (R) or ``name_bytes`` (L).
    """
    parsed = _parse(chain, tokenizer, where)
    for what, requested, needed in (("answer_bytes", answer_bytes, len(parsed.answer)),
                                    ("max_names", max_names, len(parsed.pairs)),
                                    ("name_bytes", name_bytes, max((len(k) for k, _ in parsed.pairs), default=0))):
        if requested < needed:
            raise ValueError(f"{where}: {what}={requested} is too small: its chain needs {needed}")
    return _arrays(parsed, answer_bytes, max_names, name_bytes)


def prepare_references(reference_chains: Sequence[str], tokenizer, *, answer_bytes: int | None = None,
                       max_names: int | None = None, name_bytes: int | None = None) -> RewardReferences:
    """Reference arrays for ``rl.rewards.compute``. Sizes default to powers of two covering the inputs; give them to
    fix shapes across batches (a reference that does not fit is an error)."""
    parsed = [_parse(chain, tokenizer, f"reference chain {i}") for i, chain in enumerate(reference_chains)]
    a = fixed_size(answer_bytes, max((len(p.answer) for p in parsed), default=0), 8, "answer_bytes")
    r = fixed_size(max_names, max((len(p.pairs) for p in parsed), default=0), 4, "max_names")
    n = fixed_size(name_bytes, max((len(k) for p in parsed for k, _ in p.pairs), default=0), 16, "name_bytes")
    if not parsed:
        return RewardReferences(answer=np.zeros((0, a), np.uint8), answer_len=np.zeros(0, np.int32),
                                names=np.zeros((0, r, n), np.uint8), name_len=np.zeros((0, r), np.int32),
                                values=np.zeros((0, r), np.float32), token_len=np.zeros(0, np.int32))
    return jax.tree.map(lambda *rows: np.stack(rows), *(_arrays(p, a, r, n) for p in parsed))


def as_row(references: RewardReferences) -> dict[str, np.ndarray]:
    """One chain's arrays (``chain_references``) as pipeline row entries ``reference_<field>``."""
    return {_ROW_PREFIX + f.name: getattr(references, f.name) for f in dataclasses.fields(RewardReferences)}


def from_batch(batch) -> RewardReferences:
    """The ``reference_<field>`` entries of a batch of rows (``as_row``) as one RewardReferences."""
    return RewardReferences(**{f.name: batch[_ROW_PREFIX + f.name] for f in dataclasses.fields(RewardReferences)})



@dataclasses.dataclass(frozen=True)
class _Parsed:
    answer: bytes                      # UTF-8 of the stripped answer
    pairs: list[tuple[bytes, float]]   # UTF-8 name, intensity
    token_len: int


def _parse(chain: str, tokenizer, where: str) -> _Parsed:
    if not isinstance(chain, str):
        raise TypeError(f"{where} is a {type(chain).__name__}, expected str")
    answer = reference_answer(chain)
    if answer is None:
        raise ValueError(f"{where} has no {_ANSWER_BLOCK} block: {chain[:80]!r}")
    if "\ufffd" in answer:
        raise ValueError(f"{where}: the answer contains U+FFFD, which cannot be told apart from "
                         f"invalid UTF-8 in a completion")
    try:
        pairs = reference_pairs(chain)
    except ValueError as e:
        raise ValueError(f"{where}: a {_TYPE_OPEN} intensity is not a number ({e})") from e
    n_tokens = len(tokenizer.encode(chain, add_special_tokens=False))
    if n_tokens == 0:
        raise ValueError(f"{where} has no tokens; r_len divides by its length")
    return _Parsed(answer.encode("utf-8"), [(name.encode("utf-8"), value) for name, value in pairs.items()],
                   n_tokens)


def _arrays(parsed: _Parsed, answer_bytes: int, max_names: int, name_bytes: int) -> RewardReferences:
    """Zero-padded arrays of one parsed chain (sizes already checked); padding names have ``name_len == -1``."""
    answer = np.zeros(answer_bytes, np.uint8)
    answer[:len(parsed.answer)] = np.frombuffer(parsed.answer, np.uint8)
    names = np.zeros((max_names, name_bytes), np.uint8)
    name_len = np.full(max_names, -1, np.int32)
    values = np.zeros(max_names, np.float32)
    for k, (name, value) in enumerate(parsed.pairs):
        names[k, :len(name)] = np.frombuffer(name, np.uint8)
        name_len[k] = len(name)
        values[k] = value
    return RewardReferences(answer=answer, answer_len=np.int32(len(parsed.answer)), names=names, name_len=name_len,
                            values=values, token_len=np.int32(parsed.token_len))


def bucket_size(n: int, minimum: int) -> int:
    """The smallest power of two >= n, at least ``minimum``: shapes in few buckets compile few times."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def fixed_size(requested: int | None, needed: int, minimum: int, what: str) -> int:
    """``requested`` if it holds ``needed`` (ValueError naming ``what`` if not), else ``bucket_size(needed)``."""
    if requested is None:
        return bucket_size(needed, minimum)
    if requested < needed:
        raise ValueError(f"{what}={requested} is too small: the inputs need {needed}")
    return requested
