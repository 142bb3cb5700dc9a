"""``inspect`` on a dataset: what its examples cost in tokens, before any training.

    python -m robust_r1_jax.main --config=configs/inspect.py --config.inspect.path=DATASET_DIR \\
        --config.inspect.tokenizer=MODEL_OR_TOKENIZER_DIR [--config.inspect.seq_len=4096 ...]

prints the token-length histograms of the prompts (text around the images), the image tokens and the chains,
the share of padding one example per ``seq_len`` row would compute, and the examples each step trains with and
without packing (``data/packing.py``) at the given batch and buckets. A path that is not a dataset (TFDS folder
or ``configs/synth.py`` output) is a model or checkpoint: ``model/convert.py``'s report.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from robust_r1_jax.data import packing
from robust_r1_jax.data.rows import PipelineConfig, SFTRow
from robust_r1_jax.model import convert
from robust_r1_jax.model.processor import Processor

UNTRUNCATED = 1 << 20   # the measuring rows' seq_len: every example whole


def default_config() -> ml_collections.ConfigDict:
    """The inspect mode: ``inspect.path`` a model / checkpoint, or a dataset with the settings below."""
    c = convert.default_inspect_config()
    c.inspect.update(dict(
        tokenizer="",             # dataset: the tokenizer (or model) folder its rows are tokenised with
        split="train", limit=0,   # examples read (0: all)
        seq_len=2048, patch_bucket=1024, image_slots=1, global_batch_size=16,   # the training rows to cost
        min_pixels=56 * 56, max_pixels=448 * 448, bins=10))
    return c


@dataclasses.dataclass(frozen=True)
class ExampleTokens:
    prompt: int    # text tokens outside the chain (system, template, question, options, suffix, markers)
    image: int     # image tokens
    chain: int     # target tokens (the chain and its closing <|im_end|>)

    @property
    def total(self) -> int:
        return self.prompt + self.image + self.chain


def example_tokens(source: Sequence, processor: Processor, config: PipelineConfig, limit: int = 0
                   ) -> tuple[list[ExampleTokens], list[packing.ExampleSize], int]:
    """Each usable example's token split and its size in a packed row of ``config``; and how many were refused."""
    measure = SFTRow(source, processor, dataclasses.replace(config, seq_len=UNTRUNCATED, packing=True))
    tokens, sizes, refused = [], [], 0
    for index in range(min(len(source), limit) if limit else len(source)):
        size = measure.measure(index)
        if size is None:
            refused += 1
            continue
        ex = measure.example(index)
        image = int(np.sum(ex.input_ids == processor.image_token_id))
        chain = int(np.sum(ex.loss_mask))
        tokens.append(ExampleTokens(len(ex.input_ids) - image - chain, image, chain))
        sizes.append(size)
    return tokens, sizes, refused


def histogram(values: Sequence[int], bins: int, width: int = 40) -> list[str]:
    """Text lines ``[low, high)  count  bar`` (the last bin closed)."""
    values = np.asarray(values)
    if values.min() == values.max():
        return [f"  {values.min():>6}          {len(values):>7}  {'#' * width}"]
    counts, edges = np.histogram(values, bins=bins)
    top = max(counts.max(), 1)
    return [f"  {int(lo):>6} - {int(hi):<6} {n:>7}  {'#' * int(round(width * n / top))}"
            for lo, hi, n in zip(edges[:-1], edges[1:], counts)]


def dataset_report(tokens: list[ExampleTokens], sizes: list[packing.ExampleSize], *, seq_len: int,
                   patch_bucket: int, image_slots: int, global_batch_size: int) -> dict:
    """Padding and examples per step of these examples in rows of ``seq_len`` (see ``packing.packing_stats``)."""
    budget = packing.RowBudget(seq_len, patch_bucket, image_slots)
    padded = packing.packing_stats(sizes, global_batch_size, budget, packing=False)
    packed = packing.packing_stats(sizes, global_batch_size, budget, packing=True)
    totals = np.array([t.total for t in tokens])
    return dict(
        examples=len(tokens), truncated=int(np.sum(totals > seq_len)),
        mean_tokens={k: float(np.mean([getattr(t, k) for t in tokens])) for k in ("prompt", "image", "chain")},
        mean_total=float(totals.mean()),
        unpacked=dict(padding_fraction=padded["padding_fraction"], examples_per_step=global_batch_size,
                      steps_per_epoch=len(tokens) / global_batch_size),
        packed=dict(padding_fraction=packed["padding_fraction"], examples_per_row=packed["examples_per_row"],
                    examples_per_step=packed["examples_per_row"] * global_batch_size,
                    steps_per_epoch=len(tokens) / (packed["examples_per_row"] * global_batch_size)))


def format_report(path: str, tokens: list[ExampleTokens], report: dict, refused: int, *, seq_len: int,
                  patch_bucket: int, image_slots: int, global_batch_size: int, bins: int) -> str:
    lines = [f"dataset {path}: {report['examples']} examples" + (f" ({refused} refused)" if refused else "")]
    for name in ("prompt", "image", "chain"):
        values = [getattr(t, name) for t in tokens]
        lines.append(f"{name} tokens: mean {np.mean(values):.0f}, min {min(values)}, max {max(values)}")
        lines += histogram(values, bins)
    lines.append(f"row tokens (prompt + image + chain): mean {report['mean_total']:.0f}, "
                 f"{report['truncated']} longer than seq_len={seq_len}")
    lines += histogram([t.total for t in tokens], bins)
    u, p = report["unpacked"], report["packed"]
    lines.append(f"at seq_len={seq_len}, global_batch_size={global_batch_size} rows, patch_bucket={patch_bucket}, "
                 f"image_slots={image_slots}:")
    lines.append(f"  unpacked: padding {100 * u['padding_fraction']:.1f}% of the row slots, "
                 f"{u['examples_per_step']} examples per step, {u['steps_per_epoch']:.1f} steps per epoch")
    lines.append(f"  packed:   padding {100 * p['padding_fraction']:.1f}%, {p['examples_per_row']:.2f} examples per "
                 f"row, {p['examples_per_step']:.1f} examples per step, {p['steps_per_epoch']:.1f} steps per epoch")
    return "\n".join(lines)


def _dataset_dir(path: str) -> str | None:
    try:
        from robust_r1_jax.data import tfds_builder
    except ImportError:   # an install without tensorflow-datasets inspects models only
        return None
    try:
        return tfds_builder.find_dataset_dir(path)
    except (FileNotFoundError, ValueError):
        return None


def run_inspect(config) -> dict | None:
    c = config.inspect
    dataset = _dataset_dir(c.path) if c.path and os.path.isdir(c.path) else None
    if dataset is None:
        return convert.run_inspect(config)
    if not c.get("tokenizer"):
        raise ValueError(f"{c.path} is a dataset: set --config.inspect.tokenizer=DIR (the tokenizer or model folder "
                         f"its rows are tokenised with)")
    from robust_r1_jax.data import tfds_builder
    from robust_r1_jax.model import loading
    processor = loading.load_processor(c.tokenizer, min_pixels=c.min_pixels, max_pixels=c.max_pixels,
                                       field="--config.inspect.tokenizer")
    source = tfds_builder.data_source(dataset, c.split)
    rows = PipelineConfig(seq_len=c.seq_len, patch_bucket=c.patch_bucket, image_slots=c.image_slots,
                          min_pixels=c.min_pixels, max_pixels=c.max_pixels)
    tokens, sizes, refused = example_tokens(source, processor, rows, c.limit)
    if not tokens:
        raise ValueError(f"{dataset}: none of its examples can become a row ({refused} refused)")
    settings = dict(seq_len=c.seq_len, patch_bucket=c.patch_bucket, image_slots=c.image_slots,
                    global_batch_size=c.global_batch_size)
    report = dataset_report(tokens, sizes, **settings)
    print(format_report(dataset, tokens, report, refused, bins=c.bins, **settings))
    return report
