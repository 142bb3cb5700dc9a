"""Sources: A-OKVQA json, Robust-R1 JSONL, VLMEvalKit TSV; bad input named by file and line."""

import base64
import csv
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from robust_r1_jax.data import annotators, chains, shapes, sources
from robust_r1_jax.data.records import ImageError, Record, SkipLog, SourceError, encode_image, load_images


def _png(seed, shape=(20, 24, 3)):
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return pixels, encode_image(pixels, "png")


def _jpeg_file(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def _line_of(text, needle):
    return text[: text.index(needle)].count("\n") + 1


# --------------------------------------------------------------------------- A-OKVQA


@pytest.fixture()
def aokvqa(tmp_path):
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    _jpeg_file(coco / "val2017" / f"{1:012d}.jpg", 1)
    _jpeg_file(coco / "val2017" / f"{2:012d}.jpg", 2)
    (coco / "val2017" / f"{4:012d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    items = [
        {"question_id": "q1", "image_id": 1, "question": "What is shown?", "choices": ["cat", "dog", "car", "cup"],
         "correct_choice_idx": 2, "rationales": ["It has wheels.", "It is on a road.", "People drive it."],
         "direct_answers": ["car"] * 10},
        {"question_id": "q2", "image_id": 3, "question": "Where?", "choices": ["a", "b", "c", "d"],
         "correct_choice_idx": 0, "rationales": []},  # image 3 does not exist
        {"question_id": "q3", "image_id": 2, "question": "Which?", "choices": ["a", "b", "c", "d"]},  # no answer
        {"question_id": "q4", "image_id": 4, "question": "Corrupt?", "choices": ["a", "b", "c", "d"],
         "correct_choice_idx": 1, "rationales": ["r"]},
        {"question_id": "q5", "image_id": 2, "question": "Why?", "choices": ["a", "b", "c", "d"],
         "correct_choice_idx": 3, "rationales": ["x", "y", "z"]},
    ]
    path = tmp_path / "aokvqa_v1p0_val.json"
    text = json.dumps(items, indent=2)
    path.write_text(text)
    return str(path), str(coco), text


def test_aokvqa_reads_records_and_reports_bad_ones_with_line(aokvqa, caplog):
    path, coco, text = aokvqa
    with caplog.at_level(logging.WARNING):
        records = sources.read_aokvqa(path, coco)
    assert [r.id for r in records] == ["q1", "q4", "q5"]
    first = records[0]
    assert first.options == ("cat", "dog", "car", "cup") and first.answer == 2
    assert first.rationales == ("It has wheels.", "It is on a road.", "People drive it.")
    assert first.image_path == os.path.join(coco, "val2017", "000000000001.jpg")
    assert first.line == _line_of(text, '"question_id": "q1"') - 1  # the line holding "{"
    assert first.load_image().shape == (16, 16, 3)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    line_q2 = _line_of(text, '"question_id": "q2"') - 1
    line_q3 = _line_of(text, '"question_id": "q3"') - 1
    assert f"{path}:{line_q2}: record q2: image file not found" in messages
    assert f"{path}:{line_q3}: record q3 is missing ['correct_choice_idx']" in messages


def test_aokvqa_raise_mode_names_file_and_line(aokvqa):
    path, coco, text = aokvqa
    with pytest.raises(SourceError, match=rf"aokvqa_v1p0_val.json:{_line_of(text, 'q2') - 1}: .*not found"):
        sources.read_aokvqa(path, coco, on_error="raise")


def test_corrupt_image_reported_when_loaded(aokvqa, caplog):
    path, coco, _ = aokvqa
    records = sources.read_aokvqa(path, coco)
    with caplog.at_level(logging.WARNING):
        loaded = list(load_images(records, on_error="skip"))
    assert [r.id for r, _ in loaded] == ["q1", "q5"]
    corrupt = records[1]
    assert f"{corrupt.location} (id q4)" in caplog.text and "cannot decode image" in caplog.text
    with pytest.raises(ImageError, match=f"{path}:{corrupt.line}"):
        list(load_images(records, on_error="raise"))


def test_aokvqa_broken_json_is_fatal_with_line(tmp_path):
    path = tmp_path / "aokvqa_v1p0_train.json"
    path.write_text('[\n  {"question_id": "a", "image_id": 1},\n  {"question_id": oops}\n]')
    with pytest.raises(SourceError, match=r"aokvqa_v1p0_train.json:3:.*invalid JSON"):
        sources.read_aokvqa(str(path), str(tmp_path), on_error="skip")
    with pytest.raises(ValueError, match="cannot infer the A-OKVQA split"):
        sources.read_aokvqa(str(tmp_path / "questions.json"), str(tmp_path))


# --------------------------------------------------------------------------- Robust-R1 JSONL


def _chain(answer=1, applied=(("noise", 0.42), ("graffiti", 0.91))):
    return annotators.make_chain("Q", ["a", "b", "c", "d", "e", "f"], answer, ["r"], applied, seed=0)


@pytest.fixture()
def jsonl(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    _jpeg_file(images / "sub" / "1.jpg", 5)
    human = ("<image>\nWhat is on the table?\nOptions:\nA. a cup\nB. a plate\nC. a fork\nD. a knife\n"
             + chains.PROMPT_SUFFIX)
    lines = [
        json.dumps({"id": "r1", "image": "sub/1.jpg", "conversations": [
            {"from": "human", "value": human}, {"from": "gpt", "value": _chain(answer=2)}]}),
        "{this is not json",
        json.dumps({"id": "r3", "image": "sub/1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "just an answer"}]}),
        "",
        json.dumps({"id": "r5", "image": "sub/missing.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": _chain()}]}),
        json.dumps({"id": "r6", "image": "sub/1.jpg", "conversations": [
            {"from": "human", "value": "<image>\nHow many?\n0. one\n1. two"}, {"from": "gpt", "value": _chain(answer=5)}]}),
        json.dumps({"id": "r7", "image": "sub/1.jpg", "conversations": [
            {"from": "human", "value": "<image>Is it red? Answer with the option index."},
            {"from": "gpt", "value": _chain(answer=0, applied=())}]}),
    ]
    path = tmp_path / "robust_r1.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path), str(images)


def test_jsonl_parses_question_options_answer_and_degradations(jsonl, caplog):
    path, images = jsonl
    with caplog.at_level(logging.WARNING):
        records = sources.read_robust_r1_jsonl(path, images)
    assert [r.id for r in records] == ["r1", "r7"]
    r1 = records[0]
    assert r1.question == "What is on the table?"
    assert r1.options == ("a cup", "a plate", "a fork", "a knife")
    assert r1.answer == 2 and r1.line == 1
    assert r1.applied == (("noise", 0.42), ("graffiti", 0.91))
    assert r1.chain == _chain(answer=2)
    assert r1.load_image().shape == (16, 16, 3)
    r7 = records[1]
    assert r7.options == () and r7.question == "Is it red? Answer with the option index." and r7.applied == ()
    text = caplog.text
    assert f"{path}:2: not valid JSON" in text
    assert (f"{path}:3: record r3: the gpt turn (not a SPEC §1 chain, so read as a plain answer): answer "
            f"'just an answer' is not an option index and the question has no options") in text
    assert f"{path}:5: record r5: image file not found" in text
    assert f"{path}:6: record r6: the chain's ANSWER: answer 5 is not 0..1 of the 2 options" in text


def test_a_jsonl_line_cut_short_is_reported_at_its_own_column(tmp_path, caplog):
    path = tmp_path / "cut.jsonl"
    path.write_text('{"id": "cut", \n')
    with caplog.at_level(logging.WARNING):
        assert sources.read_robust_r1_jsonl(str(path), str(tmp_path)) == []
    assert (f"{path}:1: not valid JSON (Expecting property name enclosed in double quotes, column 15)"
            in caplog.text)


def test_jsonl_raise_mode_stops_at_first_bad_line(jsonl):
    path, images = jsonl
    with pytest.raises(SourceError, match=rf"robust_r1.jsonl:2: not valid JSON"):
        sources.read_robust_r1_jsonl(path, images, on_error="raise")


def test_split_options_formats():
    assert sources.split_options("Q?\nA. x\nB. y") == ("Q?", ("x", "y"))
    assert sources.split_options("Q?\nChoices:\n(A) x\n(B) y\n(C) z") == ("Q?", ("x", "y", "z"))
    assert sources.split_options("Q?\n1. x\n2. y") == ("Q?", ("x", "y"))
    assert sources.split_options("Q?\nA. x\nC. y") == ("Q?\nA. x\nC. y", ())  # not sequential
    assert sources.split_options("Just a question") == ("Just a question", ())


# --------------------------------------------------------------------------- VLMEvalKit TSV


def _write_tsv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def test_tsv_round_trip_through_writer(tmp_path):
    records = shapes.make_records(4, seed=2, image_size=32)
    records[1] = Record(**{**records[1].__dict__, "hint": "Look at the colours."})
    path = str(tmp_path / "bench.tsv")
    sources.write_vlmeval_tsv(records, path)
    back = sources.read_vlmeval_tsv(path)
    assert len(back) == 4
    for original, read in zip(records, back):
        assert read.id == original.id and read.question == original.question
        assert read.options == original.options and read.answer == original.answer
        assert read.category == original.category and read.hint == original.hint
        np.testing.assert_array_equal(read.load_image(), original.load_image())
    assert [r.line for r in back] == [2, 3, 4, 5]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_tsv_bad_rows_reported_with_line(tmp_path, caplog):
    _, good = _png(1)
    b64 = base64.b64encode(good).decode()
    header = ["index", "image", "question", "hint", "A", "B", "C", "D", "E", "answer", "category"]
    rows = [
        ["10", b64, "Q1", "", "a", "b", "c", "d", "e", "E", "cat1"],
        ["11", "!!!not base64!!!", "Q2", "", "a", "b", "", "", "", "A", "cat1"],
        ["12", "10", "Q3 shares row 10's image", "a hint", "a", "b", "c", "", "", "C", "cat2"],
        ["13", b64, "Q4", "", "a", "", "c", "", "", "A", ""],  # gap in options
        ["14", b64, "Q5", "", "a", "b", "", "", "", "C", ""],  # answer not an option
        ["15", base64.b64encode(b"garbage bytes").decode(), "Q6", "", "a", "b", "", "", "", "B", ""],
    ]
    path = str(tmp_path / "mmbench.tsv")
    _write_tsv(path, header, rows)
    with caplog.at_level(logging.WARNING):
        records = sources.read_vlmeval_tsv(path)
    assert [r.id for r in records] == ["10", "12", "15"]
    assert records[0].options == ("a", "b", "c", "d", "e") and records[0].answer == 4
    assert records[1].hint == "a hint" and records[1].image_bytes == good and records[1].answer == 2
    text = caplog.text
    assert f"{path}:3: row index 11: image column is not valid base64" in text
    assert f"{path}:5: row index 13: option B is empty but C is not" in text
    assert f"{path}:6: row index 14: answer 'C' is not one of the option letters AB" in text
    with pytest.raises(ImageError, match=f"{path}:7"):
        records[2].load_image()
    with pytest.raises(SourceError, match=f"{path}:3: row index 11"):
        sources.read_vlmeval_tsv(path, on_error="raise")


def test_tsv_missing_columns_named(tmp_path):
    path = str(tmp_path / "broken.tsv")
    _write_tsv(path, ["index", "image", "prompt", "A", "C", "answer"], [["1", "x", "q", "a", "c", "A"]])
    with pytest.raises(SourceError, match=r"missing required column\(s\) \['question', 'B'\]"):
        sources.read_vlmeval_tsv(path)


def test_tsv_writer_is_atomic(tmp_path):
    path = tmp_path / "bench.tsv"
    path.write_text("previous content\n")

    def explode():
        raise RuntimeError("renderer crashed")

    good = shapes.make_records(2, seed=0, image_size=16)
    bad = Record(id="x", question="q", options=("a", "b"), answer=0, image_fn=explode)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        sources.write_vlmeval_tsv(good + [bad], str(path))
    assert path.read_text() == "previous content\n"
    assert os.listdir(tmp_path) == ["bench.tsv"]


def test_read_source_dispatch(tmp_path):
    records = sources.read_source("shapes", num=3, seed=1, image_size=16)
    assert len(records) == 3
    with pytest.raises(ValueError, match="unknown source"):
        sources.read_source("coco_captions")
    with pytest.raises(ValueError, match="on_error"):
        sources.read_vlmeval_tsv(str(tmp_path / "x.tsv"), on_error="ignore")


def test_record_requires_one_image_source_and_valid_answer():
    with pytest.raises(ValueError, match="exactly one image source"):
        Record(id="a", question="q", options=("x", "y"), answer=0)
    with pytest.raises(ValueError, match="answer index 2"):
        Record(id="a", question="q", options=("x", "y"), answer=2, image_bytes=b"x", source_file="f", line=3)


# --------------------------------------------------------------------------- text that is not UTF-8 (issue 16, kind 2)

_NOT_UTF8 = "text is not valid UTF-8: byte 0xe9 at character {} (a Latin-1 or Windows-1252 file? re-save it as UTF-8)"


def test_tsv_row_with_a_latin1_byte_is_skipped_by_line(tmp_path, caplog):
    records = shapes.make_records(3, seed=0, image_size=16)
    path = tmp_path / "latin1.tsv"
    sources.write_vlmeval_tsv(records, str(path))
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"\t" + records[1].question.encode(), b"\tcaf\xe9 " + records[1].question.encode())
    path.write_bytes(b"\n".join(lines))
    skipped = SkipLog()
    with caplog.at_level(logging.WARNING):
        kept = sources.read_vlmeval_tsv(str(path), skipped=skipped)
    assert [r.id for r in kept] == [records[0].id, records[2].id]
    expected = f"{path}:3: column 'question': {_NOT_UTF8.format(4)}"
    assert skipped.count == 1 and skipped.messages == [expected]
    assert expected in caplog.text
    with pytest.raises(SourceError) as raised:
        sources.read_vlmeval_tsv(str(path), on_error="raise")
    assert str(raised.value) == expected


def test_jsonl_line_with_a_latin1_byte_is_skipped_by_line(jsonl):
    path, images = jsonl
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    latin1 = b'{"id": "latin", "image": "sub/1.jpg", "note": "caf\xe9"}'
    lines.insert(1, latin1)
    with open(path, "wb") as handle:
        handle.write(b"\n".join(lines))
    skipped = SkipLog()
    records = sources.read_robust_r1_jsonl(path, images, skipped=skipped)
    assert [r.id for r in records] == ["r1", "r7"]
    column = latin1.index(b"\xe9") + 1  # the bytes before it are ASCII: one character each
    assert skipped.messages[0] == f"{path}:2: {_NOT_UTF8.format(column)}"
    assert skipped.count == 5  # the fixture's four bad lines as well


def test_aokvqa_record_with_a_latin1_byte_is_skipped_by_line(aokvqa):
    path, coco, _ = aokvqa
    items = json.loads(open(path).read())
    items[4]["rationales"][1] = "caf\u00e9"
    with open(path, "wb") as handle:
        handle.write(json.dumps(items, indent=2, ensure_ascii=False).encode("latin-1"))
    text = json.dumps(items, indent=2, ensure_ascii=False)
    skipped = SkipLog()
    records = sources.read_aokvqa(path, coco, skipped=skipped)
    assert [r.id for r in records] == ["q1", "q4"]
    line = _line_of(text, '"question_id": "q5"') - 1
    assert f"{path}:{line}: record 'q5': field 'rationales[1]': {_NOT_UTF8.format(4)}" in skipped.messages
