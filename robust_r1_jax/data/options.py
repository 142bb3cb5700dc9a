"""Multiple-choice options as sources write them, and their answers, mapped to one internal form.

Internally a question's options are a tuple of texts and its answer is the 0-based index into that tuple; the
project's prompt numbers the options from 0 (``chains.format_question``) and its chains write that index in the
``<ANSWER>`` block (SPEC §1), so prompt and answer always agree.

Sources write options in three numberings, as trailing lines of the question text:

======== ============================== =====================================
style    option lines                   what a bare number in the answer means
======== ============================== =====================================
``zero`` ``0. a`` ``1. b`` ...          the printed label (= the 0-based index)
``one``  ``1. a`` ``2. b`` ...          the printed label (``1`` is the first option)
``letter`` ``A. a`` / ``(A) a`` / ``A) a`` the 0-based index (SPEC §1), as without labels
         (or ``a. a`` / ``(a) a``: one case)
======== ============================== =====================================

and answers as a number (``2``, ``(2)``, ``2.``), a letter (``C``, ``(C)``, ``C.``; ``c`` too when the options are
lettered) or the option's text. ``resolve_answer`` maps any of
them to the index, and raises ``AnswerError`` (the reader turns it into a per-record problem naming the file and
line) when the answer does not name exactly one option: a number outside the labels, a letter past the last
option, text that matches no option or several (duplicated option texts). Nothing is relabelled silently.
"""
from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ZERO, ONE, LETTER = "zero", "one", "letter"
STYLES = (ZERO, ONE, LETTER)

_OPTION_LINE = re.compile(r"^\s*\(?([A-Za-z]|\d{1,2})[.):]\)?\s+(.+?)\s*$")
_OPTIONS_HEADER = re.compile(r"^\s*(options|choices)\s*:?\s*$", re.IGNORECASE)
_NUMBER = re.compile(r"^\(?([+-]?\d+)\)?[.):]?$")  # 2, (2), 2., 2)
_LETTER_ANSWER = re.compile(r"^\(?([A-Z])\)?[.):]?$")
_LOWER_LETTER_ANSWER = re.compile(r"^\(?([a-z])\)?[.):]?$")  # only where the options are lettered


class AnswerError(ValueError):
    """An answer that does not name exactly one option; the message says why."""


def _style(labels: list[str]) -> str | None:
    """The numbering of option labels in order, or None when they are not one of the three sequences."""
    if all(label.isdigit() for label in labels):
        first = int(labels[0])
        if first in (0, 1) and [int(x) for x in labels] == list(range(first, first + len(labels))):
            return ZERO if first == 0 else ONE
        return None
    joined = "".join(labels)  # one case throughout: A, B, C or a, b, c
    return LETTER if joined in (LETTERS[: len(labels)], LETTERS[: len(labels)].lower()) else None


def split_labelled_options(text: str) -> tuple[str, tuple[str, ...], str | None]:
    """``(question, options, style)`` of a question text whose last lines are labelled options.

    Trailing lines labelled ``A.``/``A)``/``(A)``/``0.``/``1.`` (a sequence in one of ``STYLES``, at least two)
    are the options; an ``Options:``/``Choices:`` header just above them is dropped. Text without such a block is
    returned stripped, with no options and style None.
    """
    lines = text.strip().split("\n")
    options: list[tuple[str, str]] = []
    while lines:
        match = _OPTION_LINE.match(lines[-1])
        if match is None:
            break
        options.insert(0, (match.group(1), match.group(2)))
        lines.pop()
    style = _style([label for label, _ in options]) if len(options) >= 2 else None
    if style is None:
        return text.strip(), (), None
    if lines and _OPTIONS_HEADER.match(lines[-1]):
        lines.pop()
    return "\n".join(lines).strip(), tuple(option for _, option in options), style


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold().rstrip(".")


def resolve_answer(answer: str | int, options: tuple[str, ...] | list[str], style: str | None = None) -> int:
    """The 0-based option index an answer names (see the module docstring for the rules).

    ``answer``: the source's answer (``int``, or text such as ``"1"``, ``"C"``, ``"(C)"``, ``"a plate"``);
    ``style``: how the options were labelled where the answer was written (``STYLES``; None for unlabelled
    options, e.g. a JSON list or a TSV's A/B/C columns). Without options a bare non-negative number is returned
    as it is (an open question's index-shaped answer). Raises ``AnswerError``.
    """
    if style is not None and style not in STYLES:
        raise ValueError(f"unknown option style {style!r}; expected one of {STYLES}")
    options = tuple(options)
    text = str(answer).strip()
    number_match = _NUMBER.match(text)
    if number_match is not None:
        number = int(number_match.group(1))
        if style == ONE:
            if not 1 <= number <= len(options):
                raise AnswerError(f"answer {number} is not one of the option labels 1..{len(options)} "
                                  f"(the options are numbered from 1)")
            return number - 1
        if not options:
            if number < 0:
                raise AnswerError(f"answer {number} is negative")
            return number
        if not 0 <= number < len(options):
            labels = "0.." if style == ZERO else "index 0.."
            raise AnswerError(f"answer {number} is not {labels}{len(options) - 1} of the {len(options)} options")
        return number
    if not options:
        raise AnswerError(f"answer {text!r} is not an option index and the question has no options")
    letter = _LETTER_ANSWER.match(text) or (_LOWER_LETTER_ANSWER.match(text) if style == LETTER else None)
    if letter is not None and len(text) <= 4:
        index = LETTERS.index(letter.group(1).upper())
        if index >= len(options):
            raise AnswerError(f"answer {text!r} is past the last option letter {LETTERS[len(options) - 1]}")
        return index
    matches = [i for i, option in enumerate(options) if _fold(option) == _fold(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AnswerError(f"answer {text!r} matches options {matches} (duplicated option text): ambiguous")
    raise AnswerError(f"answer {text!r} is neither an option label nor the text of one of the options {list(options)}")
