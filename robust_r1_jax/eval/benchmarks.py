"""Benchmark rows for evaluation: VLMEvalKit multiple-choice TSVs and R-Bench's multiple-choice part.

Every data row of a file is kept, including the ones that cannot be evaluated (undecodable image, bad answer
letter, ...): those carry a ``problem`` and count as wrong answers, so the denominator of an accuracy is always
the number of rows in the file.

**Which image index seeds the degradation.** A TSV's ``index`` column when it is a non-negative integer (as in
VLMEvalKit's MMMB / MMStar / RealWorldQA files), otherwise the row's 0-based position among the file's data rows.

**R-Bench (multiple choice).** R-Bench ships reference images and their real-world distorted copies at three
levels. VLMEvalKit distributes its MCQ part as two TSVs (``vlmeval/dataset/image_mcq.py``): point ``rbench_dir`` at
a folder holding ``R-Bench-Dis.tsv`` (or ``R-bench-dis.tsv``, as downloaded) and optionally ``R-Bench-Ref.tsv``.
They are read as they are (``read_rbench_release``): the distorted rows are split into low / mid / high by the first
level column present (``RBENCH_LEVEL_COLUMNS``; values low/mid/high or 1/2/3), else reported together, and
``overall`` is all distorted rows. Without those TSVs the folder may hold one file per level, each either a VLMEvalKit
MCQ TSV or a JSON list::

    rbench_dir/
      MCQ_low.tsv   MCQ_mid.tsv   MCQ_high.tsv      (or low.tsv / mid.tsv / high.tsv)
      MCQ_ref.tsv                                   (optional: the undistorted reference images)
    or
      low.json  mid.json  high.json  [ref.json]     (or MCQ_low.json ...)
      images/...                                    image paths in the JSON are relative to rbench_dir

A JSON entry is ``{"id": "17", "image": "images/low/17.png", "question": "...", "options": ["...", ...],
"answer": 2}``; ``answer`` is the 0-based option index, the option letter (``"C"``) or the option's text. The
images are already distorted, so R-Bench rows are evaluated as they are, level by level.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import re
import sys
from typing import Iterator

import numpy as np

from robust_r1_jax.data import options as options_lib
from robust_r1_jax.data import sources
from robust_r1_jax.data.records import ImageError, Record, SourceError

RBENCH_LEVELS = ("low", "mid", "high")
RBENCH_REFERENCE = "ref"
_RBENCH_PATTERNS = ("MCQ_{level}.tsv", "{level}.tsv", "MCQ_{level}.json", "{level}.json")
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# "file:line: row index 7: what is wrong", as the TSV reader reports a skipped row.
_REPORTED_ROW = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?:row index (?P<label>\S*): )?(?P<problem>.*)$",
                           re.DOTALL)


@dataclasses.dataclass(frozen=True)
class BenchmarkRow:
    """One row of a benchmark file: its record, or the problem that keeps it from being evaluated."""

    where: str  # file:line
    label: str  # the row's own index / id ("?" when unknown)
    image_index: int  # seeds the benchmark degradation of this row
    record: Record | None
    problem: str | None = None
    # The row's TSV fields other than the image, in file order (empty for JSON rows): the columns a VLMEvalKit
    # prediction table repeats beside its ``prediction``.
    columns: tuple[tuple[str, str], ...] = ()

    def load_image(self) -> tuple[np.ndarray | None, str | None]:
        """(uint8 RGB image, None) or (None, why it cannot be used)."""
        if self.record is None:
            return None, self.problem
        try:
            return self.record.load_image(), None
        except ImageError as error:
            # PIL names the in-memory file by its address; drop it so reports are identical across runs.
            return None, _MEMORY_ADDRESS.sub("", str(error))


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # report_bad_input logs ("skipping bad input: %s", problem); keep the problem itself.
        problem = record.args[0] if isinstance(record.args, tuple) and record.args else record.getMessage()
        self.problems.append(str(problem))


@contextlib.contextmanager
def _skipped_rows() -> Iterator[list[str]]:
    """The problems the data readers report while skipping bad rows inside the block."""
    handler = _Collect()
    logger = logging.getLogger("robust_r1_jax.data.records")
    level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:  # a quieter log must not hide rows from the denominator
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler.problems
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _image_index(label: str, position: int) -> int:
    return int(label) if label.isdigit() else position


def read_tsv_rows(path: str, limit: int = 0) -> list[BenchmarkRow]:
    """Every data row of a VLMEvalKit MCQ TSV, in file order (the first ``limit`` rows when limit > 0).

    A missing file or missing required columns raise ``SourceError`` naming them.
    """
    if not os.path.isfile(path):
        raise SourceError(f"benchmark TSV not found: {path}")
    with _skipped_rows() as problems:
        records = sources.read_vlmeval_tsv(path, on_error="skip")
    found: list[tuple[int, str, Record | None, str | None]] = [(r.line, r.id, r, None) for r in records]
    for problem in problems:
        match = _REPORTED_ROW.match(problem)
        line = int(match.group("line")) if match else 0
        label = (match.group("label") or "?") if match else "?"
        found.append((line, label, None, problem))
    found.sort(key=lambda item: item[0])
    if limit > 0:
        found = found[:limit]
    columns = tsv_columns(path)
    # a row the reader refused without naming its index (e.g. a byte that is not UTF-8) keeps its index column
    found = [(line, dict(columns.get(line, ())).get("index", label) if label == "?" else label, record, problem)
             for line, label, record, problem in found]
    return [
        BenchmarkRow(where=f"{path}:{line}", label=label, image_index=_image_index(label, position),
                     record=record, problem=problem, columns=columns.get(line, ()))
        for position, (line, label, record, problem) in enumerate(found)
    ]


def tsv_columns(path: str) -> dict[int, tuple[tuple[str, str], ...]]:
    """Start line -> the row's (column, value) pairs without ``image``, for every data row of a TSV whose fields
    match the header (the line numbers ``read_tsv_rows`` reports). Bytes that are not UTF-8 read as U+FFFD: the
    reader has already made such a row a problem, and the predictions table only echoes its columns."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 image fields are long
    out = {}
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None) or []
        previous_end = reader.line_num
        for row in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if len(row) == len(header) and any(field.strip() for field in row):
                out[start] = tuple((name, value) for name, value in zip(header, row) if name != "image")
    return out


# --------------------------------------------------------------------------- R-Bench


def _json_answer(value, options: tuple[str, ...]) -> tuple[int | None, str]:
    """(0-based index, "") or (None, why): an index, a letter (either case) or the option's text
    (``data.options.resolve_answer``: text matching several options is ambiguous)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None, f"answer {value!r} names none of {len(options)} options"
    if isinstance(value, str) and len(value.strip()) == 1:
        value = value.strip().upper()
    try:
        return options_lib.resolve_answer(value, options), ""
    except options_lib.AnswerError as error:
        return None, str(error)


# A byte that is not UTF-8, read with errors="surrogateescape", becomes U+DC80..U+DCFF.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _non_utf8_byte(value) -> int | None:
    """The first byte that was not UTF-8 in any string of a decoded JSON value (keys included), or None."""
    if isinstance(value, str):
        match = _ESCAPED_BYTE.search(value)
        return None if match is None else ord(match.group()) - 0xDC00
    children = (list(value) + list(value.values()) if isinstance(value, dict)
                else value if isinstance(value, list) else ())
    return next((byte for byte in map(_non_utf8_byte, children) if byte is not None), None)


def read_rbench_json(path: str, image_root: str, limit: int = 0) -> list[BenchmarkRow]:
    """R-Bench MCQ rows from a JSON list (layout in the module docstring); bad entries (text that is not UTF-8
    included) become problem rows."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        try:
            items = json.load(handle)
        except json.JSONDecodeError as error:
            raise SourceError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
    if not isinstance(items, list):
        raise SourceError(f"{path}: expected a JSON list of questions, got a {type(items).__name__}")
    rows = []
    for position, item in enumerate(items[: limit] if limit > 0 else items):
        where = f"{path}[{position}]"
        label = str(item.get("id", position)) if isinstance(item, dict) else str(position)
        problem, record = None, None
        bad_byte = _non_utf8_byte(item)
        if bad_byte is not None:
            label = label if _non_utf8_byte(label) is None else str(position)
            problem = f"{where}: entry {label}: text is not valid UTF-8 (byte 0x{bad_byte:02x})"
        elif not isinstance(item, dict):
            problem = f"{where}: entry is a {type(item).__name__}, not an object"
        else:
            missing = [k for k in ("image", "question", "options", "answer") if k not in item]
            options = item.get("options")
            if missing:
                problem = f"{where}: entry {label} is missing {missing}"
            elif not isinstance(options, list) or len(options) < 2:
                problem = f"{where}: entry {label}: 'options' must be a list of at least two strings"
            else:
                options = tuple(str(o) for o in options)
                answer, why = _json_answer(item["answer"], options)
                if answer is None:
                    problem = f"{where}: entry {label}: {why}"
                else:
                    record = Record(id=label, question=str(item["question"]), options=options, answer=answer,
                                    image_path=os.path.join(image_root, str(item["image"])),
                                    source_file=path, line=position)
        rows.append(BenchmarkRow(where=where, label=label, image_index=position, record=record, problem=problem))
    return rows


def rbench_files(rbench_dir: str) -> dict[str, str]:
    """Level -> file of a local R-Bench copy; at least one of low / mid / high must be there."""
    if not os.path.isdir(rbench_dir):
        raise SourceError(f"R-Bench folder not found: {rbench_dir}")
    files = {}
    for level in RBENCH_LEVELS + (RBENCH_REFERENCE,):
        for pattern in _RBENCH_PATTERNS:
            candidate = os.path.join(rbench_dir, pattern.format(level=level))
            if os.path.isfile(candidate):
                files[level] = candidate
                break
    if not any(level in files for level in RBENCH_LEVELS):
        expected = ", ".join(p.format(level="low") for p in _RBENCH_PATTERNS)
        raise SourceError(f"{rbench_dir} holds no R-Bench level file; expected e.g. {expected} (and the same "
                          f"for mid / high); see robust_r1_jax/eval/benchmarks.py for the layout")
    return files


def read_rbench(rbench_dir: str, limit: int = 0) -> dict[str, list[BenchmarkRow]]:
    """Level -> rows of a local R-Bench copy, in the order reference (if present), low, mid, high.

    VLMEvalKit's two TSVs (``R-Bench-Dis.tsv``, optional ``R-Bench-Ref.tsv``) are read when the folder holds
    them (``read_rbench_release``); otherwise one file per level (the module docstring's layout).
    """
    if rbench_release_files(rbench_dir):
        return read_rbench_release(rbench_dir, limit)
    files = rbench_files(rbench_dir)
    ordered = [RBENCH_REFERENCE] + list(RBENCH_LEVELS)
    out = {}
    for level in ordered:
        if level not in files:
            continue
        path = files[level]
        out[level] = (read_tsv_rows(path, limit) if path.endswith(".tsv")
                      else read_rbench_json(path, rbench_dir, limit))
    return out


# --------------------------------------------------------------------------- R-Bench as VLMEvalKit ships it

# vlmeval/dataset/image_mcq.py: R-Bench-Dis (distorted images) and R-Bench-Ref (their references), one MCQ TSV each;
# the download is named R-bench-dis.tsv / R-bench-ref.tsv, VLMEvalKit's local copy R-Bench-Dis.tsv / R-Bench-Ref.tsv.
RBENCH_RELEASE = {"dis": ("R-Bench-Dis.tsv", "R-bench-dis.tsv"),
                  RBENCH_REFERENCE: ("R-Bench-Ref.tsv", "R-bench-ref.tsv")}
RBENCH_DISTORTED = "dis"  # the level of R-Bench-Dis rows when the TSV has no level column
# Columns that may carry the distortion level, in the order they are tried; the first whose every value names a
# level is used (R-Bench's own release calls it "strength", 1 / 2 / 3 = low / mid / high).
RBENCH_LEVEL_COLUMNS = ("level", "strength", "distortion_level", "severity", "category", "l2-category")
_LEVEL_NAMES = {"low": "low", "1": "low", "mid": "mid", "middle": "mid", "medium": "mid", "2": "mid",
                "high": "high", "3": "high"}


def rbench_release_files(rbench_dir: str) -> dict[str, str]:
    """"dis" / "ref" -> VLMEvalKit's R-Bench TSV in ``rbench_dir`` (empty when the folder has neither)."""
    files = {}
    for part, names in RBENCH_RELEASE.items():
        for name in names:
            candidate = os.path.join(rbench_dir, name)
            if os.path.isfile(candidate):
                files[part] = candidate
                break
    return files


def level_name(value: str) -> str | None:
    """low / mid / high for a level value ("low", "Mid", "3", "2.0"), or None."""
    text = str(value).strip().lower()
    if text.endswith(".0"):
        text = text[:-2]
    return _LEVEL_NAMES.get(text)


def level_column(rows: list[BenchmarkRow]) -> str | None:
    """The first of RBENCH_LEVEL_COLUMNS that every row has, with a value that names a level; else None."""
    for column in RBENCH_LEVEL_COLUMNS:
        values = [dict(row.columns).get(column) for row in rows]
        if values and all(value is not None and level_name(value) for value in values):
            return column
    return None


def read_rbench_release(rbench_dir: str, limit: int = 0) -> dict[str, list[BenchmarkRow]]:
    """Level -> rows of VLMEvalKit's R-Bench TSVs: "ref" (R-Bench-Ref, if present), then the R-Bench-Dis rows by
    the level their level column names (low / mid / high, levels without rows left out), or all of them as
    "dis" when the TSV has no level column (logged). A SourceError names a missing R-Bench-Dis."""
    files = rbench_release_files(rbench_dir)
    if "dis" not in files:
        raise SourceError(f"{rbench_dir} has {os.path.basename(files[RBENCH_REFERENCE])} but no R-Bench-Dis.tsv "
                          f"(VLMEvalKit's distorted R-Bench questions)")
    out = {}
    if RBENCH_REFERENCE in files:
        out[RBENCH_REFERENCE] = read_tsv_rows(files[RBENCH_REFERENCE], limit)
    distorted = read_tsv_rows(files["dis"], limit)
    column = level_column(distorted)
    if column is None:
        logging.getLogger(__name__).warning(
            "%s: no level column (tried %s); reporting its %d rows together as %r", files["dis"],
            ", ".join(RBENCH_LEVEL_COLUMNS), len(distorted), RBENCH_DISTORTED)
        out[RBENCH_DISTORTED] = distorted
        return out
    for level in RBENCH_LEVELS:
        rows = [row for row in distorted if level_name(dict(row.columns)[column]) == level]
        if rows:
            out[level] = rows
    return out
