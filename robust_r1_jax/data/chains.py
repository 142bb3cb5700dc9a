"""Degradation-aware reasoning chains: the exact text format of SPEC §1, built and parsed.

A chain is::

    <TYPE>lens blur(0.47), jpeg compression(0.58)<TYPE_END>
    <INFLUENCE>...<INFLUENCE_END>
    <REASONING>...<REASONING_END>
    <CONCLUSION>...<CONCLUSION_END>
    <ANSWER>0<ANSWER_END>

This module is the one definition of that format: the tags, the SPEC §3 format regex and its segment table, the
``name(number)`` pair pattern of the TYPE block and block extraction. The rewards (``rl/rewards.py``), their
references (``data/references.py``) and answer extraction (``eval/answers.py``) derive theirs from it.

TYPE and ANSWER are always written by code (``format_type`` and the option index), so parsing a
generated chain gives back exactly the applied types and intensities. INFLUENCE, REASONING and
CONCLUSION come from an annotator (``data/annotators.py``).

A clean image (no degradation applied) is written ``<TYPE>none<TYPE_END>``: an explicit word is
easier for a model to learn than an empty block, and the TYPE parser returns ``[]`` for it
because ``none`` has no ``name(number)`` pair.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

TAGS = ("TYPE", "INFLUENCE", "REASONING", "CONCLUSION", "ANSWER")
ANNOTATED_TAGS = ("INFLUENCE", "REASONING", "CONCLUSION")  # the blocks an annotator writes (``ChainBody``)


def open_tag(tag: str) -> str:
    """``<TAG>``."""
    return f"<{tag}>"


def close_tag(tag: str) -> str:
    """``<TAG_END>``."""
    return f"<{tag}_END>"


# SPEC §3: the format reward searches for this (DOTALL). Tags hold only capitals, '_', '<' and '>', none of which
# a regex treats specially, so they stand for themselves.
FORMAT_REGEX = r"\s*".join(f"{open_tag(tag)}.*?{close_tag(tag)}" for tag in TAGS)
FORMAT_PATTERN = re.compile(FORMAT_REGEX, re.DOTALL)
# The same regex as literal segments joined by ".*?": (A, B) stands for "A\s*B", (A, None) for A alone.
FORMAT_SEGMENTS = (
    (open_tag(TAGS[0]), None),
    *((close_tag(tag), open_tag(following)) for tag, following in zip(TAGS, TAGS[1:])),
    (close_tag(TAGS[-1]), None),
)
# SPEC §3: the name(number) pairs inside the TYPE block (re.findall semantics).
_PAIR_NAME = r"\w+(?:\s+\w+)*"
TYPE_PAIR_REGEX = rf"({_PAIR_NAME})\(([\d.]+)\)"
TYPE_PAIR_PATTERN = re.compile(TYPE_PAIR_REGEX)
NO_DEGRADATION = "none"
_ANY_TAG = re.compile(r"<[A-Z_]+>")

# SPEC §1 prompt suffix with its whitespace folded to single spaces. The four "\n" are real
# newlines, as in the reference code's Python string literal; "tags,provides" and
# "<ANSWER_END>.i.e.," are verbatim.
PROMPT_SUFFIX = (
    "First output the types of degradations in image briefly in <TYPE> <TYPE_END> tags, and then "
    "output what effects do these degradation have on the image in <INFLUENCE> <INFLUENCE_END> "
    "tags, then based on the strength of degradation, output an APPROPRIATE length for the "
    "reasoning process in <REASONING> <REASONING_END> tags, and then summarize the content of "
    "reasoning and the give the answer in <CONCLUSION> <CONCLUSION_END> tags,provides the user "
    "with the answer briefly in <ANSWER> <ANSWER_END>.i.e., <TYPE> degradation type here "
    "<TYPE_END>\n<INFLUENCE> influence here<INFLUENCE_END>\n<REASONING> reasoning process "
    "here<REASONING_END>\n<CONCLUSION>summary here<CONCLUSION_END>\n<ANSWER>final answer<ANSWER_END>"
)


class ChainFormatError(ValueError):
    """A chain that does not follow SPEC §1 / §3."""


def contains_tag(text: str) -> bool:
    """Whether ``text`` holds anything shaped like a tag (``<CAPITALS_OR_UNDERSCORES>``)."""
    return _ANY_TAG.search(text) is not None


# --------------------------------------------------------------------------- TYPE block


def format_type(applied: Sequence[tuple[str, float]]) -> str:
    """``name(0.47), name(0.58)`` with two decimals; ``none`` when nothing was applied."""
    if not applied:
        return NO_DEGRADATION
    parts = []
    for name, intensity in applied:
        if not re.fullmatch(_PAIR_NAME, name):
            raise ValueError(f"degradation name {name!r} would not survive the TYPE regex")
        if not 0.0 <= float(intensity) <= 1.0:
            raise ValueError(f"intensity of {name!r} must be in [0, 1], got {intensity}")
        parts.append(f"{name}({float(intensity):.2f})")
    return ", ".join(parts)


def parse_type_pairs(type_text: str) -> list[tuple[str, float]]:
    """``name(number)`` pairs of a TYPE block (SPEC §3 regex); invalid numbers are dropped."""
    pairs = []
    for name, number in TYPE_PAIR_PATTERN.findall(type_text):
        try:
            pairs.append((name.strip(), float(number)))
        except ValueError:
            continue
    return pairs


# --------------------------------------------------------------------------- chain text and parsing


@dataclasses.dataclass(frozen=True)
class ChainBody:
    """The annotator-written part of a chain."""

    influence: str
    reasoning: str
    conclusion: str


@dataclasses.dataclass(frozen=True)
class ChainRequest:
    """Everything an annotator needs for one example."""

    question: str
    options: tuple[str, ...]
    answer: int
    rationales: tuple[str, ...]
    applied: tuple[tuple[str, float], ...]
    seed: int = 0

    def __post_init__(self):
        if self.options and not 0 <= self.answer < len(self.options):
            raise ValueError(f"answer {self.answer} is not an index into {len(self.options)} options")

    @property
    def answer_text(self) -> str:
        return self.options[self.answer] if self.options else str(self.answer)


def render_chain(applied: Sequence[tuple[str, float]], body: ChainBody, answer: int) -> str:
    """The five blocks joined by newlines, exactly as SPEC §1 shows them."""
    written = []
    for tag in ANNOTATED_TAGS:
        field = tag.lower()
        text = getattr(body, field)
        if not text.strip():
            raise ChainFormatError(f"the {field} block is empty")
        if contains_tag(text):
            raise ChainFormatError(f"the {field} block contains a tag: {text[:80]!r}")
        written.append(text.strip())
    contents = (format_type(applied), *written, str(int(answer)))
    return "\n".join(f"{open_tag(tag)}{text}{close_tag(tag)}" for tag, text in zip(TAGS, contents))


@dataclasses.dataclass(frozen=True)
class ParsedChain:
    """The blocks of a chain (``None`` where a block is missing) and its TYPE pairs."""

    blocks: dict[str, str | None]
    types: list[tuple[str, float]]
    matches_format: bool

    @property
    def answer(self) -> str | None:
        block = self.blocks.get("ANSWER")
        return None if block is None else block.strip()


def extract_block(text: str, tag: str) -> str | None:
    """Contents of the first ``<TAG>...<TAG_END>`` (non-greedy), or None."""
    match = re.search(f"{open_tag(tag)}(.*?){close_tag(tag)}", text, re.DOTALL)
    return None if match is None else match.group(1)


def parse_chain(text: str) -> ParsedChain:
    """Blocks and TYPE pairs of any text; never raises (see ``parse_chain_strict``)."""
    blocks = {tag: extract_block(text, tag) for tag in TAGS}
    type_block = blocks["TYPE"]
    types = parse_type_pairs(type_block) if type_block is not None else []
    return ParsedChain(blocks, types, FORMAT_PATTERN.search(text) is not None)


def parse_chain_strict(text: str) -> tuple[ParsedChain, int]:
    """Parsed chain and its integer answer; ``ChainFormatError`` if either is malformed."""
    parsed = parse_chain(text)
    if not parsed.matches_format:
        missing = [tag for tag, block in parsed.blocks.items() if block is None]
        detail = f"missing blocks {missing}" if missing else "blocks out of order"
        raise ChainFormatError(f"chain does not match the SPEC §3 format ({detail})")
    try:
        answer = int(parsed.answer)
    except (TypeError, ValueError):
        raise ChainFormatError(f"ANSWER block {parsed.answer!r} is not an option index") from None
    return parsed, answer


def with_answer(chain: str, answer: str) -> str:
    """The chain with the contents of its first ``<ANSWER>`` block replaced by ``answer``; ``ChainFormatError``
    when it has none. Used where a source's answer label is mapped to the project's 0-based index (or back)."""
    match = re.search(f"{open_tag('ANSWER')}(.*?){close_tag('ANSWER')}", chain, re.DOTALL)
    if match is None:
        raise ChainFormatError("the chain has no <ANSWER> block")
    return chain[:match.start(1)] + answer + chain[match.end(1):]


def format_question(question: str, options: Sequence[str]) -> str:
    """The user text of a multiple-choice question: question, then ``i. option`` lines."""
    lines = [question.strip()]
    if options:
        lines.append("Options:")
        lines.extend(f"{i}. {option}" for i, option in enumerate(options))
    return "\n".join(lines)


def format_prompt(question: str, options: Sequence[str], suffix: str = PROMPT_SUFFIX) -> str:
    """Question and options followed by the SPEC §1 instruction suffix."""
    return f"{format_question(question, options)}\n{suffix}" if suffix else format_question(question, options)


# How the user turn's text is written: "project" (``format_prompt``: the question, options numbered from 0, a newline,
# the suffix) or "upstream" (the human turn as written, the suffix appended directly with no separator, as upstream's
# GRPO script does, SPEC §8). ``data/rows.py`` (training), ``eval/robust.py`` and ``eval/generate.py`` read it.
PROJECT_STYLE, UPSTREAM_STYLE = "project", "upstream"
PROMPT_STYLES = (PROJECT_STYLE, UPSTREAM_STYLE)


def check_prompt_style(style: str) -> str:
    """The style, or ValueError listing the known ones."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt_style {style!r}; expected one of {list(PROMPT_STYLES)}")
    return style


def upstream_prompt(human_turn: str, suffix: str = PROMPT_SUFFIX) -> str:
    """The user text upstream builds (SPEC §8): the human turn with ``<image>`` removed and the suffix appended
    directly, no separator; nothing else is touched."""
    return human_turn.replace("<image>", "") + suffix
