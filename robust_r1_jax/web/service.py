"""The model behind the page: loaded once per process (``model/loading.py``, through the same spec as the
``generate`` mode), prompts packed into fixed buckets (``eval.inference.pack_batch``) so that every request after
warm-up reuses the compiled prefill and decode programs, and completions streamed as text events.

One generation runs at a time (a lock): the weights and programs are shared, and on one accelerator requests would
only queue inside XLA anyway.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Iterator, Sequence

import jax
import numpy as np
from absl import logging

from robust_r1_jax.data import chains
from robust_r1_jax.eval import generate as generate_mode
from robust_r1_jax.eval import inference
from robust_r1_jax.model import generate as gen
from robust_r1_jax.model import sampling
from robust_r1_jax.model.processor import END_OF_TEXT, Processor
from robust_r1_jax.model.vlm import check_image_tokens
from robust_r1_jax.web.inputs import InputProblem

MAX_QUESTION_CHARS = 2000


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """The completion so far. ``first_token_s``: prompt in to first token out (None before it); ``tokens_per_s``:
    decode rate after the first token (None until two tokens exist)."""

    text: str
    num_tokens: int
    first_token_s: float | None
    elapsed_s: float
    done: bool

    @property
    def tokens_per_s(self) -> float | None:
        decode_s = self.elapsed_s - (self.first_token_s or 0.0)
        if self.num_tokens < 2 or decode_s <= 0:
            return None
        return (self.num_tokens - 1) / decode_s


def compiled_programs() -> dict[str, int]:
    """{"prefill": n, "decode": n}: compilations of the streaming programs in this process (``gen.Streamer``); a
    server that keeps its shapes fixed shows constant counts after warm-up (the page shows them)."""
    return {"prefill": gen.trace_count("stream_prefill"), "decode": gen.trace_count("stream_decode")}


def check_question(question: str, options: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The stripped question and non-empty options; InputProblem for an empty or overlong question."""
    question = (question or "").strip()
    if not question:
        raise InputProblem("Type a question first.")
    if len(question) > MAX_QUESTION_CHARS:
        raise InputProblem(f"The question has {len(question)} characters; the limit is {MAX_QUESTION_CHARS}.")
    return question, tuple(o.strip() for o in options if o and o.strip())


def parse_options(text: str) -> tuple[str, ...]:
    """Options typed one per line (blank lines ignored)."""
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


class ModelService:
    """One model, its processor and its streamer. ``name`` labels the page; ``use_suffix`` appends SPEC §1's
    instruction suffix to every question, joined as ``prompt_style`` says (``eval.generate.prompt_text``)."""

    def __init__(self, model, processor: Processor, sampler_config, *, name: str, use_suffix: bool = True,
                 prompt_buckets: Sequence[int] = (256, 512, 1024), patch_buckets: Sequence[int] = (64, 256, 1024),
                 seed: int = 0, prompt_style: str = "project"):
        inference.check_pairing(model, processor, name)
        self.prompt_style = chains.check_prompt_style(prompt_style)
        self.model, self.processor, self.name, self.use_suffix = model, processor, name, use_suffix
        self.prompt_buckets, self.patch_buckets = tuple(prompt_buckets), tuple(patch_buckets)
        self.streamer = gen.Streamer(model, sampler_config)
        self.stop_ids = set(sampler_config.stop_token_ids)
        self.seed = int(seed)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config) -> "ModelService":
        """The model of ``config.checkpoint`` (any folder the other modes accept), else the demo model; a
        FileNotFoundError naming the demo command when neither exists; ``train.validate.ConfigError`` for an
        impossible sampling setting, before the model loads."""
        from robust_r1_jax.train import validate
        validate.check_sampling(config)
        spec = generate_mode.model_spec(config)
        processor = inference.load_processor(spec, int(config.min_pixels), int(config.max_pixels))
        model = inference.load_model(spec.path, str(config.dtype))
        inference.check_pairing(model, processor, spec.name, model_dir=spec.path, field="--config.tokenizer")
        sampler_config = inference.sampler_config(model, processor, **sampling.sampler_settings(config.sampling))
        logging.info("web: serving %s from %s", spec.name, spec.path)
        return cls(model, processor, sampler_config, name=spec.name, use_suffix=spec.use_suffix,
                   prompt_buckets=tuple(int(b) for b in config.prompt_buckets),
                   patch_buckets=tuple(int(b) for b in config.patch_buckets), seed=int(config.seed),
                   prompt_style=str(config.get("prompt_style", "project")))

    def pack(self, question: str, options: Sequence[str], image: np.ndarray) -> dict[str, np.ndarray]:
        """The prompt as one left-padded row in its buckets (see ``eval.inference.pack_batch``)."""
        text = generate_mode.prompt_text(question, options, self.use_suffix, self.prompt_style)
        encoded = self.processor.encode(text, [image])
        batch = inference.pack_batch([encoded], 1, self.prompt_buckets, self.patch_buckets,
                                     self.processor.token_ids[END_OF_TEXT])
        check_image_tokens(self.model.config, batch["prompt_ids"], batch["image_grid_thw"], batch["pixel_values"])
        return batch

    def stream(self, question: str, options: Sequence[str], image: np.ndarray, seed: int | None = None
               ) -> Iterator[StreamEvent]:
        """Events as the text grows (a multi-byte character split over tokens waits for its last byte), the last
        one with ``done``. InputProblem for an empty question."""
        question, options = check_question(question, options)
        batch = self.pack(question, options, image)
        rng = jax.random.key(self.seed if seed is None else int(seed))
        tokenizer = self.processor.tokenizer
        with self._lock:
            start = time.perf_counter()
            first, generated, text = None, [], ""
            for token in self.streamer.stream(batch["prompt_ids"], batch["prompt_mask"], batch["pixel_values"],
                                              batch["image_grid_thw"], rng):
                now = time.perf_counter() - start
                first = now if first is None else first
                generated.append(token)
                if token in self.stop_ids:
                    break
                decoded = tokenizer.decode(generated, skip_special_tokens=True)
                if decoded.endswith("\ufffd") or decoded == text:
                    continue
                text = decoded
                yield StreamEvent(text, len(generated), first, now, False)
            content = [t for t in generated if t not in self.stop_ids]
            text = tokenizer.decode(content, skip_special_tokens=True)
            yield StreamEvent(text, len(generated), first, time.perf_counter() - start, True)

    def complete(self, question: str, options: Sequence[str], image: np.ndarray, seed: int | None = None
                 ) -> StreamEvent:
        """The finished completion (the last event of :meth:`stream`)."""
        event = None
        for event in self.stream(question, options, image, seed):
            pass
        return event

    def warm_up(self, question: str, options: Sequence[str], image: np.ndarray) -> float:
        """Compiles the programs for the bucket of ``image`` and its question; returns the seconds it took."""
        start = time.perf_counter()
        self.complete(question, options, image)
        return time.perf_counter() - start
