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

``process_index`` / ``process_count`` default to ``jax.process_index()`` / ``jax.process_count()``.
``loader.num_batches`` is the number of batches this host yields (None when ``num_epochs`` is None).

**Prompt.** The user turn is the image followed by ``chains.format_prompt(question, options)``::

    {question}
    Options:
    0. {option 0}
    1. {option 1}
    {the SPEC §1 prompt suffix, chains.PROMPT_SUFFIX}

inside the Qwen2.5-VL chat template (``processor.chat_prompt``). SFT appends the chain as the assistant
turn (``processor.chat_completion``); RL stops after ``<|im_start|>assistant\\n``.

**SFT batch** (S = ``seq_len``, P = ``patch_bucket``, I = ``image_slots``, D = patch dim)::

    input_ids       int32   [B, S]     right padded with the tokenizer's pad id
    attention_mask  int32   [B, S]     1 on real tokens
    loss_mask       int32   [B, S]     1 on the chain's tokens and its closing <|im_end|> only
    pixel_values    float32 [B, P, D]  each row's patches, then zero rows
    image_grid_thw  int32   [B, I, 3]  each row's grids, then (0, 0, 0) rows
    position_ids    int32   [B, 3, S]  M-RoPE positions (the model's layout is [3, B, S]: transpose)
    example_index   int64   [B]        index into the source; -1 on padding rows
    truncated_tokens int32  [B]        tokens cut off the end of the row to fit S (0 almost always)

**RL batch** (S = ``seq_len`` is the prompt length, C = ``reference_bytes``, K = ``degradation_slots``)::

    prompt_ids, prompt_mask           int32 [B, S]   LEFT padded: the prompt ends at column S - 1
    pixel_values, image_grid_thw, position_ids, example_index     as for SFT
    reference_chain         uint8 [B, C]   UTF-8 of the reference chain, zero padded
    reference_chain_length  int32 [B]      its length in bytes (see ``reference_texts``)
    answer_index            int32 [B]      the correct option
    degradation_ids         int32 [B, K]   indices into ``degrade.NAMES``, -1 padding
    degradation_values      float32 [B, K] their intensities, 0 padding
    summed_intensity        float32 [B]    sum of the intensities

**Order.** Every epoch is a permutation of the whole source, drawn from ``(seed, epoch)``; the epochs are
concatenated into one stream, cut into global batches of ``batch_size * process_count`` rows, and host ``h``
takes rows ``[h * batch_size, (h + 1) * batch_size)`` of each global batch -- the same split
``jax.make_array_from_process_local_data`` expects. Every batch is a pure function of its index, so the
result does not depend on ``worker_count``, and a saved state is just the next batch index (plus the settings
it is only valid for). With ``drop_remainder=False`` the last global batch is filled up with repeats of real
examples marked ``example_index == -1`` (SFT: zero loss mask; RL loops must give them zero weight), so
every batch keeps its shape.

**Images.** Each image is resized by the processor's smart resize with ``max_pixels`` lowered so that the
example's images fit the patch bucket (``patch_bucket // images`` patches each). An example that still does
not fit (``min_pixels`` too large, an extreme aspect ratio, more images than slots, image tokens past S, a
prompt longer than S for RL, a chain longer than C) is an error naming its id.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import grain
import numpy as np
from PIL import Image

from robust_r1_jax import degrade
from robust_r1_jax.data import chains
from robust_r1_jax.model.processor import END_OF_TEXT, ImageProcessor, Processor

logger = logging.getLogger(__name__)

STATE_FORMAT = "robust_r1_jax.data.pipeline/1"
PADDING_INDEX = -1
_DEGRADATION_IDS = {name: i for i, name in enumerate(degrade.NAMES)}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Buckets, order and parallelism of one loader (``batch_size`` is per host)."""

    batch_size: int = 8
    seq_len: int = 2048
    patch_bucket: int = 1024
    image_slots: int = 1
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1  # None: repeat forever
    worker_count: int = 0  # grain worker processes; 0 = in this process
    drop_remainder: bool = True
    read_threads: int = 2  # threads per process building rows
    prefetch_batches: int = 4  # batches buffered per process
    reference_bytes: int = 4096  # RL: C
    degradation_slots: int = 16  # RL: K
    prompt_suffix: str = chains.PROMPT_SUFFIX

    def __post_init__(self):
        positive = ("batch_size", "seq_len", "patch_bucket", "image_slots", "min_pixels", "max_pixels",
                    "reference_bytes", "degradation_slots")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"PipelineConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("worker_count", "read_threads", "prefetch_batches"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"PipelineConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_epochs is not None and self.num_epochs <= 0:
            raise ValueError(f"PipelineConfig.num_epochs must be positive or None, got {self.num_epochs}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"PipelineConfig.min_pixels={self.min_pixels} exceeds max_pixels={self.max_pixels}")


# ---- order: which example sits in which row ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IndexPlan:
    """Maps (batch, row) of one host to a source index; see the module docstring's **Order**."""

    dataset_size: int
    batch_size: int
    process_index: int
    process_count: int
    seed: int
    shuffle: bool
    num_epochs: int | None
    drop_remainder: bool

    def __post_init__(self):
        if self.dataset_size <= 0:
            raise ValueError("the source is empty: nothing to batch")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index={self.process_index} is outside [0, process_count="
                             f"{self.process_count})")
        if self.num_batches == 0:
            raise ValueError(f"{self.dataset_size} examples x {self.num_epochs} epochs do not fill one global "
                             f"batch of {self.global_batch} rows ({self.batch_size} per host x "
                             f"{self.process_count} hosts) with drop_remainder=True")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.process_count

    @property
    def stream_length(self) -> int | None:
        """Real rows over all epochs and hosts; None when infinite."""
        return None if self.num_epochs is None else self.dataset_size * self.num_epochs

    @property
    def num_batches(self) -> int | None:
        if self.stream_length is None:
            return None
        if self.drop_remainder:
            return self.stream_length // self.global_batch
        return -(-self.stream_length // self.global_batch)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.dataset_size)

    def stream_position(self, host_row: int) -> int:
        batch, row = divmod(host_row, self.batch_size)
        return batch * self.global_batch + self.process_index * self.batch_size + row

    def source_index(self, position: int, permutation: Callable[[int], np.ndarray]) -> tuple[int, bool]:
        """(source index, is padding) of a stream position; padding repeats an earlier real row."""
        padding = self.stream_length is not None and position >= self.stream_length
        if padding:
            position %= self.stream_length
        epoch, offset = divmod(position, self.dataset_size)
        if not self.shuffle:
            return offset, padding
        return int(permutation(epoch)[offset]), padding


class _EpochPermutations:
    """The plan's permutations, the last couple kept: consecutive rows almost always share an epoch."""

    def __init__(self, plan: IndexPlan, keep: int = 2):
        self._plan, self._keep = plan, keep
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                if len(self._cache) >= self._keep:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[epoch] = self._plan.permutation(epoch)
            return self._cache[epoch]


# ---- M-RoPE positions on the host ----------------------------------------------------------------------------

def mrope_positions(input_ids, attention_mask, image_grid_thw, *, image_token_id: int,
                    spatial_merge_size: int) -> tuple[np.ndarray, int]:
    """One row's M-RoPE positions ``[3, S]`` and its next position: NumPy twin of ``rope_index.mrope_position_ids``.

    Workers stay free of JAX. Raises ``ValueError`` where the image tokens do not match the grids.
    """
    ids = np.asarray(input_ids)
    real_columns = np.flatnonzero(np.asarray(attention_mask).astype(bool))
    tokens = ids[real_columns]
    image_at = np.flatnonzero(tokens == image_token_id)
    positions = np.zeros((3, len(tokens)), np.int64)
    cursor = start = consumed = 0  # token index, next position value, image tokens used
    for t, h, w in np.asarray(image_grid_thw, np.int64).reshape(-1, 3):
        if t * h * w == 0:
            continue
        rows, cols = h // spatial_merge_size, w // spatial_merge_size
        count = int(t * rows * cols)
        if consumed + count > len(image_at):
            raise ValueError(f"an image of grid {(int(t), int(h), int(w))} needs {count} image tokens but only "
                             f"{len(image_at) - consumed} are left in the row")
        first = int(image_at[consumed])
        if image_at[consumed + count - 1] != first + count - 1:
            raise ValueError(f"the {count} image tokens of grid {(int(t), int(h), int(w))} are split by text")
        positions[:, cursor:first] = start + np.arange(first - cursor)
        start += first - cursor
        offset = np.arange(count)
        positions[0, first:first + count] = start + offset // (rows * cols)
        positions[1, first:first + count] = start + (offset % (rows * cols)) // cols
        positions[2, first:first + count] = start + offset % cols
        start += int(max(rows, cols))
        cursor, consumed = first + count, consumed + count
    if consumed != len(image_at):
        raise ValueError(f"{len(image_at) - consumed} image tokens are not covered by any image grid")
    positions[:, cursor:] = start + np.arange(len(tokens) - cursor)
    out = np.zeros((3, ids.shape[-1]), np.int32)
    out[:, real_columns] = positions
    return out, int(positions.max()) + 1 if len(tokens) else 0


# ---- one example to one row ----------------------------------------------------------------------------------

def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _texts(values) -> list[str]:
    return [_text(v) for v in (values if values is not None else [])]


def _image_array(value, where: str) -> np.ndarray:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            with Image.open(io.BytesIO(bytes(value))) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{where}: the image bytes do not decode ({e})") from e
    return np.asarray(value)


def example_images(example: Mapping, where: str) -> list[np.ndarray]:
    """An example's images: ``image`` (the tfds schema) or a list under ``images``."""
    if "images" in example:
        return [_image_array(v, where) for v in example["images"]]
    if "image" in example:
        return [_image_array(example["image"], where)]
    raise ValueError(f"{where}: the example has no 'image' field")


def example_name(example: Mapping, index: int) -> str:
    name = _text(example["id"]) if "id" in example else "?"
    return f"example {name!r} (source index {index})"


def user_text(example: Mapping, suffix: str) -> str:
    return chains.format_prompt(_text(example["question"]), _texts(example.get("options")), suffix)


class _RowBuilder:
    """Shared by the SFT and RL rows: images to the bucket, tokenisation, positions."""

    def __init__(self, source: Sequence, processor: Processor, config: PipelineConfig, plan: IndexPlan):
        images = processor.image_processor
        if config.patch_bucket % images.merge_size ** 2:
            raise ValueError(f"patch_bucket={config.patch_bucket} must be a multiple of merge_size**2="
                             f"{images.merge_size ** 2}")
        self.source, self.config, self.plan = source, config, plan
        self.processor = processor
        self.pad_id = self._pad_id(processor)
        self._permutations = _EpochPermutations(plan)
        self._local = threading.local()

    @staticmethod
    def _pad_id(processor: Processor) -> int:
        pad = getattr(processor.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else processor.token_ids[END_OF_TEXT]

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_local"], state["_permutations"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._permutations = _EpochPermutations(self.plan)
        self._local = threading.local()

    def _processor_for(self, num_images: int) -> Processor:
        """A per-thread processor (tokenizers are not safe to share) whose max_pixels fits the bucket."""
        cache = getattr(self._local, "processors", None)
        if cache is None:
            cache = self._local.processors = {}
        if num_images not in cache:
            base = self.processor.image_processor
            per_image = (self.config.patch_bucket // num_images) * base.patch_size ** 2
            max_pixels = min(self.config.max_pixels, per_image)
            tokenizer = pickle.loads(pickle.dumps(self.processor.tokenizer))
            image_processor = ImageProcessor(
                min_pixels=min(self.config.min_pixels, max_pixels), max_pixels=max_pixels,
                patch_size=base.patch_size, temporal_patch_size=base.temporal_patch_size,
                merge_size=base.merge_size, image_mean=base.image_mean, image_std=base.image_std)
            cache[num_images] = Processor(tokenizer, image_processor, self.processor.system)
        return cache[num_images]

    def locate(self, host_row: int) -> tuple[int, bool]:
        return self.plan.source_index(self.plan.stream_position(host_row), self._permutations)

    def encode(self, example: Mapping, index: int, answer: str | None) -> tuple[dict, Processor, str]:
        where = example_name(example, index)
        images = example_images(example, where)
        if len(images) > self.config.image_slots:
            raise ValueError(f"{where} has {len(images)} images but image_slots={self.config.image_slots}")
        processor = self._processor_for(max(len(images), 1))
        budget = processor.image_processor
        if self.config.min_pixels > budget.max_pixels:
            raise ValueError(f"{where}: min_pixels={self.config.min_pixels} needs more patches per image than "
                             f"the bucket of {self.config.patch_bucket} patches allows for {len(images)} image(s)")
        try:
            encoded = processor.encode(user_text(example, self.config.prompt_suffix), images, answer)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        patches = encoded["pixel_values"].shape[0]
        if patches > self.config.patch_bucket:
            raise ValueError(f"{where}: its image(s) need {patches} patches (grids "
                             f"{encoded['image_grid_thw'].tolist()}), more than patch_bucket="
                             f"{self.config.patch_bucket}")
        return encoded, processor, where

    def vision(self, encoded: dict) -> tuple[np.ndarray, np.ndarray]:
        pixels, grid = encoded["pixel_values"], encoded["image_grid_thw"]
        padded = np.zeros((self.config.patch_bucket, self.processor.image_processor.patch_dim), np.float32)
        padded[:len(pixels)] = pixels
        grid_slots = np.zeros((self.config.image_slots, 3), np.int32)
        grid_slots[:len(grid)] = grid
        return padded, grid_slots

    def positions(self, ids, mask, grid, processor: Processor, where: str) -> np.ndarray:
        try:
            positions, _ = mrope_positions(ids, mask, grid, image_token_id=processor.image_token_id,
                                           spatial_merge_size=processor.image_processor.merge_size)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        return positions


class SFTRow(_RowBuilder):
    """Host row -> one SFT row (prompt + chain, right padded)."""

    def __call__(self, host_row: int) -> dict:
        index, padding = self.locate(host_row)
        example = self.source[index]
        encoded, processor, where = self.encode(example, index, _text(example["chain"]))
        seq_len = self.config.seq_len
        ids, loss = encoded["input_ids"], encoded["loss_mask"]
        image_columns = np.flatnonzero(ids == processor.image_token_id)
        if len(image_columns) and image_columns[-1] + 1 >= seq_len:  # its <|vision_end|> must fit too
            raise ValueError(f"{where}: its image tokens run to position {image_columns[-1] + 1}, beyond "
                             f"seq_len={seq_len}; raise seq_len or lower patch_bucket / max_pixels")
        truncated = max(0, len(ids) - seq_len)
        if truncated:
            logger.warning("%s: %d tokens cut to fit seq_len=%d", where, truncated, seq_len)
        length = min(len(ids), seq_len)
        input_ids = np.full(seq_len, self.pad_id, np.int32)
        input_ids[:length] = ids[:length]
        attention_mask = (np.arange(seq_len) < length).astype(np.int32)
        loss_mask = np.zeros(seq_len, np.int32)
        if not padding:
            loss_mask[:length] = loss[:length]
        pixel_values, grid = self.vision(encoded)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "loss_mask": loss_mask,
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
            "position_ids": self.positions(input_ids, attention_mask, grid, processor, where),
            "example_index": np.int64(PADDING_INDEX if padding else index),
            "truncated_tokens": np.int32(truncated),
        }


class RLRow(_RowBuilder):
    """Host row -> one RL row (prompt left padded, plus the reward references)."""

    def __call__(self, host_row: int) -> dict:
        index, padding = self.locate(host_row)
        example = self.source[index]
        encoded, processor, where = self.encode(example, index, None)
        seq_len, ids = self.config.seq_len, encoded["input_ids"]
        if len(ids) > seq_len:
            raise ValueError(f"{where}: its prompt has {len(ids)} tokens, more than seq_len={seq_len}")
        prompt_ids = np.full(seq_len, self.pad_id, np.int32)
        prompt_ids[seq_len - len(ids):] = ids
        prompt_mask = (np.arange(seq_len) >= seq_len - len(ids)).astype(np.int32)
        pixel_values, grid = self.vision(encoded)
        row = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "pixel_values": pixel_values,
            "image_grid_thw": grid,
            "position_ids": self.positions(prompt_ids, prompt_mask, grid, processor, where),
            "example_index": np.int64(PADDING_INDEX if padding else index),
        }
        row.update(self.references(example, where))
        return row

    def references(self, example: Mapping, where: str) -> dict:
        chain = _text(example["chain"]).encode("utf-8")
        if len(chain) > self.config.reference_bytes:
            raise ValueError(f"{where}: its chain has {len(chain)} UTF-8 bytes, more than reference_bytes="
                             f"{self.config.reference_bytes}")
        reference = np.zeros(self.config.reference_bytes, np.uint8)
        reference[:len(chain)] = np.frombuffer(chain, np.uint8)
        names = _texts(example.get("degradation_types"))
        values = np.asarray(example.get("degradation_intensities", []), np.float32).reshape(-1)
        if len(names) != len(values):
            raise ValueError(f"{where}: {len(names)} degradation types but {len(values)} intensities")
        if len(names) > self.config.degradation_slots:
            raise ValueError(f"{where}: {len(names)} degradations, more than degradation_slots="
                             f"{self.config.degradation_slots}")
        unknown = [n for n in names if n not in _DEGRADATION_IDS]
        if unknown:
            raise ValueError(f"{where}: unknown degradation name(s) {unknown}; expected names of degrade.NAMES")
        ids = np.full(self.config.degradation_slots, -1, np.int32)
        ids[:len(names)] = [_DEGRADATION_IDS[n] for n in names]
        padded_values = np.zeros(self.config.degradation_slots, np.float32)
        padded_values[:len(values)] = values
        return {
            "reference_chain": reference,
            "reference_chain_length": np.int32(len(chain)),
            "answer_index": np.int32(int(example["answer"])),
            "degradation_ids": ids,
            "degradation_values": padded_values,
            "summed_intensity": np.float32(values.astype(np.float64).sum()),
        }


def reference_texts(batch: Mapping[str, np.ndarray]) -> list[str]:
    """The reference chains of an RL batch as ``str``."""
    data, lengths = np.asarray(batch["reference_chain"]), np.asarray(batch["reference_chain_length"])
    return [bytes(row[:n]).decode("utf-8") for row, n in zip(data, lengths)]


# ---- the loader ----------------------------------------------------------------------------------------------

class BatchIterator:
    """Iterator over fixed-shape batches whose position can be saved (``get_state``) and restored."""

    def __init__(self, batches: grain.MapDataset, plan: IndexPlan, config: PipelineConfig, kind: str):
        self._batches, self._plan, self._config, self._kind = batches, plan, config, kind
        self._next_batch = 0
        self._iterator = None

    @property
    def num_batches(self) -> int | None:
        return self._plan.num_batches

    @property
    def plan(self) -> IndexPlan:
        return self._plan

    def _settings(self) -> dict:
        plan = self._plan
        return {"format": STATE_FORMAT, "kind": self._kind, "dataset_size": plan.dataset_size,
                "batch_size": plan.batch_size, "process_index": plan.process_index,
                "process_count": plan.process_count, "seed": plan.seed, "shuffle": plan.shuffle,
                "num_epochs": plan.num_epochs, "drop_remainder": plan.drop_remainder}

    def get_state(self) -> dict:
        return {**self._settings(), "next_batch": self._next_batch}

    def set_state(self, state: Mapping[str, Any]) -> None:
        expected = self._settings()
        if "next_batch" not in state:
            raise ValueError(f"not a pipeline state (no 'next_batch'): {dict(state)}")
        # next_batch counts global batches, so any host layout with the same global batch resumes the stream:
        # every host of a multi-process job restores process 0's state, and a job may resume on fewer hosts.
        host_layout = ("batch_size", "process_index", "process_count")
        same_global = (state.get("batch_size") or 0) * (state.get("process_count") or 0) == self._plan.global_batch
        differs = {k: (state.get(k), v) for k, v in expected.items()
                   if state.get(k) != v and not (same_global and k in host_layout)}
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
                num_workers=config.worker_count, per_worker_buffer_size=max(1, config.prefetch_batches)))
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
        import jax  # only the parent asks; workers never import JAX through this module

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def _make_loader(row_type, kind: str, source: Sequence, processor: Processor, config: PipelineConfig,
                 process_index: int | None, process_count: int | None) -> BatchIterator:
    process_index, process_count = _host(process_index, process_count)
    plan = IndexPlan(dataset_size=len(source), batch_size=config.batch_size, process_index=process_index,
                     process_count=process_count, seed=config.seed, shuffle=config.shuffle,
                     num_epochs=config.num_epochs, drop_remainder=config.drop_remainder)
    num_batches = plan.num_batches
    if num_batches is None:  # effectively endless; grain datasets need a length
        num_batches = sys.maxsize // (config.batch_size * process_count)
    rows = grain.MapDataset.range(num_batches * config.batch_size)
    batches = rows.map(row_type(source, processor, config, plan)).batch(config.batch_size)
    return BatchIterator(batches, plan, config, kind)


def make_sft_loader(source: Sequence, processor: Processor, config: PipelineConfig, *,
                    process_index: int | None = None, process_count: int | None = None) -> BatchIterator:
    """SFT batches of this host's share of ``source`` (see the module docstring)."""
    return _make_loader(SFTRow, "sft", source, processor, config, process_index, process_count)


def make_rl_loader(source: Sequence, processor: Processor, config: PipelineConfig, *,
                   process_index: int | None = None, process_count: int | None = None) -> BatchIterator:
    """RL prompt batches with reward references of this host's share of ``source``."""
    return _make_loader(RLRow, "rl", source, processor, config, process_index, process_count)
