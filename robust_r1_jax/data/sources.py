"""Readers that turn VQA files into ``Record`` objects, and a VLMEvalKit TSV writer.

Sources:
  * A-OKVQA json (a list of dicts) + a COCO image folder ``{coco_root}/{split}2017/{image_id:012d}.jpg``;
  * the released Robust-R1 JSONL layout (``conversations`` with ``<image>``; the chain is the answer);
  * VLMEvalKit multiple-choice TSV (base64 images) for evaluation;
  * ``shapes``, the built-in procedural generator (``shapes.py``).

Every bad record is reported as ``file:line: what is wrong`` and then skipped or raised by
``on_error="skip"|"raise"``; a ``SkipLog`` passed as ``skipped`` counts the skipped ones. Text that
is not UTF-8 (a Latin-1 byte, say) is such a per-record problem: files are decoded with
``errors="surrogateescape"`` and each record is checked for escaped bytes. Problems that make a whole
file unusable (unreadable JSON array, missing TSV columns) always raise.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import os
import re
import sys
from typing import Iterable, Iterator, Sequence

from robust_r1_jax import atomic
from robust_r1_jax.data import chains, shapes
from robust_r1_jax.data.records import (
    Record,
    SkipLog,
    SourceError,
    check_on_error,
    non_utf8_problem,
    report_bad_input,
)

SOURCE_NAMES = ("shapes", "aokvqa", "robust_r1_jsonl", "vlmeval_tsv")
TSV_REQUIRED_COLUMNS = ("index", "image", "question", "A", "B", "answer")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# VLMEvalKit stores a repeated image once; other rows hold the index of that row instead.
_MAX_IMAGE_REFERENCE_LENGTH = 64


# --------------------------------------------------------------------------- A-OKVQA


def _iter_json_array(text: str, path: str) -> Iterator[tuple[int, object]]:
    """(line, element) for each element of a top-level JSON array, with its starting line."""
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")

    def line_of(position: int) -> int:
        return text.count("\n", 0, position) + 1

    position = whitespace.match(text, 0).end()
    if position >= len(text) or text[position] != "[":
        raise SourceError(f"{path}:{line_of(position)}: expected a JSON array of question records")
    position = whitespace.match(text, position + 1).end()
    if position < len(text) and text[position] == "]":
        return
    while True:
        try:
            element, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise SourceError(f"{path}:{error.lineno}:{error.colno}: invalid JSON ({error.msg})") from error
        yield line_of(position), element
        position = whitespace.match(text, end).end()
        if position < len(text) and text[position] == ",":
            position = whitespace.match(text, position + 1).end()
            continue
        if position < len(text) and text[position] == "]":
            return
        raise SourceError(f"{path}:{line_of(position)}: invalid JSON (expected ',' or ']' after a record)")


def infer_aokvqa_split(json_path: str) -> str:
    """``train`` / ``val`` / ``test`` from a file name such as ``aokvqa_v1p0_val.json``."""
    match = re.search(r"(train|val|test)", os.path.basename(json_path))
    if match is None:
        raise ValueError(f"cannot infer the A-OKVQA split from {json_path!r}; pass split='train'|'val'|'test'")
    return match.group(1)


def aokvqa_image_path(coco_root: str, split: str, image_id: int) -> str:
    return os.path.join(coco_root, f"{split}2017", f"{int(image_id):012d}.jpg")


def _json_text_problem(value, field: str = "") -> str | None:
    """The first string inside a decoded JSON value (field names included) that held a non-UTF-8 byte."""
    if isinstance(value, str):
        problem = non_utf8_problem(value)
        return problem and (f"field {field!r}: {problem}" if field else problem)
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(key, str) and (problem := non_utf8_problem(key)):
            return f"a field name: {problem}"
        name = f"{field}[{key}]" if isinstance(key, int) else (f"{field}.{key}" if field else key)
        problem = _json_text_problem(child, name)
        if problem:
            return problem
    return None


def _aokvqa_problem(item) -> str | None:
    """What makes an A-OKVQA record unusable, or None."""
    if not isinstance(item, dict):
        return f"record is a {type(item).__name__}, not an object"
    text_problem = _json_text_problem(item)
    if text_problem is not None:
        return f"record {item.get('question_id', '?')!r}: {text_problem}"
    missing = [k for k in ("question_id", "image_id", "question", "choices", "correct_choice_idx") if k not in item]
    if missing:
        return f"record {item.get('question_id', '?')} is missing {missing}"
    choices = item["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        return f"record {item['question_id']}: 'choices' must be a list of at least two strings"
    answer = item["correct_choice_idx"]
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        return f"record {item['question_id']}: correct_choice_idx {answer!r} is not an index into {len(choices)} choices"
    if not isinstance(item["image_id"], int):
        return f"record {item['question_id']}: image_id {item['image_id']!r} is not an integer"
    return None


def read_aokvqa(
    json_path: str,
    coco_root: str,
    split: str | None = None,
    on_error: str = "skip",
    check_images: bool = True,
    skipped: SkipLog | None = None,
) -> list[Record]:
    """A-OKVQA multiple-choice records; images at ``{coco_root}/{split}2017/{image_id:012d}.jpg``.

    ``split`` defaults to the one in the file name. ``check_images`` reports missing image files
    while reading (cheap); undecodable images are reported when loaded.
    """
    check_on_error(on_error)
    split = split or infer_aokvqa_split(json_path)
    with open(json_path, encoding="utf-8", errors="surrogateescape") as handle:
        text = handle.read()
    records = []
    for line, item in _iter_json_array(text, json_path):
        problem = _aokvqa_problem(item)
        if problem is not None:
            report_bad_input(f"{json_path}:{line}: {problem}", on_error, skipped)
            continue
        image_path = aokvqa_image_path(coco_root, split, item["image_id"])
        if check_images and not os.path.isfile(image_path):
            report_bad_input(f"{json_path}:{line}: record {item['question_id']}: image file not found: {image_path}",
                             on_error, skipped)
            continue
        rationales = item.get("rationales") or []
        records.append(
            Record(
                id=str(item["question_id"]),
                question=str(item["question"]),
                options=tuple(item["choices"]),
                answer=int(item["correct_choice_idx"]),
                rationales=tuple(str(r) for r in rationales),
                image_path=image_path,
                source_file=json_path,
                line=line,
            )
        )
    return records


# --------------------------------------------------------------------------- Robust-R1 JSONL

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z]|\d{1,2})[.):]\)?\s+(.+?)\s*$")
_OPTIONS_HEADER = re.compile(r"^\s*(options|choices)\s*:?\s*$", re.IGNORECASE)


def _sequential(labels: list[str]) -> bool:
    if all(label.isdigit() for label in labels):
        first = int(labels[0])
        return first in (0, 1) and [int(x) for x in labels] == list(range(first, first + len(labels)))
    return "".join(labels) == _LETTERS[: len(labels)]


def split_options(text: str) -> tuple[str, tuple[str, ...]]:
    """Split ``question\\nOptions:\\n0. a\\n1. b`` into the question and its options.

    Trailing lines labelled ``A.``/``A)``/``(A)``/``0.``/``1.`` (sequential, at least two) are
    options; an ``Options:``/``Choices:`` header just above them is dropped. Text without such
    a block is returned whole with no options.
    """
    lines = text.strip().split("\n")
    options: list[tuple[str, str]] = []
    while lines:
        match = _OPTION_LINE.match(lines[-1])
        if match is None:
            break
        options.insert(0, (match.group(1), match.group(2)))
        lines.pop()
    if len(options) < 2 or not _sequential([label for label, _ in options]):
        return text.strip(), ()
    if lines and _OPTIONS_HEADER.match(lines[-1]):
        lines.pop()
    return "\n".join(lines).strip(), tuple(option for _, option in options)


_SUFFIX_START = re.compile(r"\s+".join(map(re.escape, "First output the types of degradations".split())))


def _strip_prompt(text: str) -> str:
    """The human turn without ``<image>`` and without the SPEC §1 instruction suffix."""
    text = text.replace("<image>", "")
    match = _SUFFIX_START.search(text)
    return (text[: match.start()] if match else text).strip()


def _jsonl_problem(item) -> str | None:
    if not isinstance(item, dict):
        return f"line holds a {type(item).__name__}, not an object"
    if not isinstance(item.get("image"), str) or not item["image"]:
        return "missing the 'image' path"
    turns = item.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "'conversations' must hold a human turn and a gpt turn"
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
        return "each conversation turn needs a text 'value'"
    if turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
        return f"conversation roles are {turns[0].get('from')!r}, {turns[1].get('from')!r}; expected 'human', 'gpt'"
    return None


def read_robust_r1_jsonl(
    path: str, image_root: str, on_error: str = "skip", check_images: bool = True, skipped: SkipLog | None = None
) -> list[Record]:
    """Records from the released Robust-R1 JSONL; their images are already degraded.

    The answer index and the applied degradations are parsed out of the gpt turn's chain, which
    is kept as ``Record.chain``. Options written as labelled lines at the end of the human turn
    are split out of the question (``split_options``).
    """
    check_on_error(on_error)
    records = []
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            text_problem = non_utf8_problem(line)
            if text_problem is not None:
                report_bad_input(f"{path}:{line_number}: {text_problem}", on_error, skipped)
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                report_bad_input(f"{path}:{line_number}: not valid JSON ({error.msg}, column {error.colno})", on_error,
                                 skipped)
                continue
            problem = _jsonl_problem(item)
            if problem is None:
                try:
                    parsed, answer = chains.parse_chain_strict(item["conversations"][1]["value"])
                except chains.ChainFormatError as error:
                    problem = f"gpt turn is not a valid chain: {error}"
            if problem is None:
                question, options = split_options(_strip_prompt(item["conversations"][0]["value"]))
                if options and not 0 <= answer < len(options):
                    problem = f"ANSWER {answer} is not an index into the {len(options)} options"
                elif answer < 0:
                    problem = f"ANSWER {answer} is negative"
            if problem is None:
                image_path = os.path.join(image_root, item["image"])
                if check_images and not os.path.isfile(image_path):
                    problem = f"image file not found: {image_path}"
            if problem is not None:
                record_id = item.get("id", "?") if isinstance(item, dict) else "?"
                report_bad_input(f"{path}:{line_number}: record {record_id}: {problem}", on_error, skipped)
                continue
            records.append(
                Record(
                    id=str(item.get("id", f"line{line_number}")),
                    question=question,
                    options=options,
                    answer=answer,
                    image_path=image_path,
                    chain=item["conversations"][1]["value"],
                    applied=tuple(parsed.types),
                    source_file=path,
                    line=line_number,
                )
            )
    return records


# --------------------------------------------------------------------------- VLMEvalKit TSV


def _present(value: str | None) -> bool:
    # pandas writes NaN as an empty field; some exports spell it out.
    return value is not None and value.strip() not in ("", "nan", "NaN", "None")


def _tsv_rows(path: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """(start line, header, row) for each data row; base64 fields need a large field limit."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise SourceError(f"{path}:1: empty TSV, expected a header row") from None
        missing = [c for c in TSV_REQUIRED_COLUMNS if c not in header]
        if missing:
            raise SourceError(
                f"{path}:1: TSV is missing required column(s) {missing}; header has {header}"
            )
        previous_end = reader.line_num
        for row in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if not any(field.strip() for field in row):
                continue
            yield start, header, row


def _tsv_options(fields: dict[str, str]) -> tuple[tuple[str, ...], str | None]:
    """Options A, B, ... in order, stopping at the first absent letter; a gap is an error."""
    options = []
    for letter in _LETTERS:
        if letter not in fields or not _present(fields[letter]):
            later = [l for l in _LETTERS[_LETTERS.index(letter) + 1:] if l in fields and _present(fields[l])]
            if later:
                return (), f"option {letter} is empty but {later[0]} is not"
            break
        options.append(fields[letter].strip())
    if len(options) < 2:
        return (), f"needs at least two options, found {len(options)}"
    return tuple(options), None


def read_vlmeval_tsv(path: str, on_error: str = "skip", skipped: SkipLog | None = None) -> list[Record]:
    """VLMEvalKit multiple-choice TSV: index, image (base64), question, A, B, ..., answer.

    ``category`` and ``hint`` are optional. An image field of at most 64 characters that equals
    another row's index refers to that row's image (VLMEvalKit's de-duplication).
    """
    check_on_error(on_error)
    rows = list(_tsv_rows(path))
    images_by_index = {}
    for _, header, row in rows:
        fields = dict(zip(header, row))
        if len(fields.get("image", "")) > _MAX_IMAGE_REFERENCE_LENGTH:
            images_by_index[fields["index"].strip()] = fields["image"]
    records = []
    for line, header, row in rows:
        if len(row) != len(header):
            report_bad_input(f"{path}:{line}: row has {len(row)} fields, header has {len(header)}", on_error, skipped)
            continue
        fields = dict(zip(header, row))
        # before the row's text goes into any message: a lone escaped byte would break strict log handlers
        text_problem = next(((name, p) for name, value in fields.items() if (p := non_utf8_problem(value))), None)
        if text_problem is not None:
            report_bad_input(f"{path}:{line}: column {text_problem[0]!r}: {text_problem[1]}", on_error, skipped)
            continue
        index = fields["index"].strip()
        where = f"{path}:{line}: row index {index}"
        image_text = fields["image"].strip()
        if len(image_text) <= _MAX_IMAGE_REFERENCE_LENGTH and image_text in images_by_index:
            image_text = images_by_index[image_text]
        try:
            image_bytes = base64.b64decode("".join(image_text.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            report_bad_input(f"{where}: image column is not valid base64 ({error})", on_error, skipped)
            continue
        if not image_bytes:
            report_bad_input(f"{where}: image column is empty", on_error, skipped)
            continue
        options, problem = _tsv_options(fields)
        answer_letter = fields["answer"].strip()
        if problem is None and (len(answer_letter) != 1 or answer_letter not in _LETTERS[: len(options)]):
            problem = f"answer {answer_letter!r} is not one of the option letters {_LETTERS[: len(options)]}"
        if problem is not None:
            report_bad_input(f"{where}: {problem}", on_error, skipped)
            continue
        records.append(
            Record(
                id=index,
                question=fields["question"].strip(),
                options=options,
                answer=_LETTERS.index(answer_letter),
                image_bytes=image_bytes,
                category=fields["category"].strip() if _present(fields.get("category")) else "",
                hint=fields["hint"].strip() if _present(fields.get("hint")) else "",
                source_file=path,
                line=line,
            )
        )
    return records


def write_vlmeval_tsv(records: Sequence[Record], path: str) -> None:
    """Write records as a VLMEvalKit MCQ TSV (base64 images), atomically (temp file + rename)."""
    if not records:
        raise ValueError(f"no records to write to {path}")
    width = max(len(r.options) for r in records)
    if width > len(_LETTERS):
        raise ValueError(f"at most {len(_LETTERS)} options are supported, got {width}")
    with_hint = any(r.hint for r in records)
    header = ["index", "image", "question", "hint"] if with_hint else ["index", "image", "question"]
    header += list(_LETTERS[:width]) + ["answer", "category"]
    with atomic.open_for_write(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for record in records:
            row = [record.id, base64.b64encode(record.encoded_image()).decode("ascii"), record.question]
            if with_hint:
                row.append(record.hint)
            row += list(record.options) + [""] * (width - len(record.options))
            row += [_LETTERS[record.answer], record.category]
            writer.writerow(row)


# --------------------------------------------------------------------------- dispatch


def read_source(name: str, on_error: str = "skip", **kwargs) -> list[Record]:
    """Records of a named source; ``kwargs`` are the reader's arguments.

    shapes: num, seed, image_size, start. aokvqa: json_path, coco_root, split.
    robust_r1_jsonl: path, image_root. vlmeval_tsv: path.
    """
    if name == "shapes":
        return shapes.make_records(**kwargs)
    if name == "aokvqa":
        return read_aokvqa(on_error=on_error, **kwargs)
    if name == "robust_r1_jsonl":
        return read_robust_r1_jsonl(on_error=on_error, **kwargs)
    if name == "vlmeval_tsv":
        return read_vlmeval_tsv(on_error=on_error, **kwargs)
    raise ValueError(f"unknown source {name!r}; expected one of {SOURCE_NAMES}")


def records_by_id(records: Iterable[Record]) -> dict[str, Record]:
    return {record.id: record for record in records}
