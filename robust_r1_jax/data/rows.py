"""One example to one fixed-shape row: the SFT and RL rows that ``pipeline``'s loaders batch.

**Prompt.** With ``prompt_style="project"`` (the default) the user turn is the image followed by
``chains.format_prompt(question, options)``::

    {question}
    Options:
    0. {option 0}
    1. {option 1}
    {the SPEC §1 prompt suffix, chains.PROMPT_SUFFIX}

inside the Qwen2.5-VL chat template (``processor.chat_prompt``). SFT appends the chain as the assistant
turn (``processor.chat_completion``); RL stops after ``<|im_start|>assistant\\n``. With ``"upstream"`` the text is
the source's human turn verbatim plus the suffix (``user_text``) and the chain answers in that turn's labels
(``chain_text``). Either way the user's text is tokenised as text (``Processor.encode``).

**SFT batch** (S = ``seq_len``, P = ``patch_bucket``, I = ``image_slots``, D = patch dim)::

    input_ids       int32   [B, S]     right padded with the tokenizer's pad id
    attention_mask  int32   [B, S]     1 on real tokens
    loss_mask       int32   [B, S]     1 on the chain's tokens and its closing <|im_end|> only
    pixel_values    float32 [B, P, D]  each row's patches, then zero rows
    image_grid_thw  int32   [B, I, 3]  each row's grids, then (0, 0, 0) rows
    position_ids    int32   [B, 3, S]  M-RoPE positions (the model's layout is [3, B, S]: transpose)
    example_index   int64   [B]        index into the source; -1 on padding rows
    truncated_tokens int32  [B]        tokens cut off the end of the row to fit S (0 almost always)

**RL batch** (S = ``seq_len`` is the prompt length; A = ``reference_answer_bytes``, R = ``reference_names``,
L = ``reference_name_bytes``)::

    prompt_ids, prompt_mask           int32 [B, S]   LEFT padded: the prompt ends at column S - 1
    pixel_values, image_grid_thw, position_ids, example_index     as for SFT
    reference_answer        uint8 [B, A]     UTF-8 of the chain's stripped answer, zero padded
    reference_answer_len    int32 [B]
    reference_names         uint8 [B, R, L]  UTF-8 of each distinct TYPE name of the chain
    reference_name_len      int32 [B, R]     -1 on padding names
    reference_values        float32 [B, R]   their intensities
    reference_token_len     int32 [B]        the chain's length in tokens
    summed_intensity        float32 [B]      sum of the example's degradation intensities

The ``reference_*`` entries are ``data.references.RewardReferences`` fields (``references.from_batch``), built
once per example here so that the GRPO loop only repeats them on the device.

Padding rows (``example_index == -1``) repeat a real example to keep the shapes; SFT gives them a zero loss
mask, RL loops must give them zero weight.

**Images.** Each image is resized by the processor's smart resize with ``max_pixels`` lowered so that the
example's images fit the patch bucket (``patch_bucket // images`` patches each). An example that still does
not fit (``min_pixels`` too large, an extreme aspect ratio, more images than slots, image tokens past S, a
prompt longer than S for RL, a chain whose answer or TYPE names do not fit A, R or L) is a problem naming its id.

**Bad examples.** One example that cannot become a row (the above, an image that does not decode or that the
processor refuses, a missing field) does not end the run: it is logged once per process as
``skipping a bad example: {problem}; its row is padding built from source index {j}`` and its row is a padding
row (``example_index == -1``) built from the next usable example, so the batch keeps its shape and the order
stays a pure function of the row's position. When none of the ``MAX_STAND_IN_TRIES`` examples after it is
usable either (a setting that no example fits), the problem is raised.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import pickle
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from robust_r1_jax.data import chains, references
from robust_r1_jax.data.records import decode_image_bytes
from robust_r1_jax.model.processor import END_OF_TEXT, ImageProcessor, Processor
from robust_r1_jax.model.rope_index import host_mrope_position_ids

logger = logging.getLogger(__name__)

PADDING_INDEX = -1
MAX_STAND_IN_TRIES = 64  # examples tried after a bad one before the problem is taken to be the settings'
# What one example's content can raise while it becomes a row (decode, resize, tokenise, missing fields).
ROW_PROBLEMS = (ValueError, KeyError, TypeError, OSError)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Buckets (read by the rows), order and parallelism (read by the loader) of one loader.

    ``batch_size`` is per host.
    """

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
    reference_answer_bytes: int = 16  # RL: A
    reference_names: int = 16  # RL: R
    reference_name_bytes: int = 32  # RL: L
    prompt_suffix: str = chains.PROMPT_SUFFIX
    prompt_style: str = "project"  # PROMPT_STYLES: how the user turn is written (``user_text``)

    def __post_init__(self):
        check_prompt_style(self.prompt_style)
        positive = ("batch_size", "seq_len", "patch_bucket", "image_slots", "min_pixels", "max_pixels",
                    "reference_answer_bytes", "reference_names", "reference_name_bytes")
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


# ---- reading one example -------------------------------------------------------------------------------------

def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def _texts(values) -> list[str]:
    return [_text(v) for v in (values if values is not None else [])]


def _image_array(value, where: str) -> np.ndarray:
    if isinstance(value, (bytes, np.bytes_)):
        return decode_image_bytes(bytes(value), where)
    return np.asarray(value)


def example_images(example: Mapping, where: str) -> list[np.ndarray]:
    """An example's images: ``image`` then ``extra_images`` (the tfds schema), or a list under ``images``."""
    if "images" in example:
        return [_image_array(v, where) for v in example["images"]]
    if "image" in example:
        extra = example.get("extra_images")
        return [_image_array(v, where) for v in [example["image"], *([] if extra is None else list(extra))]]
    raise ValueError(f"{where}: the example has no 'image' field")


def example_name(example: Mapping, index: int) -> str:
    name = _text(example["id"]) if "id" in example else "?"
    return f"example {name!r} (source index {index})"


PROJECT, UPSTREAM, PROMPT_STYLES = chains.PROJECT_STYLE, chains.UPSTREAM_STYLE, chains.PROMPT_STYLES
check_prompt_style = chains.check_prompt_style


def user_text(example: Mapping, suffix: str, style: str = PROJECT) -> str:
    """The user turn's text of an example under ``style`` (``PROMPT_STYLES``).

    ``project``: ``chains.format_prompt`` (question, ``Options:``, options numbered from 0, a newline, the suffix).
    ``upstream``: the source's human turn word for word (``prompt``) with the suffix appended directly, as
    upstream trains; an example without one (shapes, A-OKVQA) uses ``chains.format_question`` as its human turn.
    """
    question, options = _text(example["question"]), _texts(example.get("options"))
    if check_prompt_style(style) == UPSTREAM:
        human = _text(example.get("prompt", ""))
        return chains.upstream_prompt(human or chains.format_question(question, options), suffix)
    return chains.format_prompt(question, options, suffix)


def chain_text(example: Mapping, style: str = PROJECT) -> str:
    """The example's chain as the prompt of ``style`` needs it: ``chain`` answers with the 0-based index (the
    project prompt's numbering); under ``upstream`` an example with its own human turn answers as that turn
    labels the options (``prompt_answer``), so SFT targets and RL rewards agree with the prompt the model sees."""
    chain = _text(example["chain"])
    if check_prompt_style(style) == UPSTREAM and _text(example.get("prompt", "")):
        answer = _text(example.get("prompt_answer", ""))
        return chains.with_answer(chain, answer) if answer else chain
    return chain


# ---- one example to one row ----------------------------------------------------------------------------------

class _RowBuilder(abc.ABC):
    """Shared by the SFT and RL rows: images to the bucket, tokenisation, positions.

    Called with ``(source index, is padding)``, the pair the loader's order gives for each row.
    """

    def __init__(self, source: Sequence, processor: Processor, config: PipelineConfig):
        images = processor.image_processor
        if config.patch_bucket % images.merge_size ** 2:
            raise ValueError(f"patch_bucket={config.patch_bucket} must be a multiple of merge_size**2="
                             f"{images.merge_size ** 2}")
        self.source, self.config = source, config
        self.processor = processor
        self.pad_id = self._pad_id(processor)
        self._local = threading.local()
        self._warned: set[int] = set()

    @staticmethod
    def _pad_id(processor: Processor) -> int:
        pad = getattr(processor.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else processor.token_ids[END_OF_TEXT]

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_local"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def __call__(self, located: tuple[int, bool]) -> dict:
        """The row at this position; a bad example becomes a padding row of the next usable one."""
        index, padding = located
        try:
            return self.build(index, padding)
        except ROW_PROBLEMS as error:
            problem = self._problem(index, error)
        for offset in range(1, min(len(self.source), MAX_STAND_IN_TRIES + 1)):
            stand_in = (index + offset) % len(self.source)
            try:
                row = self.build(stand_in, padding=True)
            except ROW_PROBLEMS as error:
                self._problem(stand_in, error)
                continue
            if index not in self._warned:
                self._warned.add(index)
                logger.warning("skipping a bad example: %s; its row is padding built from source index %d",
                               problem, stand_in)
            return row
        tried = min(len(self.source) - 1, MAX_STAND_IN_TRIES)
        raise ValueError(f"{problem} (and none of the {tried} examples after it gives a usable row either)")

    def _problem(self, index: int, error: Exception) -> str:
        if isinstance(error, KeyError):
            message = f"the example has no {error} field"
        else:
            message = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
        if f"(source index {index})" in message:  # row building's own errors name the example
            return message
        try:
            where = example_name(self.source[index], index)
        except ROW_PROBLEMS:
            where = f"source index {index}"
        return f"{where}: {message}"

    @abc.abstractmethod
    def build(self, index: int, padding: bool) -> dict:
        """The row of source example ``index``; ``ROW_PROBLEMS`` when the example cannot become one."""

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

    def encode(self, example: Mapping, index: int, answer: str | None) -> tuple[dict, Processor, str]:
        where = example_name(example, index)
        images = example_images(example, where)
        if len(images) > self.config.image_slots:
            raise ValueError(f"{where} has {len(images)} images but image_slots={self.config.image_slots} (set "
                             f"data.image_slots to the most images a prompt has, synth_summary.json's "
                             f"max_images_per_prompt)")
        processor = self._processor_for(max(len(images), 1))
        budget = processor.image_processor
        if self.config.min_pixels > budget.max_pixels:
            raise ValueError(f"{where}: min_pixels={self.config.min_pixels} needs more patches per image than "
                             f"the bucket of {self.config.patch_bucket} patches allows for {len(images)} image(s)")
        try:
            encoded = processor.encode(user_text(example, self.config.prompt_suffix, self.config.prompt_style),
                                       images, answer)
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
        """The row's M-RoPE positions ``[3, S]`` (NumPy: see ``rope_index.host_mrope_position_ids``)."""
        try:
            positions, _ = host_mrope_position_ids(ids[None], grid, mask[None],
                                                   image_token_id=processor.image_token_id,
                                                   spatial_merge_size=processor.image_processor.merge_size)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e
        return positions[:, 0]


class SFTRow(_RowBuilder):
    """(source index, is padding) -> one SFT row (prompt + chain, right padded)."""

    def build(self, index: int, padding: bool) -> dict:
        example = self.source[index]
        encoded, processor, where = self.encode(example, index, chain_text(example, self.config.prompt_style))
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
    """(source index, is padding) -> one RL row (prompt left padded, plus the reward references)."""

    def build(self, index: int, padding: bool) -> dict:
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
        row.update(self.reward_references(example, processor, where))
        return row

    def reward_references(self, example: Mapping, processor: Processor, where: str) -> dict:
        """The reward references of the example's chain and its summed degradation intensity."""
        config = self.config
        arrays = references.chain_references(
            chain_text(example, config.prompt_style), processor.tokenizer, answer_bytes=config.reference_answer_bytes,
            max_names=config.reference_names, name_bytes=config.reference_name_bytes, where=where)
        values = np.asarray(example.get("degradation_intensities", []), np.float32).reshape(-1)
        names = _texts(example.get("degradation_types"))
        if len(names) != len(values):
            raise ValueError(f"{where}: {len(names)} degradation types but {len(values)} intensities")
        return {**references.as_row(arrays), "summed_intensity": np.float32(values.astype(np.float64).sum())}
