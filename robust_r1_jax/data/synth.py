"""Build a Robust-R1 dataset end to end: source -> degradations -> chains -> TFDS shards.

``run(config)`` reads ``config.synth`` (``default_config()``, overridden by ``configs/synth.py``), degrades every record with the
training sampler (types drawn at random, s ~ U[0, 1] rounded to the two decimals the chain shows,
applied in physical order), writes its chain with the configured annotator, stores both splits as
array_record shards and writes a contact sheet (clean beside degraded, labelled) and a summary.

Every example is a pure function of ``(config seed, split, index)``, so a rerun gives the same
bytes and ``num_workers > 0`` gives the same dataset as a single process.

A record that cannot become an example -- its row unreadable, its image missing or undecodable, refused
by the processor's aspect-ratio limit (checked here so SFT never meets it) or, when it is to be degraded,
below the degradation engine's minimum side after ``max_image_side`` -- is named (file:line, id) and
skipped or raised by ``on_error``; the summary counts the skipped ones and lists the first 100.
``num_validation=0`` builds a train-only dataset; a requested split left without examples is a
``SourceError`` naming the source, how many rows were skipped and why.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import time
from typing import Iterator

import ml_collections
import numpy as np
from PIL import Image
from tqdm import tqdm

from robust_r1_jax import atomic, degrade
from robust_r1_jax.data import annotators, chain_text, chains, shapes, sources, tfds_builder, type_names
from robust_r1_jax.data.contact_sheet import contact_label, contact_sheet
from robust_r1_jax.data.records import (
    ImageError,
    Record,
    SkipLog,
    SourceError,
    check_on_error,
    encode_image,
    report_bad_input,
)
from robust_r1_jax.model.processor import check_image_size

logger = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "validation": 1}
CONTACT_SHEET_NAME = "contact_sheet.png"
SUMMARY_NAME = "synth_summary.json"


@dataclasses.dataclass(frozen=True)
class SynthSettings:
    """The part of the config a worker needs to turn one record into one example."""

    seed: int
    min_degradations: int
    max_degradations: int
    image_format: str
    max_image_side: int
    keep_prebuilt_chains: bool


@dataclasses.dataclass(frozen=True)
class Synthesized:
    """One finished example, or the reason its record was skipped."""

    example: dict | None
    clean: np.ndarray | None = None
    degraded: np.ndarray | None = None
    error: str | None = None


def example_seed(seed: int, split: str, index: int) -> int:
    """The degradation / annotation seed of one example: independent of order and workers."""
    state = np.random.SeedSequence([int(seed), SPLIT_CODES[split], int(index)]).generate_state(1)
    return int(state[0])


def fit_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side`` (0 keeps the size)."""
    height, width = image.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC), dtype=np.uint8)


def image_size_problem(image: np.ndarray, original: tuple[int, int], max_side: int, degrades: bool) -> str | None:
    """Why an example with this (already fitted) image would fail later, or None.

    Checked at build time so that the dataset holds nothing the processor rejects in SFT (its aspect-ratio
    limit) and nothing reaches the degradation engine below its minimum side (``degrade.MIN_SIDE`` px).
    ``original`` is the (height, width) before ``fit_image``, named when the shrinking caused the problem. Sizes
    are written width x height, as Pillow and ``generate`` write them.
    """
    height, width = image.shape[:2]
    problem = check_image_size(height, width)
    if problem is not None:
        problem = f"the Qwen2.5-VL processor cannot take it: {problem}"
    elif degrades and min(height, width) < degrade.MIN_SIDE:
        problem = f"smaller than the {degrade.MIN_SIDE}-px minimum side of the degradation engine"
    if problem is None:
        return None
    before = f", {original[1]}x{original[0]} before max_image_side={max_side}" if original != (height, width) else ""
    return f"image of {width}x{height} px{before}: {problem}"


def degradation_plan(seed: int, min_count: int, max_count: int) -> list[tuple[str, float]]:
    """Sampled (name, s) pairs with s rounded to two decimals: the chain shows what was applied."""
    plan = degrade.sample_training(seed, min_count, max_count)
    return [(str(name), round(float(s), 2)) for name, s in plan]


def synthesize(
    record: Record,
    split: str,
    index: int,
    settings: SynthSettings,
    annotator: annotators.Annotator,
    keep_images: bool = False,
) -> Synthesized:
    """Load, degrade and annotate one record; any problem of this one item becomes ``error`` (file:line, id)."""
    try:
        return _synthesize(record, split, index, settings, annotator, keep_images)
    except ImageError as error:  # already names the record
        return Synthesized(None, error=str(error))
    except (ValueError, OSError) as error:  # resize, degrade or encode of this item's pixels
        return Synthesized(None, error=f"{record.location} (id {record.id}): {error}")


def _synthesize(record, split, index, settings, annotator, keep_images) -> Synthesized:
    loaded = record.load_image()
    clean = fit_image(loaded, settings.max_image_side)
    prebuilt = record.chain is not None and settings.keep_prebuilt_chains
    if record.extra_image_paths and not prebuilt:
        return Synthesized(None, error=f"{record.location} (id {record.id}): {1 + len(record.extra_image_paths)} "
                                       f"images for one prompt are kept only with the record's own chain "
                                       f"(synth.keep_prebuilt_chains)")
    extra = [(image, fit_image(image, settings.max_image_side)) for image in record.load_extra_images()]
    problem = image_size_problem(clean, loaded.shape[:2], settings.max_image_side, degrades=not prebuilt)
    for number, (original, fitted) in enumerate(extra, start=2):
        if problem is not None:
            break
        extra_problem = image_size_problem(fitted, original.shape[:2], settings.max_image_side, degrades=False)
        problem = extra_problem and f"image {number}: {extra_problem}"
    if problem is not None:
        return Synthesized(None, error=f"{record.location} (id {record.id}): {problem}")
    if prebuilt:
        # The released Robust-R1 images are already degraded; keep them and their chain as is.
        seed, degraded, applied, chain = -1, clean, list(record.applied), record.chain
    else:
        seed = example_seed(settings.seed, split, index)
        plan = degradation_plan(seed, settings.min_degradations, settings.max_degradations)
        degraded, applied = degrade.compose(clean, plan, seed)
        applied = [(str(name), round(float(s), 2)) for name, s in applied]
        request = chains.ChainRequest(
            question=record.question,
            options=tuple(record.options),
            answer=record.answer,
            rationales=tuple(record.rationales),
            applied=tuple(applied),
            seed=seed,
        )
        chain = annotators.build_chain(request, annotator)
    example = {
        "id": record.id,
        "image": encode_image(degraded, settings.image_format),
        "question": record.question,
        "options": list(record.options),
        "answer": record.answer,
        "chain": chain,
        "rationales": list(record.rationales),
        "degradation_types": [name for name, _ in applied],
        "degradation_intensities": np.asarray([s for _, s in applied], np.float32),
        "degradation_seed": seed,
        "category": record.category,
        "source": record.location,
        "prompt": record.prompt,
        "prompt_answer": record.prompt_answer,
        "extra_images": [encode_image(fitted, settings.image_format) for _, fitted in extra],
    }
    if keep_images:
        return Synthesized(example, clean, np.asarray(degraded, np.uint8))
    return Synthesized(example)


def _synthesize_job(job) -> Synthesized:
    record, split, index, settings, annotator, keep_images = job
    return synthesize(record, split, index, settings, annotator, keep_images)


# --------------------------------------------------------------------------- records per split


def shapes_style(cfg) -> shapes.Style:
    """``synth.shapes`` as a generator style; configs without that section get the full task."""
    section = cfg.get("shapes")
    if section is None:
        return shapes.FULL_STYLE
    return shapes.Style(kinds=tuple(section.kinds), colours=tuple(section.colours), shapes=tuple(section.shapes),
                        max_distractors=int(section.max_distractors), sorted_options=bool(section.sorted_options),
                        object_scale=float(section.get("object_scale", 1.0)))


def describe_source(cfg) -> str:
    return f"synth.source={cfg.source!r}" + (f" ({cfg.source_path})" if cfg.source != "shapes" else "")


def check_source(name: str) -> str:
    """The source name, or ``SourceError`` (one ``error:`` line from ``main``) listing the known ones."""
    if name not in sources.SOURCE_NAMES:
        raise SourceError(f"unknown synth.source {name!r}; known sources: {', '.join(sources.SOURCE_NAMES)}")
    return name


def jsonl_sources(source_path: str, image_root: str) -> list[tuple[str, str]]:
    """(file, image folder) pairs from ``:``-separated lists, as upstream's ``--data_file_paths`` and
    ``--image_folders`` give them (one folder serves every file); ``SourceError`` when the counts differ."""
    paths, roots = source_path.split(":"), image_root.split(":")
    if len(roots) == 1:
        roots = roots * len(paths)
    if len(roots) != len(paths):
        raise SourceError(f"synth.source_path names {len(paths)} files but synth.image_root {len(roots)} image "
                          f"folders; give one folder per file (':'-separated, as upstream's --image_folders) or one "
                          f"for all")
    return list(zip(paths, roots))


def split_records(cfg, skipped: SkipLog | None = None, usage: dict | None = None) -> dict[str, list[Record]]:
    """Train and validation records of the configured source (disjoint, deterministic).

    Rows the reader skips are counted in ``skipped``; ``SourceError`` when no row is usable. A file source holding
    more usable records than ``num_train + num_validation`` is cut to that many, with a warning naming how many
    are left out; ``usage`` (when given) receives ``{"usable": n, "unused": n}``.
    """
    skipped = SkipLog() if skipped is None else skipped
    if cfg.source == "shapes":
        style = shapes_style(cfg)
        return {
            "train": sources.read_source(
                "shapes", num=cfg.num_train, seed=cfg.seed, image_size=cfg.image_size, style=style
            ),
            "validation": sources.read_source(
                "shapes", num=cfg.num_validation, seed=cfg.seed, image_size=cfg.image_size, start=cfg.num_train,
                style=style,
            ),
        }
    if not cfg.source_path:
        raise ValueError(f"synth.source={cfg.source!r} needs synth.source_path")
    check_source(cfg.source)
    if cfg.source == "aokvqa":
        records = sources.read_aokvqa(
            cfg.source_path, cfg.image_root, split=cfg.aokvqa_split or None, on_error=cfg.on_error, skipped=skipped
        )
    elif cfg.source == "robust_r1_jsonl":
        records = []
        for path, image_root in jsonl_sources(cfg.source_path, cfg.image_root):
            records += sources.read_robust_r1_jsonl(path, image_root, on_error=cfg.on_error, skipped=skipped)
    elif cfg.source == "llamafactory":
        records = sources.read_llamafactory(cfg.source_path, cfg.image_root, cfg.get("dataset_name", ""),
                                            on_error=cfg.on_error, skipped=skipped)
    else:
        records = sources.read_vlmeval_tsv(cfg.source_path, on_error=cfg.on_error, skipped=skipped)
    if not records:
        raise SourceError(f"{describe_source(cfg)} has no usable row: {skipped.describe()}")
    wanted = cfg.num_train + cfg.num_validation
    if len(records) < wanted:
        logger.warning("%s holds %d usable records, fewer than the %d requested", cfg.source_path, len(records), wanted)
    elif len(records) > wanted:
        logger.warning("%s holds %d usable records; only synth.num_train=%d + synth.num_validation=%d of them are "
                       "used (%d left out); raise those to use them all", cfg.source_path, len(records),
                       cfg.num_train, cfg.num_validation, len(records) - wanted)
    if usage is not None:
        usage.update(usable=len(records), unused=max(0, len(records) - wanted))
    order = np.random.default_rng(cfg.seed).permutation(len(records))
    shuffled = [records[i] for i in order]
    split = {"train": shuffled[: cfg.num_train], "validation": shuffled[cfg.num_train: wanted]}
    if cfg.num_validation > 0 and not split["validation"]:
        raise SourceError(f"{describe_source(cfg)} has {len(records)} usable rows ({skipped.describe()}), none left "
                          f"for the validation split after num_train={cfg.num_train}; lower synth.num_train or set "
                          f"synth.num_validation=0 for a train-only dataset")
    return split


# --------------------------------------------------------------------------- the run


def make_annotator(cfg) -> annotators.Annotator:
    if cfg.annotator == "openai" and not (cfg.annotator_base_url and cfg.annotator_model):
        raise ValueError("synth.annotator='openai' needs synth.annotator_base_url and synth.annotator_model")
    if cfg.annotator == "openai":
        return annotators.make_annotator(
            "openai", base_url=cfg.annotator_base_url, model=cfg.annotator_model, timeout=cfg.annotator_timeout
        )
    return annotators.make_annotator(cfg.annotator)


class _Stats:
    """Running totals the summary reports."""

    def __init__(self):
        self.counts = {split: 0 for split in SPLIT_CODES}
        self.skipped = SkipLog()
        self.totals: list[float] = []
        self.reasoning_words: list[int] = []
        self.sheet_rows: list[tuple[np.ndarray, np.ndarray, str]] = []
        self.aliased_types: collections.Counter = collections.Counter()  # "alias -> name": examples
        self.unknown_types: collections.Counter = collections.Counter()  # name: examples
        self.usage: dict = {}  # file sources: usable records read, and those beyond num_train + num_validation
        self.max_images = 0  # the most images one stored example's prompt carries

    def add(self, split: str, item: Synthesized, record: Record) -> None:
        self.counts[split] += 1
        example = item.example
        self.max_images = max(self.max_images, 1 + len(example.get("extra_images", ())))
        if example["degradation_seed"] < 0:  # the source's own chain was kept: its names are the dataset's
            self.aliased_types.update({f"{alias} -> {type_names.canonical(alias)[0]}"
                                       for alias in record.aliased_types})
            self.unknown_types.update(set(record.unknown_types))
        self.totals.append(float(np.sum(example["degradation_intensities"])))
        reasoning = chains.extract_block(example["chain"], "REASONING") or ""
        self.reasoning_words.append(len(reasoning.split()))
        if item.clean is not None:
            self.sheet_rows.append((item.clean, item.degraded, contact_label(example)))


def _settings(cfg) -> SynthSettings:
    return SynthSettings(
        seed=cfg.seed,
        min_degradations=cfg.min_degradations,
        max_degradations=cfg.max_degradations,
        image_format=cfg.image_format,
        max_image_side=cfg.max_image_side,
        keep_prebuilt_chains=cfg.keep_prebuilt_chains,
    )


def _ordered_map(pool, fn, items, window: int) -> Iterator:
    """``map`` on a process pool with at most ``window`` jobs in flight, results in order.

    ``Executor.map`` submits everything at once, which would hold every encoded image of a large
    build in memory when the writer falls behind.
    """
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _split_examples(cfg, split, records, annotator, pool, stats, progress) -> Iterator[dict]:
    """The examples of one split, in record order; bad records reported by ``cfg.on_error``.

    ``SourceError`` naming the source, the skipped count and the reasons when none of them is usable.
    """
    settings = _settings(cfg)
    jobs = (
        (record, split, index, settings, annotator, split == "train" and index < cfg.contact_sheet_size)
        for index, record in enumerate(records)
    )
    results = _ordered_map(pool, _synthesize_job, jobs, 4 * cfg.num_workers) if pool else map(_synthesize_job, jobs)
    for record, item in zip(records, results):
        progress.update(1)
        if item.error is not None:
            report_bad_input(ImageError(item.error), cfg.on_error, stats.skipped)
            continue
        stats.add(split, item, record)
        yield item.example
    if stats.counts[split] == 0:
        raise SourceError(f"{describe_source(cfg)}: none of the {len(records)} {split} records is usable "
                          f"({stats.skipped.describe()})")


def default_config() -> ml_collections.ConfigDict:
    """Every setting of the ``synth`` mode with its default: the embedded shapes run."""
    config = ml_collections.ConfigDict()
    config.mode = "synth"
    config.workdir = "/tmp/robust_r1_jax/synth"

    synth = config.synth = ml_collections.ConfigDict()
    # Source: "shapes" | "aokvqa" | "robust_r1_jsonl" | "llamafactory" | "vlmeval_tsv" (data/sources.py).
    synth.source = "shapes"
    synth.source_path = ""  # A-OKVQA json, RL train.jsonl, LLaMA-Factory JSON/JSONL or VLMEvalKit TSV
    # COCO root holding {split}2017/ (aokvqa); the image folder of train.jsonl (upstream's --image_folders; with
    # several ':'-separated jsonl files in source_path, one folder each or one for all) or of the LLaMA-Factory
    # file ("" -> the file's own folder, LLaMA-Factory's media_dir default)
    synth.image_root = ""
    synth.aokvqa_split = ""  # "" -> taken from the json file name (train / val / test)
    synth.dataset_name = ""  # llamafactory: the dataset_info.json entry ("" -> the entry naming source_path)
    synth.keep_prebuilt_chains = True  # records whose answer turn is a chain: keep their images and chains

    synth.num_train = 256
    synth.num_validation = 64
    synth.image_size = 224  # shapes render size (works down to 8; 56 for the smallest models)
    synth.max_image_side = 0  # file sources: shrink so the longer side is at most this (0 keeps)
    # shapes only: what the generator may draw (data/shapes.py::Style); the default is the full task.
    synth.shapes = ml_collections.ConfigDict(dict(
        kinds=("colour", "shape", "count", "position"),
        colours=("red", "green", "blue", "yellow", "magenta", "white"),
        shapes=("circle", "square", "triangle", "star", "diamond"),
        max_distractors=3, sorted_options=False, object_scale=1.0))

    # Degradations per image, types drawn at random with s ~ U[0, 1]; the paper's examples show 2-7.
    synth.min_degradations = 1
    synth.max_degradations = 4
    synth.seed = 0
    synth.on_error = "skip"  # "skip" (warn with file:line) or "raise" on bad input

    synth.annotator = "template"  # or "openai": an OpenAI-compatible endpoint (OPENAI_API_KEY env)
    synth.annotator_base_url = ""
    synth.annotator_model = ""
    synth.annotator_timeout = 60.0

    synth.image_format = "png"  # "png" (lossless) or "jpeg"
    synth.data_dir = ""  # "" -> {workdir}/tfds; the dataset lands in {data_dir}/robust_r1/1.0.0
    synth.overwrite = True  # replace an existing dataset (atomically) instead of failing
    synth.num_workers = 0  # >0: degrade in that many spawned processes (same bytes as 0)
    synth.contact_sheet_size = 8  # first N train examples, clean beside degraded
    return config


def run(config) -> dict:
    """Build the dataset described by ``config.synth`` under ``config.workdir``; returns the summary."""
    cfg = config.synth
    check_on_error(cfg.on_error)
    check_source(cfg.source)
    if not 1 <= cfg.min_degradations <= cfg.max_degradations:
        raise ValueError(f"need 1 <= min_degradations <= max_degradations, got {cfg.min_degradations}, {cfg.max_degradations}")
    workdir = os.path.abspath(config.workdir)
    data_dir = cfg.data_dir or os.path.join(workdir, "tfds")
    started = time.perf_counter()
    stats = _Stats()
    records = split_records(cfg, stats.skipped, stats.usage)
    annotator = make_annotator(cfg)
    total = sum(len(r) for r in records.values())
    pool = None
    if cfg.num_workers > 0:
        pool = concurrent.futures.ProcessPoolExecutor(
            cfg.num_workers, mp_context=multiprocessing.get_context("spawn")
        )
    try:
        with tqdm(total=total, desc=f"synth {cfg.source}", unit="ex") as progress:
            # One lazy generator per split: tfds consumes them one after the other.
            split_examples = {
                split: _split_examples(cfg, split, records[split], annotator, pool, stats, progress)
                for split in ("train", "validation")
                if records[split]  # num_validation=0 asks for a train-only dataset
            }
            path = tfds_builder.write_dataset(
                split_examples, data_dir, image_format=cfg.image_format, overwrite=cfg.overwrite
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    sheet_path = os.path.join(workdir, CONTACT_SHEET_NAME)
    if stats.sheet_rows:
        with atomic.open_for_write(sheet_path, "wb") as handle:
            Image.fromarray(contact_sheet(stats.sheet_rows)).save(handle, format="PNG")
    summary = {
        "dataset_dir": path,
        "source": cfg.source,
        "counts": stats.counts,
        "skipped": stats.skipped.count,
        "skipped_items": stats.skipped.messages,  # the first ones, each naming file:line and why
        "mean_sum_intensity": round(float(np.mean(stats.totals)), 4) if stats.totals else 0.0,
        "mean_reasoning_words": round(float(np.mean(stats.reasoning_words)), 2) if stats.reasoning_words else 0.0,
        "spearman_sum_intensity_vs_reasoning_words": (
            chain_text.spearman(stats.totals, stats.reasoning_words) if len(stats.totals) > 2 else None
        ),
        "contact_sheet": sheet_path if stats.sheet_rows else None,
        # <TYPE> names of kept source chains: aliases rewritten to SPEC §2 names, and names that are neither
        # (kept as written; each example was warned about when read), with how many examples hold each
        "type_aliases_applied": dict(sorted(stats.aliased_types.items())),
        "unknown_type_names": dict(sorted(stats.unknown_types.items())),
        # train with data.image_slots >= this (a prompt with more images than slots becomes a padding row)
        "max_images_per_prompt": stats.max_images,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if stats.usage:
        summary["source_records"] = stats.usage
    atomic.write_text(os.path.join(workdir, SUMMARY_NAME), json.dumps(summary, indent=2, sort_keys=True))
    logger.info("synth: wrote %s (%s), contact sheet %s", path, stats.counts, summary["contact_sheet"])
    if stats.skipped.count:
        logger.warning("synth: %s", stats.skipped.describe())
    if stats.max_images > 1:
        logger.info("synth: prompts carry up to %d images; train with --config.data.image_slots=%d",
                    stats.max_images, stats.max_images)
    return summary
