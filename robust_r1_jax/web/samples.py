"""The page's bundled samples: shapes questions from the project's own generator (``data/shapes.py``), drawn in
the narrowed style the demo model is trained on (``configs/demo.py``: one large object, colour and shape questions,
options in palette order), so the default model meets images like its training data."""
from __future__ import annotations

import dataclasses

import numpy as np

from robust_r1_jax.data import shapes

DEMO_STYLE = shapes.Style(kinds=("colour", "shape"), colours=("red", "green", "blue", "yellow"),
                          shapes=("circle", "square", "triangle", "star"), max_distractors=0, sorted_options=True,
                          object_scale=2.5)
# Indices of a held-out stream (the demo trains on seed 0 and evaluates on seed + 7919).
SAMPLE_SEED = 2026


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    image: np.ndarray  # uint8 RGB
    question: str
    options: tuple[str, ...]
    answer: int


def bundled_samples(count: int = 3, image_size: int = 168) -> tuple[Sample, ...]:
    """``count`` samples, a pure function of the arguments; named by question kind and answer."""
    samples = []
    for index in range(count):
        example = shapes.make_example(SAMPLE_SEED, index, image_size, style=DEMO_STYLE)
        name = f"sample {index + 1}: {example.kind} ({example.options[example.answer]})"
        samples.append(Sample(name, shapes.render(example.scene), example.question, example.options, example.answer))
    return tuple(samples)
