"""Readers that turn VQA files into ``Record`` objects, and a VLMEvalKit TSV writer.

Sources:
  * A-OKVQA json (a list of dicts) + a COCO image folder ``{coco_root}/{split}2017/{image_id:012d}.jpg``;
  * the VLM-R1 / Robust-R1 RL JSONL (``conversations`` with ``<image>``; ``image`` one path or a list) and
    LLaMA-Factory's sharegpt SFT file (``messages`` or ``conversations``, ``images``, its ``dataset_info.json``):
    ``conversation_record`` keeps the human turn verbatim, maps the options' numbering and the answer
    (``options.py``) and the ``<TYPE>`` names (``type_names.py``);
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
import logging
import os
import re
import sys
from typing import Iterable, Iterator, Sequence

from robust_r1_jax import atomic
from robust_r1_jax.data import chains, shapes, type_names
from robust_r1_jax.data import options as options_lib
from robust_r1_jax.data.records import (
    Record,
    SkipLog,
    SourceError,
    check_on_error,
    non_utf8_problem,
    report_bad_input,
)

logger = logging.getLogger(__name__)

SOURCE_NAMES = ("shapes", "aokvqa", "robust_r1_jsonl", "llamafactory", "vlmeval_tsv")
TSV_REQUIRED_COLUMNS = ("index", "image", "question", "A", "B", "answer")
_LETTERS = options_lib.LETTERS
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


# ------------------------------------------------------------- conversations: Robust-R1 JSONL, LLaMA-Factory

IMAGE_PLACEHOLDER = "<image>"


def split_options(text: str) -> tuple[str, tuple[str, ...]]:
    """``(question, options)`` of a question text ending in labelled option lines (``options.split_labelled_options``
    without the numbering style)."""
    question, found, _ = options_lib.split_labelled_options(text)
    return question, found


_SUFFIX_START = re.compile(r"\s+".join(map(re.escape, "First output the types of degradations".split())))


def human_turn_prompt(text: str) -> str:
    """The human turn as upstream feeds it to the model, before the suffix: ``<image>`` removed, the SPEC §1
    suffix cut off when the file already carries it, nothing else touched (whitespace included)."""
    text = text.replace(IMAGE_PLACEHOLDER, "")
    match = _SUFFIX_START.search(text)
    return text[: match.start()] if match else text


class _RecordProblem(ValueError):
    """What makes one conversation record unusable; the reader prefixes file:line and the record id."""


def conversation_record(record_id: str, human: str, assistant: str, image_paths: Sequence[str], path: str,
                        line: int, check_images: bool = True) -> Record:
    """One record from a human turn, an assistant turn and the record's image paths (already joined to the image
    folder); ``_RecordProblem`` when it cannot be one.

    The assistant turn is a finished chain (SPEC §1; its images are taken as already degraded and the record goes
    to the dataset as it is) or else a plain answer (the record is degraded and annotated like any VQA record).
    The answer, from the chain's ``<ANSWER>`` block or the plain turn, is mapped by ``options.resolve_answer``
    against the options split out of the human turn, in the numbering the turn uses; the stored chain then answers
    with the 0-based index and ``prompt`` / ``prompt_answer`` keep the turn and the answer as written. ``<TYPE>``
    names go through ``type_names`` (aliases rewritten; unknown names kept and listed on the record). Several
    images (upstream's ``image`` list) are kept in order, the first as ``image_path``, only with a chain.
    """
    if not image_paths:
        raise _RecordProblem("no image")
    placeholders = human.count(IMAGE_PLACEHOLDER)
    if placeholders > len(image_paths):
        raise _RecordProblem(f"the human turn has {placeholders} {IMAGE_PLACEHOLDER} placeholders for "
                             f"{len(image_paths)} image(s)")
    prompt = human_turn_prompt(human)
    question, options, style = options_lib.split_labelled_options(prompt)
    parsed = chains.parse_chain(assistant)
    if parsed.matches_format:
        chain, applied, aliased, unknown = type_names.normalise_chain_types(assistant)
        answer_text = parsed.answer
    else:
        chain, applied, aliased, unknown = None, [], [], []
        answer_text = assistant.strip()
    try:
        answer = options_lib.resolve_answer(answer_text, options, style)
    except options_lib.AnswerError as error:
        kind = "the chain's ANSWER" if chain is not None else (
            "the gpt turn (not a SPEC §1 chain, so read as a plain answer)")
        raise _RecordProblem(f"{kind}: {error}") from None
    if len(image_paths) > 1 and chain is None:
        raise _RecordProblem(f"{len(image_paths)} images for one prompt with a plain answer: synth degrades and "
                             f"annotates one image per example; several images are kept only with the record's own "
                             f"chain (its images already degraded)")
    missing = [p for p in image_paths if check_images and not os.path.isfile(p)]
    if missing:
        raise _RecordProblem(f"image file not found: {missing[0]}")
    if unknown:
        logger.warning("%s:%d: record %s: <TYPE> name(s) %s are neither SPEC §2 names nor aliases "
                       "(data/type_names.py); kept as written, r_deg will score them as wrong types",
                       path, line, record_id, unknown)
    return Record(
        id=record_id,
        question=question,
        options=options,
        answer=answer,
        image_path=image_paths[0],
        extra_image_paths=tuple(image_paths[1:]),
        chain=None if chain is None else chains.with_answer(chain, str(answer)),
        applied=tuple(applied),
        prompt=prompt,
        prompt_answer=answer_text,
        aliased_types=tuple(aliased),
        unknown_types=tuple(unknown),
        source_file=path,
        line=line,
    )


def _image_list(value) -> list[str] | None:
    """An ``image`` / ``images`` field as a list of paths (one path or a list of them), None when malformed."""
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


def _jsonl_lines(path: str, on_error: str, skipped: SkipLog | None) -> Iterator[tuple[int, object]]:
    """(line, decoded JSON) for each non-empty line of a JSON Lines file; bad lines reported by ``on_error``."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            text_problem = non_utf8_problem(line)
            if text_problem is not None:
                report_bad_input(f"{path}:{line_number}: {text_problem}", on_error, skipped)
                continue
            try:
                # without its line break: an object cut short is reported at its end, not at column 1 of a next line
                yield line_number, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                report_bad_input(f"{path}:{line_number}: not valid JSON ({error.msg}, column {error.colno})",
                                 on_error, skipped)


def _jsonl_problem(item) -> str | None:
    if not isinstance(item, dict):
        return f"line holds a {type(item).__name__}, not an object"
    if _image_list(item.get("image")) is None:
        return "missing the 'image' path (one path or a list of paths)"
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
    """Records from the VLM-R1 / Robust-R1 RL ``train.jsonl`` (SPEC §8): one JSON object a line, ``{"id",
    "image": "rel.jpg" or ["a.jpg", ...], "conversations": [{"from": "human", "value": "<image>..."},
    {"from": "gpt", "value": "<chain or answer>"}]}``, image paths joined to ``image_root`` (the folder given
    beside the file, as upstream's ``--image_folders``). Each line goes through ``conversation_record``.
    """
    check_on_error(on_error)
    records = []
    for line_number, item in _jsonl_lines(path, on_error, skipped):
        problem = _jsonl_problem(item)
        record_id = str(item.get("id", f"line{line_number}")) if isinstance(item, dict) else "?"
        if problem is None:
            turns = item["conversations"]
            images = [os.path.join(image_root, name) for name in _image_list(item["image"])]
            try:
                records.append(conversation_record(record_id, turns[0]["value"], turns[1]["value"], images, path,
                                                   line_number, check_images))
                continue
            except _RecordProblem as error:
                problem = str(error)
        report_bad_input(f"{path}:{line_number}: record {record_id}: {problem}", on_error, skipped)
    return records


# LLaMA-Factory's sharegpt defaults (src/llamafactory/data/parser.py, DatasetAttr): what dataset_info.json's
# "columns" and "tags" fall back to.
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "images", "system": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}
_OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                "system_tag": "system"}
DATASET_INFO_NAME = "dataset_info.json"


def llamafactory_layout(data_path: str, dataset_name: str = "") -> tuple[dict, dict | None]:
    """``(columns, tags)`` of a LLaMA-Factory sharegpt file from the ``dataset_info.json`` beside it.

    The entry is ``dataset_name`` when given, else the one whose ``file_name`` is this file. Without a
    ``dataset_info.json`` (or an entry for the file, or ``tags`` in the entry) columns are LLaMA-Factory's defaults
    and tags are None: each record's turns then say themselves whether they are ``from``/``value`` or
    ``role``/``content``.
    ``SourceError`` for an unreadable ``dataset_info.json``, a named entry that is missing, or an entry whose
    ``formatting`` is not ``sharegpt`` (alpaca files carry no conversation to keep verbatim).
    """
    info_path = os.path.join(os.path.dirname(os.path.abspath(data_path)), DATASET_INFO_NAME)
    if not os.path.isfile(info_path):
        if dataset_name:
            raise SourceError(f"{info_path}: not found, but synth.dataset_name={dataset_name!r} asks for an entry")
        return dict(SHAREGPT_COLUMNS), None
    try:
        with open(info_path, encoding="utf-8") as handle:
            info = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"{info_path}: cannot read it as JSON ({error})") from error
    if not isinstance(info, dict):
        raise SourceError(f"{info_path}: expected an object of dataset entries")
    if dataset_name:
        if dataset_name not in info:
            raise SourceError(f"{info_path}: no entry {dataset_name!r}; it has {sorted(info)}")
        name, entry = dataset_name, info[dataset_name]
    else:
        found = [(k, v) for k, v in info.items()
                 if isinstance(v, dict) and v.get("file_name") == os.path.basename(data_path)]
        if not found:
            return dict(SHAREGPT_COLUMNS), None
        name, entry = found[0]
    if not isinstance(entry, dict):
        raise SourceError(f"{info_path}: entry {name!r} is not an object")
    formatting = entry.get("formatting", "alpaca")
    if formatting != "sharegpt":
        raise SourceError(f"{info_path}: entry {name!r} has formatting {formatting!r}; synth.source=llamafactory "
                          f"reads 'sharegpt' conversations")
    columns = {**SHAREGPT_COLUMNS, **(entry.get("columns") or {})}
    # an entry without "tags" leaves each record's turns to say which spelling they use
    tags = {**SHAREGPT_TAGS, **entry["tags"]} if entry.get("tags") else None
    return columns, tags


def _llamafactory_items(path: str, on_error: str, skipped: SkipLog | None) -> Iterator[tuple[int, object]]:
    """(line, record) of a LLaMA-Factory data file: a JSON array (``.json``) or JSON Lines."""
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        for line, item in _iter_json_array(text, path):
            problem = _json_text_problem(item)
            if problem is not None:
                report_bad_input(f"{path}:{line}: {problem}", on_error, skipped)
                continue
            yield line, item
    else:
        yield from _jsonl_lines(path, on_error, skipped)


def _turn_tags(turn: dict, tags: dict | None) -> dict:
    if tags is not None:
        return tags
    return _OPENAI_TAGS if "role" in turn else SHAREGPT_TAGS


def _llamafactory_turns(item, columns: dict, tags: dict | None) -> tuple[str, str, list[str]]:
    """(user text, assistant text, image names) of one sharegpt record; ``_RecordProblem`` when malformed."""
    if not isinstance(item, dict):
        raise _RecordProblem(f"record is a {type(item).__name__}, not an object")
    key = columns["messages"]
    turns = item.get(key)
    if turns is None and tags is None and key == SHAREGPT_COLUMNS["messages"]:
        turns = item.get("messages")  # files without dataset_info.json: either name
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise _RecordProblem(f"'{key}' must be a list of turns")
    turn_tags = [_turn_tags(t, tags) for t in turns]
    turns = [(t.get(g["role_tag"]), t.get(g["content_tag"]), g) for t, g in zip(turns, turn_tags)
             if t.get(g["role_tag"]) != g["system_tag"]]
    if len(turns) != 2:
        raise _RecordProblem(f"expected one user turn and one assistant turn, found {len(turns)} non-system turns "
                             f"(multi-turn conversations are not read)")
    (user_role, user, user_tags), (assistant_role, assistant, assistant_tags) = turns
    if user_role != user_tags["user_tag"] or assistant_role != assistant_tags["assistant_tag"]:
        raise _RecordProblem(f"turn roles are {user_role!r}, {assistant_role!r}; expected "
                             f"{user_tags['user_tag']!r}, {assistant_tags['assistant_tag']!r}")
    if not isinstance(user, str) or not isinstance(assistant, str):
        raise _RecordProblem("each turn needs a text content")
    images = item.get(columns.get("images") or "images")
    names = _image_list(images)
    if names is None:
        raise _RecordProblem(f"'{columns.get('images') or 'images'}' must be a non-empty list of image paths")
    return user, assistant, names


def read_llamafactory(path: str, image_root: str = "", dataset_name: str = "", on_error: str = "skip",
                      check_images: bool = True, skipped: SkipLog | None = None) -> list[Record]:
    """Records from a LLaMA-Factory sharegpt SFT file (SPEC §8), JSON array or JSON Lines: ``{"messages":
    [{"role": "user", "content": "<image>..."}, {"role": "assistant", "content": "<chain>"}], "images":
    ["rel.jpg"]}`` or the ``conversations`` / ``from`` / ``value`` spelling, with the column and tag names of its
    ``dataset_info.json`` entry (``llamafactory_layout``). Image paths are joined to ``image_root``, else to the
    file's folder (LLaMA-Factory's ``media_dir`` default, the dataset folder). A system turn is allowed and not
    kept. Each record goes through ``conversation_record``.
    """
    check_on_error(on_error)
    columns, tags = llamafactory_layout(path, dataset_name)
    root = image_root or os.path.dirname(os.path.abspath(path))
    records = []
    for line, item in _llamafactory_items(path, on_error, skipped):
        record_id = str(item.get("id", f"line{line}")) if isinstance(item, dict) else "?"
        try:
            user, assistant, names = _llamafactory_turns(item, columns, tags)
            records.append(conversation_record(record_id, user, assistant, [os.path.join(root, n) for n in names],
                                               path, line, check_images))
        except _RecordProblem as error:
            report_bad_input(f"{path}:{line}: record {record_id}: {error}", on_error, skipped)
    return records


# --------------------------------------------------------------------------- VLMEvalKit TSV


def _filled(value: str | None) -> bool:
    """Whether an option cell holds an option: anything but an empty (or all-blank) cell.

    ``None``, ``NA``, ``nan`` and ``N/A`` are option texts here (MMStar and SEEDBench_IMG ask "How many ...?" with
    an option ``None``); pandas' default NA parsing turned them into missing options, which VLMEvalKit fixed by
    reading with ``keep_default_na=False`` (its PR 1700). pandas writes a missing value as an empty field.
    """
    return value is not None and value.strip() != ""


def _present(value: str | None) -> bool:
    # hint / category only: an exported NaN there is a missing hint, never text a question asks about.
    return _filled(value) and value.strip() not in ("nan", "NaN", "None")


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
        if letter not in fields or not _filled(fields[letter]):
            later = [l for l in _LETTERS[_LETTERS.index(letter) + 1:] if l in fields and _filled(fields[l])]
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
    robust_r1_jsonl: path, image_root. llamafactory: path, image_root, dataset_name. vlmeval_tsv: path.
    """
    if name == "shapes":
        return shapes.make_records(**kwargs)
    if name == "aokvqa":
        return read_aokvqa(on_error=on_error, **kwargs)
    if name == "robust_r1_jsonl":
        return read_robust_r1_jsonl(on_error=on_error, **kwargs)
    if name == "llamafactory":
        return read_llamafactory(on_error=on_error, **kwargs)
    if name == "vlmeval_tsv":
        return read_vlmeval_tsv(on_error=on_error, **kwargs)
    raise ValueError(f"unknown source {name!r}; expected one of {SOURCE_NAMES}")


def records_by_id(records: Iterable[Record]) -> dict[str, Record]:
    return {record.id: record for record in records}
