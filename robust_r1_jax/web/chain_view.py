"""The chain as the page shows it, from text that may still be arriving: the ``<TYPE>`` block as chips
(predicted type and intensity beside what was applied), the other blocks as panels, the answer highlighted.

Pure functions of the text (``data/chains.py`` defines the format); the HTML escapes everything the model wrote.
"""
from __future__ import annotations

import dataclasses
import html
import re
from typing import Sequence

from robust_r1_jax.data import chains
from robust_r1_jax.eval import answers

PANEL_TAGS = ("INFLUENCE", "REASONING", "CONCLUSION")
# A tag cut off by the stream (``<REASON``) is not shown until it is whole.
_CUT_TAG = re.compile(r"<[A-Z_]*$")


@dataclasses.dataclass(frozen=True)
class Block:
    text: str
    closed: bool  # False while the model is still writing it


def partial_blocks(text: str) -> dict[str, Block]:
    """The blocks opened so far: the text after ``<TAG>`` up to ``<TAG_END>`` or, while open, the end of the text
    (a trailing cut-off tag removed)."""
    found = {}
    for tag in chains.TAGS:
        _, opened, after = text.partition(chains.open_tag(tag))
        if not opened:
            continue
        inside, closed, _ = after.partition(chains.close_tag(tag))
        found[tag] = Block(inside if closed else _CUT_TAG.sub("", inside), bool(closed))
    return found


@dataclasses.dataclass(frozen=True)
class Chip:
    """One degradation type: what the model predicted and what was applied (None where one side lacks it)."""

    name: str
    predicted: float | None
    applied: float | None

    @property
    def status(self) -> str:
        """"hit" (named and applied), "extra" (named, not applied), "missed" (applied, not named)."""
        if self.predicted is not None and self.applied is not None:
            return "hit"
        return "extra" if self.predicted is not None else "missed"


def type_chips(text: str, applied: Sequence[tuple[str, float]]) -> list[Chip]:
    """Predicted pairs of the TYPE block in their order (SPEC §3 pair regex; a block still open counts what is
    complete), then the applied types the model did not name. Repeated names keep their first intensity."""
    block = partial_blocks(text).get("TYPE")
    predicted: dict[str, float] = {}
    for name, value in chains.parse_type_pairs(block.text if block else ""):
        predicted.setdefault(name, value)
    applied_by_name = {name: float(value) for name, value in applied}
    chips = [Chip(name, value, applied_by_name.get(name)) for name, value in predicted.items()]
    chips += [Chip(name, None, value) for name, value in applied_by_name.items() if name not in predicted]
    return chips


def answer_text(text: str, options: Sequence[str]) -> str | None:
    """The answer as the page shows it: ``"2 (red)"`` when options are given and one can be read (eval's
    extraction), else the ANSWER block's text; None before the block closes."""
    block = partial_blocks(text).get("ANSWER")
    if options:
        if block is None or not block.closed:
            return None
        index = answers.extract_answer(text, options)
        return f"{index} ({options[index]})" if index is not None else f"unreadable: {block.text.strip()!r}"
    return block.text.strip() if block is not None and block.closed else None


def _chip_html(chip: Chip) -> str:
    def shown(value):
        return "—" if value is None else f"{value:.2f}"
    title = {"hit": "named by the model and applied", "extra": "named by the model, not applied",
             "missed": "applied, not named by the model"}[chip.status]
    return (f'<span class="rr-chip rr-{chip.status}" title="{title}"><b>{html.escape(chip.name)}</b> '
            f'predicted {shown(chip.predicted)} · applied {shown(chip.applied)}</span>')


def chips_html(text: str, applied: Sequence[tuple[str, float]]) -> str:
    """The TYPE row: one chip per type; "clean" when nothing was applied and nothing is predicted."""
    chips = type_chips(text, applied)
    block = partial_blocks(text).get("TYPE")
    if not chips:
        said = "waiting for &lt;TYPE&gt;" if block is None else ("model: no degradation" if block.closed else "…")
        return f'<div class="rr-chips"><span class="rr-chip rr-clean">clean image · {said}</span></div>'
    return '<div class="rr-chips">' + "".join(_chip_html(c) for c in chips) + "</div>"


def panels_html(text: str, options: Sequence[str]) -> str:
    """INFLUENCE / REASONING / CONCLUSION panels (an open one marked as being written) and the answer, or the
    raw text when the model writes no block at all."""
    blocks = partial_blocks(text)
    if not blocks and text.strip():
        return f'<div class="rr-panel"><div class="rr-tag">output (no chain blocks)</div>{html.escape(text)}</div>'
    parts = []
    for tag in PANEL_TAGS:
        if tag in blocks:
            block = blocks[tag]
            writing = "" if block.closed else " rr-writing"
            parts.append(f'<div class="rr-panel{writing}"><div class="rr-tag">{tag.lower()}</div>'
                         f"{html.escape(block.text.strip())}</div>")
    answer = answer_text(text, options)
    if answer is not None:
        parts.append(f'<div class="rr-answer">answer: <b>{html.escape(answer)}</b></div>')
    return "".join(parts)


def predicted_intensity(text: str, name: str | None) -> float | None:
    """The model's intensity for type ``name`` (None when it does not name it); with ``name`` None, the first
    predicted pair's."""
    chips = [c for c in type_chips(text, ()) if name is None or c.name == name]
    return chips[0].predicted if chips else None
