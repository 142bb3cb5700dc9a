"""Loading a model for inference and generating answers for (question, image) prompts in fixed-shape batches.

Batches are padded to static shapes so that one compiled rollout serves a whole benchmark: the batch to
``batch_size`` rows (repeats of the first prompt, whose outputs are dropped), the prompt length to the smallest of
``prompt_buckets`` that fits (LEFT padding, as the sampler expects), and the image patches to the smallest of
``patch_buckets``. Past the largest bucket the next power of two is used.

The generation function is a parameter (default: :func:`robust_r1_jax.model.generate.generate`) with the sampler's
signature ``generate_fn(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, config, rng)`` returning an
object with ``tokens`` [B, T] and ``lengths`` [B].
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from robust_r1_jax.data.records import SourceError
from robust_r1_jax.model import generate as gen
from robust_r1_jax.model import loading
from robust_r1_jax.model.loading import check_pairing, load_model  # noqa: F401  (the modes call them from here)
from robust_r1_jax.model.processor import END_OF_TEXT, Processor

GenerateFn = Callable[..., object]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: its directory, its tokenizer directory ("" = the model's own) and a display name."""

    name: str
    path: str
    tokenizer_path: str = ""
    use_suffix: bool = True  # append the SPEC §1 instruction suffix (off for base models that never saw it)


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int  # generated tokens, the stop token included
    seconds: float | None = None  # wall time of a streamed completion, prefill included
    first_token_seconds: float | None = None  # from the call to the first token (prefill + first sample)


def load_processor(spec: ModelSpec, min_pixels: int = 0, max_pixels: int = 0) -> Processor:
    """The tokenizer (and image settings) of ``spec``: its tokenizer directory, else the model directory."""
    return loading.load_processor(spec.tokenizer_path or spec.path, min_pixels=min_pixels, max_pixels=max_pixels,
                                  name=spec.name)


def bucket(size: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``size``; past the largest, the next power of two."""
    for candidate in sorted(int(b) for b in buckets):
        if candidate >= size:
            return candidate
    return 1 << max(size - 1, 0).bit_length()


def pack_batch(encoded: Sequence[dict], batch_size: int, prompt_buckets: Sequence[int],
               patch_buckets: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """Left-padded ids and mask [batch_size, S], pixels [batch_size, N, D], grids [batch_size, 1, 3]."""
    if not 0 < len(encoded) <= batch_size:
        raise ValueError(f"a batch holds 1 to {batch_size} prompts, got {len(encoded)}")
    rows = list(encoded) + [encoded[0]] * (batch_size - len(encoded))
    length = bucket(max(len(e["input_ids"]) for e in rows), prompt_buckets)
    patches = bucket(max(e["pixel_values"].shape[0] for e in rows), patch_buckets)
    dim = rows[0]["pixel_values"].shape[1]
    ids = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    pixels = np.zeros((batch_size, patches, dim), np.float32)
    grids = np.zeros((batch_size, 1, 3), np.int32)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, length - n:] = row["input_ids"]
        mask[i, length - n:] = 1
        pixels[i, : row["pixel_values"].shape[0]] = row["pixel_values"]
        grids[i, 0] = np.asarray(row["image_grid_thw"]).reshape(-1, 3)[0]
    return {"prompt_ids": ids, "prompt_mask": mask, "pixel_values": pixels, "image_grid_thw": grids}


class Generator:
    """Answers (question text, image) prompts with one model, ``batch_size`` at a time."""

    def __init__(self, model, processor: Processor, sampler_config: gen.SamplerConfig, *, batch_size: int,
                 prompt_buckets: Sequence[int], patch_buckets: Sequence[int], seed: int = 0,
                 generate_fn: GenerateFn | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.processor, self.sampler_config = model, processor, sampler_config
        self.batch_size = int(batch_size)
        self.prompt_buckets, self.patch_buckets = tuple(prompt_buckets), tuple(patch_buckets)
        self.rng = jax.random.key(seed)
        self.generate_fn = generate_fn or gen.generate
        self.pad_id = processor.token_ids[END_OF_TEXT]
        self.stop_ids = set(sampler_config.stop_token_ids)

    def encode(self, question: str, image: np.ndarray, where: str = "prompt") -> dict:
        """The processor's encoding of one prompt; a ``ValueError`` naming ``where`` when it rejects the image."""
        return encode_prompt(self.processor, question, image, where)

    def decode(self, tokens: np.ndarray, length: int) -> Completion:
        ids = [int(t) for t in tokens[:length]]
        while ids and ids[-1] in self.stop_ids:
            ids.pop()
        return Completion(self.processor.tokenizer.decode(ids, skip_special_tokens=True), int(length))

    def complete(self, prompts: Sequence[tuple[str, np.ndarray]], stream: Sequence[int] = ()) -> list[Completion]:
        """One completion per (question text, uint8 RGB image), in order (see :meth:`complete_encoded`)."""
        return self.complete_encoded([self.encode(q, image) for q, image in prompts], stream)

    def complete_encoded(self, encoded: Sequence[dict], stream: Sequence[int] = ()) -> list[Completion]:
        """One completion per prompt encoded by :meth:`encode`, in order.

        ``stream`` names the call's random stream: batch k samples with the key (seed, *stream, k), so a sampled
        (non-greedy) run gives the same completions whatever was generated before it.
        """
        out: list[Completion] = []
        stream_key = self.rng
        for part in stream:
            stream_key = jax.random.fold_in(stream_key, part)
        for number, start in enumerate(range(0, len(encoded), self.batch_size)):
            chunk = list(encoded[start:start + self.batch_size])
            batch = pack_batch(chunk, self.batch_size, self.prompt_buckets, self.patch_buckets, self.pad_id)
            rollout = self.generate_fn(self.model, batch["prompt_ids"], batch["prompt_mask"],
                                       batch["pixel_values"], batch["image_grid_thw"], self.sampler_config,
                                       jax.random.fold_in(stream_key, number))
            tokens, lengths = np.asarray(rollout.tokens), np.asarray(rollout.lengths)
            group = self.sampler_config.num_samples
            out.extend(self.decode(tokens[i * group], int(lengths[i * group])) for i in range(len(chunk)))
        return out


def encode_prompt(processor: Processor, question: str, image: np.ndarray, where: str) -> dict:
    """``processor.encode(question, [image])``; the processor's own ``ValueError`` (e.g. "absolute aspect ratio
    must be smaller than 200" for a 10x2100 px image) becomes a ``SourceError`` (a ``ValueError``) that names ``where`` and the image size, so
    the caller can count the item as a problem and go on."""
    try:
        return processor.encode(question, [image])
    except ValueError as error:
        height, width = np.shape(image)[:2]
        raise SourceError(f"{where}: the processor rejects the {width}x{height} px image ({error})") from error


def sampler_config(model, processor: Processor, *, max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0,
                   suppress_vision_tokens: bool = True) -> gen.SamplerConfig:
    """One completion per prompt, stopping at ``<|im_end|>`` / ``<|endoftext|>``; greedy when temperature is 0;
    the vision special tokens never sampled unless ``suppress_vision_tokens`` is False."""
    return gen.SamplerConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                             top_p=float(top_p), top_k=int(top_k), repetition_penalty=float(repetition_penalty),
                             num_samples=1,
                             suppress_token_ids=gen.vision_token_ids(model.config) if suppress_vision_tokens else (),
                             stop_token_ids=gen.default_stop_token_ids(model.config),
                             pad_token_id=processor.token_ids[END_OF_TEXT])
