"""How well a generated chain names the degradation that was applied: precision and recall of the names in its
TYPE block and the mean absolute error of their intensities.

Names are compared exactly after stripping (the SPEC §3 rule); a name predicted twice counts once, with its first
intensity. Counts are summed over a set of outputs before dividing (micro-averages), so an output that names
three types weighs three times as much in the precision as one that names one.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from robust_r1_jax.data import chains


@dataclasses.dataclass(frozen=True)
class TypeMatch:
    """One output against its applied degradations."""

    predicted: int  # distinct predicted names
    applied: int  # distinct applied names
    matched: int  # names in both
    abs_errors: tuple[float, ...]  # |predicted - applied intensity| of each matched name


def predicted_types(text: str) -> list[tuple[str, float]]:
    """The ``name(intensity)`` pairs of the first TYPE block (empty when there is none)."""
    return chains.parse_chain(text).types


def _first_by_name(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    first: dict[str, float] = {}
    for name, intensity in pairs:
        first.setdefault(name.strip(), float(intensity))
    return first


def match_types(predicted: Sequence[tuple[str, float]], applied: Sequence[tuple[str, float]]) -> TypeMatch:
    """Compare the predicted pairs of one output with the applied ones."""
    guessed, truth = _first_by_name(predicted), _first_by_name(applied)
    common = [name for name in guessed if name in truth]
    return TypeMatch(
        predicted=len(guessed),
        applied=len(truth),
        matched=len(common),
        abs_errors=tuple(abs(guessed[name] - truth[name]) for name in common),
    )


def summarize(matches: Iterable[TypeMatch]) -> dict[str, float | int | None]:
    """Micro-averaged precision, recall and intensity MAE; None where the denominator is zero."""
    matches = list(matches)
    predicted = sum(m.predicted for m in matches)
    applied = sum(m.applied for m in matches)
    matched = sum(m.matched for m in matches)
    errors = [e for m in matches for e in m.abs_errors]
    return {
        "type_precision": matched / predicted if predicted else None,
        "type_recall": matched / applied if applied else None,
        "intensity_mae": sum(errors) / len(errors) if errors else None,
        "types_predicted": predicted,
        "types_applied": applied,
        "types_matched": matched,
    }
