"""Reward references: the fixed-size arrays the jitted rewards (``rl/rewards.py``) compare completions with.

Built on the host from reference chains, with the chain format of ``data/chains.py``: the stripped ANSWER block, the
``name(number)`` pairs of the first TYPE block (a dict: a repeated name keeps its last value) and the chain's
length in tokens. The arrays are NumPy, built without jax (which only registers the dataclass as a pytree), so the
input pipeline can build them too.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from robust_r1_jax.data import chains

_ANSWER_BLOCK = f"{chains.open_tag('ANSWER')}...{chains.close_tag('ANSWER')}"  # as error messages name it
_TYPE_OPEN = chains.open_tag("TYPE")


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


def prepare_references(reference_chains: Sequence[str], tokenizer, *, answer_bytes: int | None = None,
                       max_names: int | None = None, name_bytes: int | None = None) -> RewardReferences:
    """Reference arrays for ``rl.rewards.compute``. Sizes default to powers of two covering the inputs; give them to
    fix shapes across batches (a reference that does not fit is an error)."""
    answers, pair_lists, token_lens = [], [], []
    for i, chain in enumerate(reference_chains):
        if not isinstance(chain, str):
            raise TypeError(f"reference chain {i} is a {type(chain).__name__}, expected str")
        answer = reference_answer(chain)
        if answer is None:
            raise ValueError(f"reference chain {i} has no {_ANSWER_BLOCK} block: {chain[:80]!r}")
        if "\ufffd" in answer:
            raise ValueError(f"reference chain {i}: the answer contains U+FFFD, which cannot be told apart from "
                             f"invalid UTF-8 in a completion")
        try:
            pairs = reference_pairs(chain)
        except ValueError as e:
            raise ValueError(f"reference chain {i}: a {_TYPE_OPEN} intensity is not a number ({e})") from e
        n_tokens = len(tokenizer.encode(chain, add_special_tokens=False))
        if n_tokens == 0:
            raise ValueError(f"reference chain {i} has no tokens; r_len divides by its length")
        answers.append(answer.encode("utf-8"))
        pair_lists.append([(name.encode("utf-8"), value) for name, value in pairs.items()])
        token_lens.append(n_tokens)
    a = fixed_size(answer_bytes, max((len(x) for x in answers), default=0), 8, "answer_bytes")
    r = fixed_size(max_names, max((len(p) for p in pair_lists), default=0), 4, "max_names")
    n = fixed_size(name_bytes, max((len(k) for p in pair_lists for k, _ in p), default=0), 16, "name_bytes")
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
