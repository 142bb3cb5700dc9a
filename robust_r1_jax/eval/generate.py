"""The ``generate`` mode: a model's reasoning chain for one image, streamed, or for a folder of images, as JSONL.

One image (tokens are printed as they are generated)::

    python -m robust_r1_jax.main --config=configs/generate.py --config.image=cat.png \
        --config.question="What is on the sofa?" --config.options='("a cat", "a dog", "a hat")'

A folder, one shared question or one per image from a JSONL file of ``{"image": "name.png", "question": "...",
"options": ["...", ...]}`` lines (``options`` optional, image names relative to the folder)::

    python -m robust_r1_jax.main --config=configs/generate.py --config.image_dir=photos \
        --config.questions_file=photos/questions.jsonl --config.output=runs/generate/photos.jsonl

Each output line holds the image, question, options, the generated text, the option index read from it (None when
there are no options or none can be read) and the number of generated tokens; an image that cannot be read gets
an ``error`` instead. The file is written atomically when the batch is done. With no checkpoint the demo model is
used (after RL when it exists, else after SFT).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Iterable, TextIO

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from robust_r1_jax import atomic
from robust_r1_jax.data import chains
from robust_r1_jax.eval import answers, defaults, inference, report
from robust_r1_jax.eval.inference import Completion, ModelSpec
from robust_r1_jax.model import generate as gen
from robust_r1_jax.model import loading, sampling

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def load_image(path: str) -> np.ndarray:
    """uint8 RGB (H, W, 3); a ``ValueError`` naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot read the image ({error})") from error


def prompt_text(question: str, options: Iterable[str], use_suffix: bool) -> str:
    """The question (and options, when there are any) followed by the SPEC §1 suffix unless ``use_suffix`` is off."""
    return chains.format_prompt(question, tuple(options), chains.PROMPT_SUFFIX if use_suffix else "")


def stream_completion(model, processor, image: np.ndarray, text: str, config: gen.SamplerConfig, rng,
                      out: TextIO = sys.stdout, stream_fn: Callable | None = None) -> Completion:
    """Generate for one prompt, writing the text to ``out`` as tokens arrive; returns the whole completion.

    ``stream_fn`` has the signature of :func:`robust_r1_jax.model.generate.stream` (the default).
    """
    stream_fn = stream_fn or gen.stream
    encoded = processor.encode(text, [image])
    ids = encoded["input_ids"][None]
    tokenizer, stops = processor.tokenizer, set(config.stop_token_ids)
    generated: list[int] = []
    printed = ""
    for token in stream_fn(model, ids, np.ones_like(ids), encoded["pixel_values"], encoded["image_grid_thw"],
                           config, rng):
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
    content = [t for t in generated if t not in stops]
    final = tokenizer.decode(content, skip_special_tokens=True)
    out.write((final[len(printed):] if final.startswith(printed) else "\n" + final) + "\n")
    out.flush()
    return Completion(final, len(generated))


def parse_options(options) -> tuple[str, ...]:
    """The non-empty options of the tuple field ``config.options`` (a plain string is one option)."""
    options = (options,) if isinstance(options, str) else tuple(options)
    return tuple(str(o).strip() for o in options if str(o).strip())


def batch_items(config) -> list[dict]:
    """{"image": path, "name", "question", "options"} for the folder run, in file-name order."""
    folder = config.image_dir
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    if config.questions_file:
        items = []
        with open(config.questions_file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{config.questions_file}:{number}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{where}: not valid JSON ({error.msg})") from error
                if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(
                        entry.get("question"), str):
                    raise ValueError(f"{where}: expected an object with string 'image' and 'question'")
                options = entry.get("options") or []
                if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                    raise ValueError(f"{where}: 'options' must be a list of strings")
                items.append({"image": os.path.join(folder, entry["image"]), "name": entry["image"],
                              "question": entry["question"], "options": tuple(options)})
        return items
    if not config.question:
        raise ValueError("the folder run needs --config.question=... (shared by every image) or "
                         "--config.questions_file=... (one question per image)")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return [{"image": os.path.join(folder, n), "name": n, "question": config.question,
             "options": parse_options(config.options)} for n in names]


def generate_batch(generator: inference.Generator, items: list[dict], use_suffix: bool) -> list[dict]:
    """One output record per item; unreadable images are reported and get an ``error``."""
    records: list[dict] = []
    size = generator.batch_size
    for chunk_number, start in enumerate(range(0, len(items), size)):
        prompts, waiting = [], []
        for item in items[start:start + size]:
            record = {"image": item["name"], "question": item["question"], "options": list(item["options"])}
            records.append(record)
            try:
                image = load_image(item["image"])
            except ValueError as error:
                logging.warning("skipping: %s", error)
                record["error"] = str(error)
                continue
            prompts.append((prompt_text(item["question"], item["options"], use_suffix), image))
            waiting.append((item, record))
        if not prompts:
            continue
        for (item, record), completion in zip(waiting, generator.complete(prompts, stream=(chunk_number,))):
            record.update(output=completion.text, tokens=completion.num_tokens,
                          answer=answers.extract_answer(completion.text, item["options"]) if item["options"] else None)
    return records


def model_spec(config) -> ModelSpec:
    if config.checkpoint:
        return ModelSpec(os.path.basename(os.path.normpath(config.checkpoint)), config.checkpoint,
                         config.tokenizer, use_suffix=bool(config.suffix))
    for name, path in reversed(defaults.DEMO_MODELS):  # after RL first
        if os.path.isdir(path) and os.path.isdir(defaults.DEMO_TOKENIZER_DIR):
            return ModelSpec(name, path, config.tokenizer or defaults.DEMO_TOKENIZER_DIR,
                             use_suffix=bool(config.suffix))
    raise FileNotFoundError(
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
    config.sampling = sampling.default_config()  # greedy
    config.seed = 0
    config.min_pixels = 0
    config.max_pixels = 0
    config.dtype = "float32"
    return config


def run(config, out: TextIO = sys.stdout) -> list[dict] | Completion:
    """The ``generate`` mode (see the module docstring)."""
    if not config.image and not config.image_dir:
        raise ValueError("set --config.image=<file> (one image, streamed) or --config.image_dir=<folder> (JSONL)")
    if config.image and not config.question:
        raise ValueError("--config.question=... is required with --config.image")
    spec = model_spec(config)
    processor = loading.load_processor(spec.tokenizer_path or spec.path, min_pixels=int(config.min_pixels),
                                       max_pixels=int(config.max_pixels), name=spec.name, field="--config.tokenizer")
    model = inference.load_model(spec.path, str(config.dtype))
    inference.check_pairing(model, processor, spec.name)
    sampler_config = inference.sampler_config(model, processor, **sampling.sampler_settings(config.sampling))
    if config.image:
        image = load_image(config.image)
        options = parse_options(config.options)
        completion = stream_completion(model, processor, image, prompt_text(config.question, options, spec.use_suffix),
                                       sampler_config, jax.random.key(int(config.seed)), out)
        if options:
            picked = answers.extract_answer(completion.text, options)
            out.write(f"answer: {'none readable' if picked is None else f'{picked} ({options[picked]})'}\n")
        return completion
    generator = inference.Generator(
        model, processor, sampler_config, batch_size=int(config.batch_size),
        prompt_buckets=tuple(int(b) for b in config.prompt_buckets),
        patch_buckets=tuple(int(b) for b in config.patch_buckets), seed=int(config.seed))
    records = generate_batch(generator, batch_items(config), spec.use_suffix)
    path = config.output or os.path.join(config.workdir, "generations.jsonl")
    if report.is_writer():
        atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        out.write(f"wrote {len(records)} generations to {path}\n")
    return records
