"""Which option a model's output picks: the option INDEX (0-based), or None when it cannot be told.

Two answer conventions meet here and both are accepted:

* the chains of SPEC §1 write the 0-based option index in their ANSWER block (``data/chains.py``), e.g. ``2``;
* VLMEvalKit references, and most base models, use option letters, ``C`` / ``(C)`` / ``Answer: C``.

A letter maps to its position (``A`` -> 0, ``C`` -> 2); a bare integer is an index (``2`` -> 2). Either must fall
inside the options, otherwise the answer is None; an out-of-range integer that equals exactly one option's text
(``5`` among the options ``4, 5, 6, 7``) picks that option.

Where the answer is looked for:

1. the first complete ANSWER block (``chains.extract_block``). The model committed to it, so when it cannot be
   read the result is None and the rest of the text is not consulted. Later blocks are ignored.
2. an ANSWER opening tag whose end tag was cut off (the generation ran out of tokens): the text after it, up to
   the next ``<``.
3. otherwise the whole output as free text.

Inside a region, the first rule that finds anything decides; several different options found by that rule are
ambiguous and give None:

a. the region is the answer on its own: ``B``, ``b``, ``(B)``, ``B.``, ``2``, ``Option B``, ``Answer: 2``, or
   exactly one option's text;
b. an answer phrase: ``answer is B``, ``Answer: (b)``, ``the correct option is 2``;
c. a marked capital letter: ``(B)``, ``[B]``, or ``B.`` / ``B)`` / ``B:`` followed by a space or the end;
d. option texts mentioned as whole words (a longer mentioned option hides a shorter one inside it).

Letters inside words never count (``BLUE`` is not ``B``), and a lowercase ``a`` / ``i`` followed by a word is
read as English (``the answer is a red circle``), not as a letter. Integers count only in rules a and b, and in
b not when a word follows (``the answer is 3 shapes``): numbers in sentences are usually counts, not indices.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

from robust_r1_jax.data import chains

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_ANSWER_OPEN = chains.open_tag("ANSWER")

# A choice token: a letter or an integer, optionally bracketed, optionally followed by . ) :
_LONE_CHOICE = re.compile(r"^[(\[]?\s*([A-Za-z]|\d+)\s*[)\]]?\s*[.:)]?$")
_LABELLED_CHOICE = re.compile(
    r"^(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)\s*(?:is|:|=|-)?\s*(.+)$", re.IGNORECASE)
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|correct\s+option|correct\s+choice)\b\s*(?:is|:|=)?\s*:?\s*(?:option\s+|choice\s+)?"
    r"[(\[]?([A-Za-z]|\d+)(?![\w])([)\]]?)(\s+[A-Za-z])?",
    re.IGNORECASE)
_MARKED_LETTER = re.compile(r"[(\[]([A-Z])[)\]]|(?<![\w.])([A-Z])[.):](?=\s|$)")
_DECORATION = " \t\r\n*\"'`“”‘’"


@dataclasses.dataclass(frozen=True)
class Extraction:
    """The picked option index (or None) and where it was read: answer_tag, truncated_tag or free_text."""

    index: int | None
    source: str


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _choice_to_index(token: str, options: Sequence[str]) -> int | None:
    """A letter or integer token -> option index, or None when it names no option."""
    if token.isdigit():
        index = int(token)
        if index < len(options):
            return index
        matches = [i for i, option in enumerate(options) if _fold(option) == token]
        return matches[0] if len(matches) == 1 else None
    position = LETTERS.find(token.upper())
    return position if 0 <= position < len(options) else None


def _whole_region(region: str, options: Sequence[str]) -> tuple[bool, int | None]:
    """(decided, index): rule a. ``decided`` is True when the region has the shape of a lone answer."""
    text = region.strip(_DECORATION).rstrip(".").strip(_DECORATION)
    labelled = _LABELLED_CHOICE.match(text)
    if labelled:
        text = labelled.group(1).strip(_DECORATION).rstrip(".").strip(_DECORATION)
    lone = _LONE_CHOICE.match(text)
    if lone:
        return True, _choice_to_index(lone.group(1), options)
    folded = _fold(text)
    exact = [i for i, option in enumerate(options) if folded and _fold(option) == folded]
    if len(exact) == 1:
        return True, exact[0]
    return False, None


def _phrase_choices(region: str, options: Sequence[str]) -> set[int | None]:
    """Rule b: every ``answer is X``; unreadable tokens are kept as None so they stay visible."""
    found = set()
    for match in _ANSWER_PHRASE.finditer(region):
        token, closing, following = match.group(1), match.group(2), match.group(3)
        if following and not closing and (token in ("a", "i") or token.isdigit()):
            continue  # "the answer is a red circle" / "answer: 3 shapes": prose, not a label
        found.add(_choice_to_index(token, options))
    return found


def _marked_letters(region: str, options: Sequence[str]) -> set[int]:
    """Rule c: capital letters written as option labels, in range."""
    found = set()
    for match in _MARKED_LETTER.finditer(region):
        index = _choice_to_index(match.group(1) or match.group(2), options)
        if index is not None:
            found.add(index)
    return found


def _mentioned_options(region: str, options: Sequence[str]) -> set[int]:
    """Rule d: options whose text appears as whole words; spans inside a longer mention do not count."""
    folded = _fold(region)
    spans = []
    for index, option in enumerate(options):
        needle = _fold(option)
        if not needle:
            continue
        for match in re.finditer(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", folded):
            spans.append((match.start(), match.end(), index))
    kept = set()
    for start, end, index in spans:
        covered = any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
        if not covered:
            kept.add(index)
    return kept


def parse_choice(region: str, options: Sequence[str]) -> int | None:
    """The option index a piece of text names (rules a-d of the module docstring), or None."""
    decided, index = _whole_region(region, options)
    if decided:
        return index
    for rule in (_phrase_choices, _marked_letters, _mentioned_options):
        found = rule(region, options)
        if found:
            return found.pop() if len(found) == 1 else None
    return None


def extract(text: str, options: Sequence[str]) -> Extraction:
    """Where the answer is and which option it picks (see the module docstring)."""
    if not options:
        raise ValueError("answer extraction needs the question's options")
    block = chains.extract_block(text, "ANSWER")
    if block is not None:
        return Extraction(parse_choice(block, options), "answer_tag")
    _, opened, after = text.partition(_ANSWER_OPEN)
    if opened:
        # The region ends at the next tag, even a cut-off one (``<ANSWER_E``).
        region = after.split("<", 1)[0]
        return Extraction(parse_choice(region, options), "truncated_tag")
    return Extraction(parse_choice(text, options), "free_text")


def extract_answer(text: str, options: Sequence[str]) -> int | None:
    """The 0-based option index that ``text`` answers, or None."""
    return extract(text, options).index


# --------------------------------------------------------------------------- VLMEvalKit's exact matching

# The refusals VLMEvalKit scores as its "Z" (no answer) before looking for a letter.
_VLMEVALKIT_REFUSALS = (
    "Sorry, I can't help with images of people yet.", "I can't process this file.",
    "I'm sorry, but without the image provided", "Cannot determine the answer")
_VLMEVALKIT_API_FAILURE = "Failed to obtain answer via API"
# Punctuation VLMEvalKit turns into spaces before splitting an answer into words.
_VLMEVALKIT_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
# Its fallback for verbose answers ("The correct answer is **B**."): letters A-D only, as in VLMEvalKit.
_VLMEVALKIT_VERBOSE = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
# How near the end a lone letter must stand: its first occurrence among the last 4 words.
_VLMEVALKIT_TAIL_WORDS = 4


def _vlmevalkit_option(text: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer_option``: a letter, "Z" (refusal / lone Z), or None (nothing found)."""
    if _VLMEVALKIT_API_FAILURE in text:
        return None
    if any(refusal in text for refusal in _VLMEVALKIT_REFUSALS):
        return "Z"
    words = text.translate(_VLMEVALKIT_SEPARATORS).split()
    present = [letter for letter in options if letter in words]
    if len(present) == 1:
        letter = present[0]
        if words.index(letter) >= len(words) - _VLMEVALKIT_TAIL_WORDS:
            return letter
    elif not present and "Z" in words:
        return "Z"
    verbose = _VLMEVALKIT_VERBOSE.search(text)
    if verbose and verbose.group(1).upper() in options:
        return verbose.group(1).upper()
    return None


def _vlmevalkit_text(text: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit's ``can_infer_text``: the one option whose text (lower-cased) occurs in a short answer."""
    folded = text.lower()
    if len(folded) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    found = [letter for letter, value in options.items() if str(value).lower() in folded]
    return found[0] if len(found) == 1 else None


def vlmevalkit_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter VLMEvalKit's exact matching (``vlmeval/utils/matching_util.py::can_infer``) reads
    from ``text``, or None where it finds none or answers its "Z" (a refusal, or a lone ``Z``).

    ``options`` maps letters to option texts in order (``{"A": "red", "B": "blue"}``). The rules, in order:

    1. the text is split into words after ``.()[],:;!*#{}`` become spaces; when exactly one option letter is
       among the words and its first occurrence is one of the last four words, that letter;
    2. ``answer is X`` / ``correct answer is **X**`` for X in A-D (case-insensitive);
    3. for a text at most twice as long as all option texts together: the one option whose text occurs in it
       (lower-cased substring).

    Raises ValueError when ``options`` is empty or has a key that is not one capital letter.
    """
    if not options:
        raise ValueError("VLMEvalKit matching needs the question's options")
    bad = [key for key in options if len(key) != 1 or key not in LETTERS]
    if bad:
        raise ValueError(f"option keys must be capital letters, got {bad}")
    text = str(text)
    letter = _vlmevalkit_option(text, options)
    if letter is None:
        letter = _vlmevalkit_text(text, options)
    return None if letter == "Z" else letter


def lettered_options(options: Sequence[str]) -> dict[str, str]:
    """Option texts keyed by their letters: ``("red", "blue")`` -> ``{"A": "red", "B": "blue"}``."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options, but only {len(LETTERS)} letters")
    return dict(zip(LETTERS, options))


def vlmevalkit_extract(text: str, options: Sequence[str]) -> Extraction:
    """The ``vlmevalkit`` protocol's reading of an output: the first complete ANSWER block (SPEC §1 chains) with
    ``vlmevalkit_choice``, and where it names no option, the whole output; as a 0-based index."""
    lettered = lettered_options(options)
    block = chains.extract_block(text, "ANSWER")
    if block is not None:
        letter = vlmevalkit_choice(block, lettered)
        if letter is not None:
            return Extraction(LETTERS.index(letter), "answer_tag")
    letter = vlmevalkit_choice(text, lettered)
    return Extraction(None if letter is None else LETTERS.index(letter), "free_text")
