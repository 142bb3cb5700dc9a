"""The sweep: one question on one image at the robustness protocol's levels (``degrade.BENCHMARK_LEVELS``: clean /
25% / 50% / 100% = intensities 0 / 0.23 / 0.45 / 0.9, SPEC §2 and ``eval/robust.py``), one type and pixel seed at
every level, tabulated and plotted (answer and predicted intensity per level)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # the server has no display
import matplotlib.pyplot as plt  # noqa: E402

from robust_r1_jax import degrade  # noqa: E402
from robust_r1_jax.web import chain_view  # noqa: E402

LEVELS: tuple[tuple[str, float], ...] = tuple(degrade.BENCHMARK_LEVELS.items())
TABLE_HEADERS = ("level", "applied", "model's TYPE", "predicted", "answer", "tokens")


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    level: str
    intensity: float  # applied; 0 for clean
    text: str  # the generated chain
    num_tokens: int


def sweep_type(choice: str, seed: int) -> str:
    """The type the sweep applies: the chosen one, or (clean / random choice) the type the protocol draws for image
    index ``seed`` (``degrade.sample_benchmark``)."""
    return choice if choice in degrade.BY_NAME else degrade.sample_benchmark(int(seed))


def sweep_table(points: Sequence[SweepPoint], name: str, options: Sequence[str]) -> list[list]:
    """One row per level, in ``TABLE_HEADERS`` order; missing values are empty strings."""
    rows = []
    for point in points:
        predicted = [c for c in chain_view.type_chips(point.text, ()) if c.predicted is not None]
        own = chain_view.predicted_intensity(point.text, name)
        rows.append([point.level, f"{name} {point.intensity:.2f}" if point.intensity else "clean",
                     ", ".join(f"{c.name}({c.predicted:.2f})" for c in predicted) or "none",
                     "" if own is None else round(own, 2),
                     chain_view.answer_text(point.text, options) or "", point.num_tokens])
    return rows


def sweep_figure(points: Sequence[SweepPoint], name: str, options: Sequence[str]):
    """Predicted intensity of ``name`` against the applied one per level, each point labelled with the answer."""
    figure, axis = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    x = list(range(len(points)))
    axis.plot(x, [p.intensity for p in points], "o--", color="0.55", label="applied")
    predicted = [chain_view.predicted_intensity(p.text, name) for p in points]
    shown = [(i, v) for i, v in zip(x, predicted) if v is not None]
    if shown:
        axis.plot([i for i, _ in shown], [v for _, v in shown], "o-", color="tab:blue", label="predicted")
    for i, point in zip(x, points):
        answer = chain_view.answer_text(point.text, options) or "no answer"
        axis.annotate(answer, (i, point.intensity), textcoords="offset points", xytext=(0, 10), ha="center",
                      fontsize=8)
    axis.set_xticks(x, [p.level for p in points])
    axis.set_ylim(-0.05, 1.15)
    axis.set_ylabel(f"{name} intensity")
    axis.set_title("answer and predicted intensity per level", fontsize=10)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    return figure
