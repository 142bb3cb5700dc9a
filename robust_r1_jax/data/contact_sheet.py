"""The synthesis contact sheet: each example's clean image beside its degraded one, with a label."""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from robust_r1_jax.data import chains


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType
        return ImageFont.load_default()


def contact_sheet(rows: Sequence[tuple[np.ndarray, np.ndarray, str]], thumb: int = 192) -> np.ndarray:
    """One row per example: clean | degraded | wrapped label text."""
    if not rows:
        raise ValueError("a contact sheet needs at least one example")
    label_width, pad = 420, 6
    font = _font(13)
    sheet = Image.new("RGB", (2 * thumb + label_width + 4 * pad, len(rows) * (thumb + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (clean, degraded, label) in enumerate(rows):
        top = pad + row * (thumb + pad)
        for column, image in enumerate((clean, degraded)):
            tile = Image.fromarray(np.asarray(image, np.uint8))
            tile.thumbnail((thumb, thumb), Image.Resampling.BILINEAR)
            sheet.paste(tile, (pad + column * (thumb + pad), top))
        lines = []
        for paragraph in label.split("\n"):
            lines += textwrap.wrap(paragraph, width=58) or [""]
        draw.multiline_text((3 * pad + 2 * thumb, top), "\n".join(lines[:12]), fill=(0, 0, 0), font=font, spacing=2)
    return np.asarray(sheet, dtype=np.uint8)


def contact_label(example: dict) -> str:
    applied = list(zip(example["degradation_types"], example["degradation_intensities"].tolist()))
    types = chains.format_type([(n, round(s, 2)) for n, s in applied])
    total = sum(s for _, s in applied)
    answer = example["options"][example["answer"]] if example["options"] else example["answer"]
    label = example.get("prompt_answer", "")
    answer_line = f"A: {answer}" + (f"  (the source's turn: {label})" if label else "")
    if example["degradation_seed"] < 0:  # a source's own chain and image: there is no clean image to show
        return (f"{example['id']}  (pre-degraded source: its image as shipped, shown twice)\n"
                f"the chain's <TYPE>: {types}  (sum s = {total:.2f})\nQ: {example['question']}\n{answer_line}")
    return (
        f"{example['id']}  (seed {example['degradation_seed']})\nclean | degraded: {types}  (sum s = {total:.2f})\n"
        f"Q: {example['question']}\n{answer_line}"
    )
