"""The ``generate`` mode: a model's reasoning chain for one image, streamed, or for a folder of images, as JSONL.

One image (tokens are printed as they are generated)::

    python -m robust_r1_jax.main --config=configs/generate.py --config.image=cat.png \
        --config.question="What is on the sofa?" --config.options='("a cat", "a dog", "a hat")'

A folder, one shared question or one per image from a JSONL file of ``{"image": "name.png", "question": "...",
"options": ["...", ...]}`` lines (``options`` optional, image names relative to the folder)::

    python -m robust_r1_jax.main --config=configs/generate.py --config.image_dir=photos \
        --config.questions_file=photos/questions.jsonl --config.output=runs/generate/photos.jsonl

Each output line holds the image, question, options, the generated text, the option index read from it (None when
there are no options or none can be read) and the number of generated tokens. An item that cannot be used (an
image that cannot be read or that the processor rejects, a questions-file line that is not UTF-8 or not a valid
entry) gets an ``error`` naming the file (and line) instead, and the other items go on. The file is written
atomically when the batch is done. With no checkpoint the demo model is used (after RL when it exists, else after
SFT).

Images are user photos: their EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a portrait
photo a phone stored sideways reaches the model upright. (Benchmark and dataset images are used as shipped, as
VLMEvalKit does.)

Sampling: the model folder's ``generation_config.json`` when it has one, else greedy; any ``--config.sampling.*``
field the user sets wins, and ``--config.sampling.temperature=0`` asks for greedy decoding. The settings used,
the speed (tokens/s, and the time to the first token when streaming) and a progress bar over a whole folder go
to stderr; stdout holds only the generated text.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Iterable, TextIO

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageOps
from tqdm import tqdm

from robust_r1_jax import atomic
from robust_r1_jax.data import chains
from robust_r1_jax.data.records import ImageError, MissingInput
from robust_r1_jax.eval import answers, defaults, inference, report
from robust_r1_jax.eval.inference import Completion, ModelSpec
from robust_r1_jax.model import generate as gen
from robust_r1_jax.model import loading, sampling

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def load_image(path: str) -> np.ndarray:
    """uint8 RGB (H, W, 3) upright by its EXIF orientation; an ``ImageError`` (a ``ValueError``) naming the file
    when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{path}: cannot read the image ({error})") from error


def prompt_text(question: str, options: Iterable[str], use_suffix: bool,
                prompt_style: str = chains.PROJECT_STYLE) -> str:
    """The question (and options, when there are any) followed by the SPEC §1 suffix unless ``use_suffix`` is off.

    ``prompt_style="upstream"`` (``chains.PROMPT_STYLES``): the question as typed (``<image>`` removed; options,
    when given apart, as ``chains.format_question`` lines) with the suffix appended directly, as upstream trains."""
    options, suffix = tuple(options), chains.PROMPT_SUFFIX if use_suffix else ""
    if chains.check_prompt_style(prompt_style) == chains.UPSTREAM_STYLE:
        return chains.upstream_prompt(chains.format_question(question, options) if options else question, suffix)
    return chains.format_prompt(question, options, suffix)


def stream_completion(model, processor, image: np.ndarray, text: str, config: gen.SamplerConfig, rng,
                      out: TextIO = sys.stdout, stream_fn: Callable | None = None, where: str = "image") -> Completion:
    """Generate for one prompt, writing the text to ``out`` as tokens arrive; returns the whole completion with
    its timings. A ``ValueError`` naming ``where`` when the processor rejects the image.

    ``stream_fn`` has the signature of :func:`robust_r1_jax.model.generate.stream` (the default).
    """
    stream_fn = stream_fn or gen.stream
    encoded = inference.encode_prompt(processor, text, image, where)
    ids = encoded["input_ids"][None]
    tokenizer, stops = processor.tokenizer, set(config.stop_token_ids)
    generated: list[int] = []
    printed = ""
    started = time.perf_counter()
    first_token_at = None
    for token in stream_fn(model, ids, np.ones_like(ids), encoded["pixel_values"], encoded["image_grid_thw"],
                           config, rng):
        first_token_at = first_token_at or time.perf_counter()
        generated.append(int(token))
        if token in stops:
            break
        decoded = tokenizer.decode(generated, skip_special_tokens=True)
        # A multi-byte character split over tokens decodes to U+FFFD until its last byte arrives.
        if decoded.endswith("\ufffd") or not decoded.startswith(printed):
            continue
        out.write(decoded[len(printed):])
        out.flush()
        printed = decoded
    finished = time.perf_counter()
    content = [t for t in generated if t not in stops]
    final = tokenizer.decode(content, skip_special_tokens=True)
    out.write((final[len(printed):] if final.startswith(printed) else "\n" + final) + "\n")
    out.flush()
    return Completion(final, len(generated), seconds=finished - started,
                      first_token_seconds=None if first_token_at is None else first_token_at - started)


def stream_speed(completion: Completion) -> str:
    """"speed: first token after 0.42 s, then 31.5 tokens/s (40 tokens in 1.69 s)" for a streamed completion."""
    first = completion.first_token_seconds
    if first is None:
        return "speed: no token was generated"
    decoding = completion.seconds - first
    rate = f"{(completion.num_tokens - 1) / decoding:.1f} tokens/s" if completion.num_tokens > 1 and decoding > 0 \
        else "no further tokens"
    return (f"speed: first token after {first:.2f} s, then {rate} ({completion.num_tokens} tokens in "
            f"{completion.seconds:.2f} s; the first run of a shape includes compilation)")


def parse_options(options) -> tuple[str, ...]:
    """The non-empty options of the tuple field ``config.options`` (a plain string is one option)."""
    options = (options,) if isinstance(options, str) else tuple(options)
    return tuple(str(o).strip() for o in options if str(o).strip())


@dataclasses.dataclass(frozen=True)
class Item:
    """One image + question of a folder run, or a questions-file line that cannot be used (``problem``)."""

    name: str  # the image's name as given ("" when a bad line names none)
    image_path: str
    question: str
    options: tuple[str, ...] = ()
    where: str = ""  # questions_file:line ("" for a shared-question folder run)
    problem: str | None = None

    def record(self) -> dict:
        return {"image": self.name or None, "question": self.question or None, "options": list(self.options)}


def question_entry(line: str, where: str, folder: str) -> Item:
    """One questions-file line as an item; a line that is no valid entry becomes an item with its ``problem``."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        return Item("", "", "", where=where, problem=f"{where}: not valid JSON ({error.msg}, column {error.colno})")
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(
            entry.get("question"), str):
        name = entry.get("image") if isinstance(entry, dict) and isinstance(entry.get("image"), str) else ""
        return Item(name, "", "", where=where,
                    problem=f"{where}: expected an object with string 'image' and 'question'")
    options = entry.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        return Item(entry["image"], "", entry["question"], where=where,
                    problem=f"{where}: 'options' must be a list of strings")
    return Item(entry["image"], os.path.join(folder, entry["image"]), entry["question"], tuple(options), where)


def read_questions(path: str, folder: str) -> list[Item]:
    """The items of a questions JSONL file, line by line: a line that is not UTF-8 (a Latin-1 byte) or not a
    valid entry becomes an item with a problem naming path:line; the other lines are read as usual."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"questions file not found: {path}")
    items = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                items.append(Item("", "", "", where=where, problem=(
                    f"{where}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1})")))
                continue
            if line.strip():
                items.append(question_entry(line, where, folder))
    return items


def batch_items(config) -> list[Item]:
    """The items of the folder run, in questions-file order or file-name order."""
    folder = config.image_dir
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    if config.questions_file:
        return read_questions(config.questions_file, folder)
    if not config.question:
        raise ValueError("the folder run needs --config.question=... (shared by every image) or "
                         "--config.questions_file=... (one question per image)")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return [Item(n, os.path.join(folder, n), config.question, parse_options(config.options)) for n in names]


def encode_item(generator: inference.Generator, item: Item, use_suffix: bool,
                prompt_style: str = chains.PROJECT_STYLE) -> dict:
    """The item's encoded prompt; a ``ValueError`` naming its line and image when any step fails (the line
    itself, reading the image, the processor's limits)."""
    if item.problem is not None:
        raise ValueError(item.problem)
    prefix = f"{item.where}: " if item.where else ""
    try:
        image = load_image(item.image_path)
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from error
    return generator.encode(prompt_text(item.question, item.options, use_suffix, prompt_style), image,
                            f"{prefix}{item.image_path}")


@dataclasses.dataclass
class Speed:
    """Generated tokens and the seconds spent generating them (batches)."""

    tokens: int = 0
    seconds: float = 0.0

    def line(self, items: int) -> str:
        rate = f"{self.tokens / self.seconds:.1f} tokens/s" if self.seconds > 0 else "nothing generated"
        images = "1 image" if items == 1 else f"{items} images"
        return (f"speed: {self.tokens} tokens for {images} in {self.seconds:.2f} s of generation: {rate} "
                f"(the first batch includes compilation; a batch returns at once, so there is no time to first "
                f"token)")


def generate_batch(generator: inference.Generator, items: list[Item], use_suffix: bool,
                   progress: TextIO | None = sys.stderr, speed: Speed | None = None,
                   prompt_style: str = chains.PROJECT_STYLE) -> list[dict]:
    """One output record per item, in order; an item that cannot be used gets an ``error`` and the rest go on.

    ``progress``: where the one progress bar over all items goes (None: no bar).
    """
    records: list[dict] = []
    speed = speed if speed is not None else Speed()
    size = generator.batch_size
    with tqdm(total=len(items), desc="generate", unit="image", file=progress, disable=progress is None,
              dynamic_ncols=False) as bar:
        for chunk_number, start in enumerate(range(0, len(items), size)):
            encoded, waiting = [], []
            for item in items[start:start + size]:
                record = item.record()
                records.append(record)
                try:
                    encoded.append(encode_item(generator, item, use_suffix, prompt_style))
                except ValueError as error:
                    logging.warning("skipping: %s", error)
                    record["error"] = str(error)
                    continue
                waiting.append((item, record))
            if encoded:
                started = time.perf_counter()
                completions = generator.complete_encoded(encoded, stream=(chunk_number,))
                speed.seconds += time.perf_counter() - started
                for (item, record), completion in zip(waiting, completions):
                    speed.tokens += completion.num_tokens
                    record.update(output=completion.text, tokens=completion.num_tokens,
                                  answer=answers.extract_answer(completion.text, item.options) if item.options
                                  else None)
            bar.update(len(items[start:start + size]))
    return records


# Folder names every training run uses: alone they say nothing about which model it is.
RUN_FOLDER_NAMES = ("model", "checkpoints")


def display_name(path: str) -> str:
    """The checkpoint folder's name, with its parent's for a run's ``model/`` or ``checkpoints/`` (``sft/model``)."""
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[-2:]) if parts[-1] in RUN_FOLDER_NAMES and len(parts) > 1 and parts[-2] else parts[-1]


def model_spec(config) -> ModelSpec:
    """The model to serve: ``--config.checkpoint`` (named by ``display_name``), else the demo's newest model."""
    if config.checkpoint:
        return ModelSpec(display_name(config.checkpoint), config.checkpoint,
                         config.tokenizer, use_suffix=bool(config.suffix))
    for name, path in reversed(defaults.DEMO_MODELS):  # after RL first
        if os.path.isdir(path) and os.path.isdir(defaults.DEMO_TOKENIZER_DIR):
            return ModelSpec(name, path, config.tokenizer or defaults.DEMO_TOKENIZER_DIR,
                             use_suffix=bool(config.suffix))
    raise MissingInput(
        f"no checkpoint given (--config.checkpoint=...), so the demo model is used, but "
        f"{defaults.DEMO_RL_MODEL}, {defaults.DEMO_SFT_MODEL} or {defaults.DEMO_TOKENIZER_DIR} is missing "
        f"(relative to {os.getcwd()}). Run the demo first: {defaults.DEMO_COMMAND}")


def default_config() -> ml_collections.ConfigDict:
    """Every setting of the ``generate`` mode with its default (``configs/generate.py`` shows how to use them)."""
    config = ml_collections.ConfigDict()
    config.mode = "generate"
    config.checkpoint = ""  # Hugging Face dir, orbax model checkpoint or training checkpoint folder
    config.tokenizer = ""  # "" = the checkpoint's own folder
    config.suffix = True  # append the SPEC §1 instruction suffix (off for base models)
    config.prompt_style = "project"  # "upstream": the question as typed + the suffix directly (released models)
    config.image = ""
    config.question = ""
    config.options = ()  # empty for an open question
    config.image_dir = ""
    config.questions_file = ""  # JSONL: {"image": "name.png", "question": "...", "options": [...]}
    config.output = ""  # "" -> <workdir>/generations.jsonl
    config.workdir = "runs/generate"
    config.batch_size = 4
    config.prompt_buckets = (256, 512, 1024, 2048)
    config.patch_buckets = (64, 256, 1024, 4096)
    # Unset fields come from the model folder's generation_config.json, else sampling.default_config() (greedy);
    # --config.sampling.temperature=0 asks for greedy whatever the folder says.
    config.sampling = sampling.unset_config()
    config.seed = 0
    config.min_pixels = 0
    config.max_pixels = 0
    config.dtype = "float32"
    return config


def shipped_problems(user_sampling, shipped: sampling.Shipped | None) -> list[str]:
    """The impossible values that a model folder's generation_config.json would bring in (fields the user left
    unset), one line each naming the file."""
    if shipped is None or user_sampling.get("temperature") == 0:
        return []
    taken = {k: v for k, v in shipped.settings.items() if user_sampling.get(k) is None}
    return [f"{shipped.path}: {line.removeprefix('config.sampling.')}"
            for line in sampling.problems(ml_collections.ConfigDict(taken))]


def run(config, out: TextIO = sys.stdout, info: TextIO = sys.stderr) -> list[dict] | Completion:
    """The ``generate`` mode (see the module docstring): generated text to ``out``; the sampling settings used,
    the speed and the folder's progress bar to ``info``."""
    from robust_r1_jax.train import validate
    validate.check_sampling(config)
    if not config.image and not config.image_dir:
        raise ValueError("set --config.image=<file> (one image, streamed) or --config.image_dir=<folder> (JSONL)")
    if config.image and not config.question:
        raise ValueError("--config.question=... is required with --config.image")
    prompt_style = chains.check_prompt_style(str(config.get("prompt_style", chains.PROJECT_STYLE)))
    image = load_image(config.image) if config.image else None  # a bad file fails before the model loads
    spec = model_spec(config)
    shipped = sampling.shipped_settings(spec.path)
    validate.check_sampling(config, sections=(), extra=shipped_problems(config.sampling, shipped))
    settings, settings_line = sampling.resolve(config.sampling, shipped)
    processor = loading.load_processor(spec.tokenizer_path or spec.path, min_pixels=int(config.min_pixels),
                                       max_pixels=int(config.max_pixels), name=spec.name, field="--config.tokenizer")
    model = inference.load_model(spec.path, str(config.dtype))
    inference.check_pairing(model, processor, spec.name, model_dir=spec.path, field="--config.tokenizer")
    sampler_config = inference.sampler_config(model, processor, **settings)
    writer = report.is_writer()
    if writer:
        print(settings_line, file=info)
    if config.image:
        options = parse_options(config.options)
        text = prompt_text(config.question, options, spec.use_suffix, prompt_style)
        completion = stream_completion(model, processor, image, text, sampler_config,
                                       jax.random.key(int(config.seed)), out, where=config.image)
        if options:
            picked = answers.extract_answer(completion.text, options)
            out.write(f"answer: {'none readable' if picked is None else f'{picked} ({options[picked]})'}\n")
        print(stream_speed(completion), file=info)
        return completion
    generator = inference.Generator(
        model, processor, sampler_config, batch_size=int(config.batch_size),
        prompt_buckets=tuple(int(b) for b in config.prompt_buckets),
        patch_buckets=tuple(int(b) for b in config.patch_buckets), seed=int(config.seed))
    items = batch_items(config)
    speed = Speed()
    records = generate_batch(generator, items, spec.use_suffix, progress=info if writer else None, speed=speed,
                             prompt_style=prompt_style)
    path = config.output or os.path.join(config.workdir, "generations.jsonl")
    if writer:
        atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        failed = sum("error" in r for r in records)
        print(speed.line(len(records) - failed), file=info)
        out.write(f"wrote {len(records)} generations to {path}"
                  + (f" ({failed} with an error instead of an output)" if failed else "") + "\n")
    return records
