"""Packed SFT: whole examples placed first-fit into the rows of each global batch (``data.packing``).

Every row of an unpacked SFT batch holds one example right-padded to ``seq_len``; a Robust-R1 row is about
650-950 real tokens of 2048 (SPEC §8), so most of the step would compute padding. Packed, a global batch is
``rows = batch_size * process_count`` rows, and the stream's examples (in the loader's order: the same epoch
permutations as unpacked) go one by one into the first row they fit, by three budgets: ``seq_len`` tokens,
``patch_bucket`` image patches and ``image_slots`` images. An example that fits none of the rows closes the
batch and opens the next one. An example longer than ``seq_len`` keeps the unpacked truncation rule (it is cut
to ``seq_len``, with the warning) and so fills a row alone. The last batch of a finite stream is kept, its
empty rows all padding (zero loss): no example is dropped.

The plan is computed from each example's size alone (``rows.SFTRow.measure``: tokens, patches, images), so
batch ``b`` is a pure function of ``b``: any worker builds it, any worker count gives the same batches, and a
saved loader state is still just the next batch index. (In the same spirit as MaxText's first-fit packing in
its grain pipeline, written here against our own order and budgets.)
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from robust_r1_jax.data.rows import ExampleSize


@dataclasses.dataclass(frozen=True)
class RowBudget:
    """What one packed row holds."""

    seq_len: int
    patch_bucket: int
    image_slots: int

    def clip(self, size: ExampleSize) -> ExampleSize:
        """The example as the row sees it: tokens past ``seq_len`` are truncated."""
        return dataclasses.replace(size, tokens=min(size.tokens, self.seq_len))


def first_fit(sizes: Iterator[tuple[int, ExampleSize]], rows: int, budget: RowBudget
              ) -> Iterator[list[list[int]]]:
    """Batches of ``rows`` rows, each row the list of example keys placed in it, in stream order.

    ``sizes`` yields (key, size) in stream order. An example goes to the first row with room for its tokens,
    patches and images; when no row has room the batch is emitted and the example opens the next one. The last,
    partly filled batch is emitted too. Raises ValueError for an example that fits no empty row (more patches
    or images than a row holds: the row builder refuses those first).
    """
    limit = (budget.seq_len, budget.patch_bucket, budget.image_slots)
    used = [[0, 0, 0] for _ in range(rows)]
    batch: list[list[int]] = [[] for _ in range(rows)]
    for key, size in sizes:
        need = dataclasses.astuple(budget.clip(size))
        if any(n > m for n, m in zip(need, limit)):
            raise ValueError(f"example {key} needs {list(need)} (tokens, patches, images), more than one row "
                             f"holds ({list(limit)})")
        row = next((r for r in range(rows) if all(u + n <= m for u, n, m in zip(used[r], need, limit))), None)
        if row is None:
            yield batch
            used = [[0, 0, 0] for _ in range(rows)]
            batch = [[] for _ in range(rows)]
            row = 0
        used[row] = [u + n for u, n in zip(used[row], need)]
        batch[row].append(key)
    if any(batch):
        yield batch


class PackingPlan:
    """Global batch index -> its rows of stream positions, computed lazily and kept (a few ints per example).

    ``order(position) -> (source index, is padding)`` is the loader's ``StreamOrder``; ``sizes[source index]``
    an ``ExampleSize`` or None for an example that cannot become a row (left out). ``stream_length`` None is an
    endless stream. Thread-safe: grain's read threads ask for batches concurrently.
    """

    def __init__(self, order: Callable[[int], tuple[int, bool]], stream_length: int | None,
                 sizes: Sequence[ExampleSize | None], rows: int, budget: RowBudget):
        self.rows, self.budget = rows, budget
        self._order, self._sizes, self._stream_length = order, list(sizes), stream_length
        if not any(s is not None for s in self._sizes):
            raise ValueError("no example of the source can become a packed row (every one was refused)")
        self._batches: list[list[list[int]]] = []
        self._plan = first_fit(self._stream(), rows, budget)
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        # a worker process re-plans from the sizes, deterministically
        state.update(_batches=[], _plan=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plan = first_fit(self._stream(), self.rows, self.budget)
        self._lock = threading.Lock()

    def _stream(self) -> Iterator[tuple[int, ExampleSize]]:
        position = 0
        while self._stream_length is None or position < self._stream_length:
            index, _ = self._order(position)
            if self._sizes[index] is not None:
                yield position, self._sizes[index]
            position += 1

    def _extend_to(self, count: int | None) -> None:
        with self._lock:
            while count is None or len(self._batches) < count:
                batch = next(self._plan, None)
                if batch is None:
                    return
                self._batches.append(batch)

    @property
    def num_batches(self) -> int | None:
        """Batches in a finite stream (plans all of it); None when endless."""
        if self._stream_length is None:
            return None
        self._extend_to(None)
        return len(self._batches)

    def batch(self, index: int) -> list[list[int]]:
        self._extend_to(index + 1)
        if index >= len(self._batches):
            raise IndexError(f"batch {index} is past the stream's {len(self._batches)} packed batches")
        return self._batches[index]


# ---- the workload's length profile (aot useful MFU, benchmarks, inspect) ----------------------------------------

def robust_r1_profile() -> dict:
    """SPEC §8's real Robust-R1 SFT row in Qwen2 tokens, ranges sampled uniformly.

    template (system prompt and chat markers) ~20; one 448 x 448 image 256 tokens (1024 patches); question with
    four options 30-60; the SPEC §1 prompt suffix 188; a chain 150-450. A row is then 644-974 tokens.
    """
    return dict(template_tokens=(20, 20), image_tokens=(256, 256), images=1, question_tokens=(30, 60),
                suffix_tokens=(188, 188), chain_tokens=(150, 450))


def sample_sizes(profile: dict, count: int, merge_unit: int = 4, seed: int = 0) -> list[ExampleSize]:
    """``count`` example sizes drawn from a length ``profile`` (``robust_r1_profile``'s keys: (low, high)
    inclusive token ranges and the number of images); patches = image tokens x ``merge_unit``."""
    rng = np.random.default_rng(seed)
    draw = lambda key: rng.integers(profile[key][0], profile[key][1] + 1, count)
    images = int(profile.get("images", 1))
    image_tokens = draw("image_tokens") * images
    tokens = draw("template_tokens") + image_tokens + draw("question_tokens") + draw("suffix_tokens") + \
        draw("chain_tokens")
    return [ExampleSize(int(t), int(i) * merge_unit, images) for t, i in zip(tokens, image_tokens)]


def packing_stats(sizes: Sequence[ExampleSize], rows: int, budget: RowBudget, packing: bool) -> dict:
    """Real tokens per computed row slot and examples per row when ``sizes`` stream through the loader in
    batches of ``rows`` rows, packed or one example per row, in the steady state (the stream's last, partly
    filled batch left out): ``real_tokens``, ``row_slots``, ``padding_fraction``, ``examples_per_row``,
    ``batches`` (counted)."""
    clipped = [budget.clip(s) for s in sizes]
    if packing:
        batches = list(first_fit(iter(enumerate(clipped)), rows, budget))
        batches = batches[:-1] if len(batches) > 1 else batches
        placed = [clipped[key] for batch in batches for row in batch for key in row]
    else:
        batches = [None] * max(1, len(clipped) // rows)
        placed = clipped[:len(batches) * rows]
    real = sum(s.tokens for s in placed)
    slots = len(batches) * rows * budget.seq_len
    return dict(real_tokens=real, row_slots=slots, padding_fraction=1.0 - real / slots,
                examples_per_row=len(placed) / (len(batches) * rows), batches=len(batches))
