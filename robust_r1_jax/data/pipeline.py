"""grain input pipelines: fixed-shape SFT and RL batches, sharded per host, deterministic, resumable.

Entry points (the SFT trainer and the GRPO loop call exactly these)::

    source = tfds_builder.data_source(dataset_dir, "train")     # or any sequence of example dicts
    processor = Processor.from_pretrained(model_dir)            # tokenizer + image settings
    config = PipelineConfig(batch_size=8, seq_len=2048, patch_bucket=1024, num_epochs=None)

    loader = make_sft_loader(source, processor, config, process_index=None, process_count=None)
    loader = make_rl_loader(source, processor, config, process_index=None, process_count=None)
    for batch in loader: ...                   # dict of NumPy arrays, batch-first
    state = loader.get_state()                 # JSON-serialisable dict (json.dumps works)
    loader.set_state(state)                    # the next batch is the one after the saved state
    loader.close()                             # stops worker processes (also a context manager)

Worker processes (``worker_count > 0``) end with this process however it ends, kill -9 included
(``data/worker_exit.py``), so no orphan keeps memory or the batches' shared memory.

``process_index`` / ``process_count`` default to ``jax.process_index()`` / ``jax.process_count()``.
``loader.num_batches`` is the number of batches this host yields (None when ``num_epochs`` is None).
The prompt, the rows of the SFT and RL batches and the image budget are described in ``data/rows.py``.

**Order.** Every epoch is a permutation of the whole source, drawn from ``(seed, epoch)``; the epochs are
concatenated into one stream, cut into global batches of ``batch_size * process_count`` rows, and host ``h``
takes rows ``[h * batch_size, (h + 1) * batch_size)`` of each global batch -- the same split
``jax.make_array_from_process_local_data`` expects. In grain terms: the stream's rows are batched by
``batch_size`` and host ``h`` takes batches ``h::process_count``. Every batch is a pure function of its index,
so the result does not depend on ``worker_count``, and a saved state is just the next batch index (plus the
settings it is only valid for). With ``drop_remainder=False`` the last global batch is filled up with repeats
of real examples marked ``example_index == -1``, so every batch keeps its shape.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from robust_r1_jax.data import worker_exit
from robust_r1_jax.data.rows import PipelineConfig, RLRow, SFTRow
from robust_r1_jax.model.processor import Processor

__all__ = ["PipelineConfig", "StreamOrder", "BatchIterator", "make_sft_loader", "make_rl_loader"]

STATE_FORMAT = "robust_r1_jax.data.pipeline/1"


# ---- order: which example sits in which row ------------------------------------------------------------------
# Not grain's MapDataset.shuffle: its index_shuffle draws other permutations than NumPy's, and the runs' data
# order (and so the demo's numbers) is NumPy's default_rng([seed, epoch]).permutation.

@functools.lru_cache(maxsize=2)
def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of ``range(size)`` in ``epoch`` (read-only); two are kept: consecutive rows share an epoch."""
    permutation = np.random.default_rng([seed, epoch]).permutation(size)
    permutation.setflags(write=False)
    return permutation


@dataclasses.dataclass(frozen=True)
class StreamOrder:
    """Position in the global stream -> (source index, is padding); see the module docstring's **Order**."""

    dataset_size: int
    global_batch: int
    seed: int
    shuffle: bool
    num_epochs: int | None
    drop_remainder: bool

    @property
    def stream_length(self) -> int | None:
        """Real rows over all epochs and hosts; None when infinite."""
        return None if self.num_epochs is None else self.dataset_size * self.num_epochs

    @property
    def num_batches(self) -> int | None:
        """Global batches in the stream (each host yields this many batches); None when infinite."""
        if self.stream_length is None:
            return None
        if self.drop_remainder:
            return self.stream_length // self.global_batch
        return -(-self.stream_length // self.global_batch)

    def __call__(self, position: int) -> tuple[int, bool]:
        """Padding (past the stream's end) repeats an earlier real row."""
        padding = self.stream_length is not None and position >= self.stream_length
        if padding:
            position %= self.stream_length
        epoch, offset = divmod(position, self.dataset_size)
        if not self.shuffle:
            return offset, padding
        return int(epoch_permutation(self.seed, epoch, self.dataset_size)[offset]), padding


# ---- the loader ----------------------------------------------------------------------------------------------

class BatchIterator:
    """Iterator over fixed-shape batches whose position can be saved (``get_state``) and restored.

    The saved position is our own global batch counter, not grain's iterator state: under ``mp_prefetch``
    grain's state is one entry per worker process (it restores only with the same ``worker_count``), and
    its element counts belong to one host's dataset. ``next_batch`` counts global batches, so a state
    restores under any worker count and on any host count with the same global batch.
    """

    def __init__(self, batches: grain.MapDataset, order: StreamOrder, config: PipelineConfig, kind: str,
                 process_index: int, process_count: int):
        self._batches, self._order, self._config, self._kind = batches, order, config, kind
        self._host = {"batch_size": config.batch_size, "process_index": process_index,
                      "process_count": process_count}
        self._next_batch = 0
        self._iterator = None

    @property
    def num_batches(self) -> int | None:
        return self._order.num_batches

    @property
    def order(self) -> StreamOrder:
        return self._order

    def _settings(self) -> dict:
        order = self._order
        return {"format": STATE_FORMAT, "kind": self._kind, "dataset_size": order.dataset_size, **self._host,
                "seed": order.seed, "shuffle": order.shuffle, "num_epochs": order.num_epochs,
                "drop_remainder": order.drop_remainder}

    def get_state(self) -> dict:
        return {**self._settings(), "next_batch": self._next_batch}

    def set_state(self, state: Mapping[str, Any]) -> None:
        expected = self._settings()
        if "next_batch" not in state:
            raise ValueError(f"not a pipeline state (no 'next_batch'): {dict(state)}")
        # next_batch counts global batches, so any host layout with the same global batch resumes the stream:
        # every host of a multi-process job restores process 0's state, and a job may resume on fewer hosts.
        same_global = ((state.get("batch_size") or 0) * (state.get("process_count") or 0)
                       == self._order.global_batch)
        differs = {k: (state.get(k), v) for k, v in expected.items()
                   if state.get(k) != v and not (same_global and k in self._host)}
        if differs:
            detail = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in differs.items())
            raise ValueError(f"the saved pipeline state belongs to a different loader ({detail})")
        next_batch = int(state["next_batch"])
        if next_batch < 0 or (self.num_batches is not None and next_batch > self.num_batches):
            raise ValueError(f"saved next_batch={next_batch} is outside [0, {self.num_batches}]")
        self.close()
        self._next_batch = next_batch

    def _open(self):
        config = self._config
        read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_batches)
        dataset = self._batches[self._next_batch:].to_iter_dataset(read)
        if config.worker_count > 0:
            _allow_unparsed_absl_flags()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=config.worker_count, per_worker_buffer_size=max(1, config.prefetch_batches)),
                worker_init_fn=functools.partial(worker_exit.die_with_parent, os.getpid()))
        return iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.num_batches is not None and self._next_batch >= self.num_batches:
            self.close()
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._open()
        batch = next(self._iterator)
        self._next_batch += 1
        return batch

    def close(self) -> None:
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except
            pass  # interpreter shutdown: the workers are being torn down anyway


def _allow_unparsed_absl_flags() -> None:
    """grain's worker start reads absl flags; outside ``absl.app`` (tests, notebooks) nobody parsed them.

    Marking them parsed keeps every default; a later ``absl.app.run`` still parses the command line.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        jax_process = grain.sharding.ShardByJaxProcess()  # only the parent asks; workers get the numbers
        process_index = jax_process.shard_index if process_index is None else process_index
        process_count = jax_process.shard_count if process_count is None else process_count
    return int(process_index), int(process_count)


def _make_loader(row_type, kind: str, source: Sequence, processor: Processor, config: PipelineConfig,
                 process_index: int | None, process_count: int | None) -> BatchIterator:
    process_index, process_count = _host(process_index, process_count)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is outside [0, process_count={process_count})")
    if len(source) == 0:
        raise ValueError("the source is empty: nothing to batch")
    order = StreamOrder(dataset_size=len(source), global_batch=config.batch_size * process_count,
                        seed=config.seed, shuffle=config.shuffle, num_epochs=config.num_epochs,
                        drop_remainder=config.drop_remainder)
    num_batches = order.num_batches
    if num_batches == 0:
        raise ValueError(f"{order.dataset_size} examples x {order.num_epochs} epochs do not fill one global "
                         f"batch of {order.global_batch} rows ({config.batch_size} per host x {process_count} "
                         f"hosts) with drop_remainder=True")
    if num_batches is None:  # effectively endless; grain datasets need a length
        num_batches = sys.maxsize // order.global_batch
    rows = grain.MapDataset.range(num_batches * order.global_batch).map(order)
    batches = rows.map(row_type(source, processor, config)).batch(config.batch_size)
    host_batches = batches[process_index::process_count]
    return BatchIterator(host_batches, order, config, kind, process_index, process_count)


def make_sft_loader(source: Sequence, processor: Processor, config: PipelineConfig, *,
                    process_index: int | None = None, process_count: int | None = None) -> BatchIterator:
    """SFT batches of this host's share of ``source`` (see the module docstring)."""
    return _make_loader(SFTRow, "sft", source, processor, config, process_index, process_count)


def make_rl_loader(source: Sequence, processor: Processor, config: PipelineConfig, *,
                   process_index: int | None = None, process_count: int | None = None) -> BatchIterator:
    """RL prompt batches with reward references of this host's share of ``source``."""
    return _make_loader(RLRow, "rl", source, processor, config, process_index, process_count)
