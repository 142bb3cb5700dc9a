"""The upstream release's data as shipped (SPEC §8): the RL train.jsonl and LLaMA-Factory's sharegpt SFT file,
their option numberings, verbatim human turns and <TYPE> names; VLMEvalKit TSV options spelled like NA values."""
import base64
import csv
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from robust_r1_jax.data import chains, rows, sources, synth, tfds_builder, type_names
from robust_r1_jax.data.pipeline import PipelineConfig
from robust_r1_jax.data.records import SourceError
from robust_r1_jax.data.tokenizer import train_demo_tokenizer
from robust_r1_jax.model.processor import ImageProcessor, Processor

HUMAN_ONE = "<image>\nWhich shape is drawn?\n1. circle\n2. square\n3. triangle\n4. star"
SHAPES = ("circle", "square", "triangle", "star")


def _chain(answer: str, types: str = "lens blur(0.47), noise(0.20)") -> str:
    return (f"<TYPE>{types}<TYPE_END>\n<INFLUENCE>soft edges<INFLUENCE_END>\n<REASONING>the outline is round"
            f"<REASONING_END>\n<CONCLUSION>a circle<CONCLUSION_END>\n<ANSWER>{answer}<ANSWER_END>")


def _image(path, seed=0, size=(20, 30)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


def _rl(record_id, human, gpt, image="0.png"):
    return {"id": record_id, "image": image,
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]}


# ---- the RL train.jsonl ---------------------------------------------------------------------------------------

def test_options_numbered_from_one_keep_prompt_and_answer_in_agreement(tmp_path):
    _image(tmp_path / "0.png")
    path = _jsonl(tmp_path / "train.jsonl", [_rl("a", HUMAN_ONE, _chain("1"))])
    [record] = sources.read_robust_r1_jsonl(path, str(tmp_path))
    assert record.options == SHAPES and record.answer == 0  # "1" meant circle
    assert chains.parse_chain(record.chain).answer == "0"  # the stored chain answers in the project's numbering
    assert record.prompt == "\nWhich shape is drawn?\n1. circle\n2. square\n3. triangle\n4. star"
    assert record.prompt_answer == "1"
    project = rows.user_text({"question": record.question, "options": record.options}, chains.PROMPT_SUFFIX)
    assert "0. circle" in project and "1. square" in project


@pytest.mark.parametrize("human, answer, expected", [
    ("<image>Which shape?\nA. circle\nB. square\nC. triangle\nD. star", "C", 2),
    ("<image>Which shape?\n(A) circle\n(B) square\n(C) triangle\n(D) star", "(B)", 1),
    ("<image>Which shape?\nOptions:\n0. circle\n1. square\n2. triangle\n3. star", "3", 3),
    ("<image>Which shape?\n1. circle\n2. square\n3. triangle\n4. star", "triangle", 2),
    ("<image>Which shape?\nA. circle\nB. square\nC. triangle\nD. star", "1", 1),
])
def test_each_numbering_and_answer_form_is_read(tmp_path, human, answer, expected):
    _image(tmp_path / "0.png")
    path = _jsonl(tmp_path / "train.jsonl", [_rl("a", human, _chain(answer))])
    [record] = sources.read_robust_r1_jsonl(path, str(tmp_path))
    assert record.options == SHAPES and record.answer == expected
    assert chains.parse_chain(record.chain).answer == str(expected) and record.prompt_answer == answer


def test_unmappable_answers_are_named_per_record_problems(tmp_path, caplog):
    _image(tmp_path / "0.png")
    duplicated = "<image>How many stumps?\nA. None\nB. Two\nC. None\nD. One"
    path = _jsonl(tmp_path / "train.jsonl", [
        _rl("zero", HUMAN_ONE, _chain("0")),
        _rl("dup", duplicated, _chain("None")),
        _rl("letter", HUMAN_ONE, _chain("E")),
        _rl("good", HUMAN_ONE, _chain("4")),
        _rl("two", HUMAN_ONE, "circle", image=["0.png", "0.png"]),
    ])
    with caplog.at_level(logging.WARNING):
        records = sources.read_robust_r1_jsonl(path, str(tmp_path))
    assert [(r.id, r.answer) for r in records] == [("good", 3)]
    assert (f"{path}:1: record zero: the chain's ANSWER: answer 0 is not one of the option labels 1..4 "
            f"(the options are numbered from 1)") in caplog.text
    assert f"{path}:2: record dup: the chain's ANSWER: answer 'None' matches options [0, 2]" in caplog.text
    assert f"{path}:3: record letter: the chain's ANSWER: answer 'E' is past the last option letter D" in caplog.text
    assert f"{path}:5: record two: 2 images for one prompt with a plain answer" in caplog.text


def test_a_plain_answer_turn_makes_a_record_to_annotate(tmp_path):
    _image(tmp_path / "0.png")
    path = _jsonl(tmp_path / "train.jsonl", [_rl("a", HUMAN_ONE, "square")])
    [record] = sources.read_robust_r1_jsonl(path, str(tmp_path))
    assert record.chain is None and record.answer == 1 and record.applied == ()


def test_type_aliases_are_rewritten_and_unknown_names_warned(tmp_path, caplog):
    _image(tmp_path / "0.png")
    chain = _chain("2", "Gaussian Noise(0.30), low light(0.55), fog(0.20)")
    path = _jsonl(tmp_path / "train.jsonl", [_rl("a", HUMAN_ONE, chain)])
    with caplog.at_level(logging.WARNING):
        [record] = sources.read_robust_r1_jsonl(path, str(tmp_path))
    assert chains.extract_block(record.chain, "TYPE") == "noise(0.30), darkness(0.55), fog(0.20)"
    assert record.applied == (("noise", 0.3), ("darkness", 0.55), ("fog", 0.2))
    assert record.aliased_types == ("Gaussian Noise", "low light") and record.unknown_types == ("fog",)
    assert f"{path}:1: record a: <TYPE> name(s) ['fog'] are neither SPEC §2 names nor aliases" in caplog.text
    assert type_names.canonical("  Watermark ") == ("watermark damage", True)
    assert type_names.canonical("lens blur") == ("lens blur", True)


# ---- LLaMA-Factory ------------------------------------------------------------------------------------------------

def _sharegpt(user, assistant, images=("img/0.png",)):
    return {"messages": [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}], "images": list(images)}


def test_llamafactory_json_with_its_dataset_info(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    _image(tmp_path / "img" / "0.png")
    data = [_sharegpt(HUMAN_ONE, _chain("2")), _sharegpt("Which? A. x", _chain("0"), images=()),
            _sharegpt("<image><image>Which?\nA. x\nB. y", _chain("0"))]
    (tmp_path / "robust_sft.json").write_text(json.dumps(data, indent=1))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"robust_sft": {
        "file_name": "robust_sft.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}))
    with caplog.at_level(logging.WARNING):
        records = sources.read_llamafactory(str(tmp_path / "robust_sft.json"))
    [record] = records
    assert record.answer == 1 and record.options == SHAPES and record.line == 2
    assert record.image_path == str(tmp_path / "img" / "0.png")  # media_dir: the file's folder
    assert record.load_image().shape == (20, 30, 3)
    assert "robust_sft.json:21: record line21: 'images' must be a non-empty list of image paths" in caplog.text
    assert "robust_sft.json:38: record line38: the human turn has 2 <image> placeholders for 1 image(s)" in caplog.text


def test_llamafactory_jsonl_without_dataset_info_and_its_errors(tmp_path, caplog):
    _image(tmp_path / "0.png")
    turns = {"conversations": [{"from": "human", "value": HUMAN_ONE}, {"from": "gpt", "value": _chain("3")}],
             "images": ["0.png"], "id": "s1"}
    path = _jsonl(tmp_path / "sft.jsonl", [turns, {"conversations": turns["conversations"] * 2, "images": ["0.png"]}])
    with caplog.at_level(logging.WARNING):
        [record] = sources.read_llamafactory(path, image_root=str(tmp_path))
    assert record.id == "s1" and record.answer == 2
    assert "sft.jsonl:2: record line2: expected one user turn and one assistant turn, found 4" in caplog.text
    (tmp_path / "dataset_info.json").write_text(json.dumps({"y": {"file_name": "sft.jsonl", "formatting": "sharegpt",
                                                                  "columns": {"messages": "conversations"}}}))
    assert [r.answer for r in sources.read_llamafactory(path)] == [2]  # no "tags": the turns' own spelling
    (tmp_path / "dataset_info.json").write_text(json.dumps({"x": {"file_name": "sft.jsonl"}}))
    with pytest.raises(SourceError, match="entry 'x' has formatting 'alpaca'"):
        sources.read_llamafactory(path)
    with pytest.raises(SourceError, match="no entry 'y'; it has \\['x'\\]"):
        sources.read_llamafactory(path, dataset_name="y")


# ---- synth: chains straight to the dataset, prompt styles in the rows ----------------------------------------------

def _synth_config(workdir, **synth_settings):
    config = synth.default_config()
    config.workdir = str(workdir)
    config.synth.update(dict(num_train=2, num_validation=0, contact_sheet_size=0, **synth_settings))
    return config


def test_synth_llamafactory_keeps_chains_and_counts_type_names(tmp_path, caplog):
    (tmp_path / "img").mkdir()
    _image(tmp_path / "img" / "0.png")
    data = [_sharegpt(HUMAN_ONE, _chain("1", "gaussian noise(0.30), fog(0.20)")),
            _sharegpt(HUMAN_ONE, _chain("2", "blur(0.40)"))]
    (tmp_path / "sft.json").write_text(json.dumps(data))
    summary = synth.run(_synth_config(tmp_path / "work", source="llamafactory",
                                      source_path=str(tmp_path / "sft.json")))
    assert summary["type_aliases_applied"] == {"blur -> lens blur": 1, "gaussian noise -> noise": 1}
    assert summary["unknown_type_names"] == {"fog": 1}
    examples = sorted(tfds_builder.read_examples(summary["dataset_dir"], "train"), key=lambda e: e["answer"])
    assert [e["answer"] for e in examples] == [0, 1] and [e["degradation_seed"] for e in examples] == [-1, -1]
    first = examples[0]
    assert first["prompt_answer"] == "1" and chains.parse_chain(first["chain"]).answer == "0"
    assert first["degradation_types"] == ["noise", "fog"]
    # the two prompt styles: each keeps prompt and answer in agreement
    assert rows.user_text(first, "SUFFIX") == chains.format_prompt("Which shape is drawn?", list(SHAPES), "SUFFIX")
    assert rows.chain_text(first) == first["chain"]
    assert rows.user_text(first, "SUFFIX", "upstream") == first["prompt"] + "SUFFIX" == (
        HUMAN_ONE.replace("<image>", "") + "SUFFIX")
    assert chains.parse_chain(rows.chain_text(first, "upstream")).answer == "1"
    with pytest.raises(ValueError, match="unknown prompt_style 'verbatim'"):
        rows.user_text(first, "SUFFIX", "verbatim")


def test_unknown_source_is_one_error_naming_the_known_ones(tmp_path):
    with pytest.raises(SourceError, match="unknown synth.source 'sharegpt'; known sources: shapes, aokvqa, "
                                          "robust_r1_jsonl, llamafactory, vlmeval_tsv"):
        synth.run(_synth_config(tmp_path, source="sharegpt", source_path="x"))


def test_an_example_without_its_own_human_turn_under_the_upstream_style():
    example = {"question": "Q?", "options": ["a", "b"], "chain": _chain("1"), "prompt": "", "prompt_answer": ""}
    assert rows.user_text(example, "S", "upstream") == "Q?\nOptions:\n0. a\n1. bS"
    assert rows.chain_text(example, "upstream") == example["chain"]
    old = {"question": "Q?", "options": ["a", "b"], "chain": _chain("1")}  # a dataset written before the fields
    assert rows.user_text(old, "S", "upstream") == "Q?\nOptions:\n0. a\n1. bS"


# ---- VLMEvalKit TSV: literal None / NA / nan / N/A are options ---------------------------------------------------

def test_tsv_options_spelled_like_missing_values_are_options(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    b64 = base64.b64encode(buffer.getvalue()).decode()
    header = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category"]
    body = [
        ["1", b64, "How many tree stumps are there?", "nan", "None", "Two", "One", "Three", "A", "count"],
        ["2", b64, "Which?", "", "x", "y", "None", "", "C", ""],
        ["3", b64, "Which?", "", "NA", "nan", "N/A", "None", "D", ""],
        ["4", b64, "Which?", "", "None", "Two", "None", "None", "C", ""],  # duplicated option texts
        ["5", b64, "Which?", "", "a", "b", " ", "", "B", ""],  # an all-blank cell is missing
    ]
    path = tmp_path / "mmstar.tsv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
    records = sources.read_vlmeval_tsv(str(path), on_error="raise")
    assert [r.options for r in records] == [("None", "Two", "One", "Three"), ("x", "y", "None"),
                                            ("NA", "nan", "N/A", "None"), ("None", "Two", "None", "None"),
                                            ("a", "b")]
    assert [r.answer for r in records] == [0, 2, 3, 2, 1]
    assert records[0].hint == ""  # an exported NaN hint stays a missing hint


# ---- several images per prompt ------------------------------------------------------------------------------------

def test_several_images_per_prompt_reach_the_dataset_and_the_rows(tmp_path):
    for i, size in enumerate([(20, 30), (40, 28), (24, 24)]):
        _image(tmp_path / f"{i}.png", seed=i, size=size)
    path = _jsonl(tmp_path / "train.jsonl", [
        _rl("pair", "<image><image>Which one is a circle?\n1. circle\n2. square", _chain("1"),
            image=["0.png", "1.png"]),
        _rl("one", HUMAN_ONE, _chain("2"), image=["2.png"]),
        _rl("lost", HUMAN_ONE, _chain("2"), image=["2.png", "missing.png"]),
    ])
    records = sources.read_robust_r1_jsonl(path, str(tmp_path))
    assert [(r.id, r.extra_image_paths) for r in records] == [("pair", (str(tmp_path / "1.png"),)), ("one", ())]
    summary = synth.run(_synth_config(tmp_path / "work", source="robust_r1_jsonl", source_path=path,
                                      image_root=str(tmp_path)))
    examples = {e["id"]: e for e in tfds_builder.read_examples(summary["dataset_dir"], "train")}
    assert summary["skipped"] == 1 and "missing.png" in summary["skipped_items"][0]
    assert summary["max_images_per_prompt"] == 2  # what data.image_slots must be at least
    assert summary["source_records"] == {"usable": 2, "unused": 0}
    pair = examples["pair"]
    assert pair["image"].shape == (20, 30, 3) and len(pair["extra_images"]) == 1
    assert examples["one"]["extra_images"] == []
    second = np.asarray(Image.open(io.BytesIO(pair["extra_images"][0])))
    np.testing.assert_array_equal(second, np.asarray(Image.open(tmp_path / "1.png")))
    tokenizer = train_demo_tokenizer([pair["question"], pair["chain"]], tmp_path / "tok", vocab_size=300)
    processor = Processor(tokenizer, ImageProcessor())
    row = rows.SFTRow([pair], processor, PipelineConfig(batch_size=1, seq_len=512, patch_bucket=64,
                                                         image_slots=2))((0, False))
    grids = row["image_grid_thw"]
    assert row["example_index"] == 0 and (grids[:, 0] == 1).all()
    assert (row["input_ids"] == processor.image_token_id).sum() == grids.prod(axis=1).sum() // 4
    assert (row["input_ids"] == processor.token_ids["<|vision_start|>"]).sum() == 2


def test_several_jsonl_files_with_their_image_folders_as_upstream_passes_them(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _image(tmp_path / name / "0.png", seed=ord(name))
        _jsonl(tmp_path / f"{name}.jsonl", [_rl(name, HUMAN_ONE, _chain("1"))])
    files = f"{tmp_path / 'a.jsonl'}:{tmp_path / 'b.jsonl'}"
    assert synth.jsonl_sources(files, f"{tmp_path / 'a'}:{tmp_path / 'b'}") == [
        (str(tmp_path / "a.jsonl"), str(tmp_path / "a")), (str(tmp_path / "b.jsonl"), str(tmp_path / "b"))]
    assert synth.jsonl_sources("x.jsonl:y.jsonl", "imgs") == [("x.jsonl", "imgs"), ("y.jsonl", "imgs")]
    with pytest.raises(SourceError, match="names 2 files but synth.image_root 3 image folders"):
        synth.jsonl_sources("x:y", "a:b:c")
    summary = synth.run(_synth_config(tmp_path / "work", source="robust_r1_jsonl", source_path=files,
                                      image_root=f"{tmp_path / 'a'}:{tmp_path / 'b'}"))
    examples = {e["id"]: e for e in tfds_builder.read_examples(summary["dataset_dir"], "train")}
    for name in ("a", "b"):
        np.testing.assert_array_equal(examples[name]["image"], np.asarray(Image.open(tmp_path / name / "0.png")))



def test_a_file_with_more_records_than_requested_says_how_many_are_left_out(tmp_path, caplog):
    _image(tmp_path / "0.png")
    path = _jsonl(tmp_path / "train.jsonl", [_rl(f"r{i}", HUMAN_ONE, _chain("1")) for i in range(5)])
    config = _synth_config(tmp_path / "work", source="robust_r1_jsonl", source_path=path, image_root=str(tmp_path))
    config.synth.num_validation = 1
    with caplog.at_level(logging.WARNING, logger="robust_r1_jax.data.synth"):
        summary = synth.run(config)
    assert summary["counts"] == {"train": 2, "validation": 1}
    assert summary["source_records"] == {"usable": 5, "unused": 2}
    assert summary["max_images_per_prompt"] == 1
    assert f"{path} holds 5 usable records; only synth.num_train=2 + synth.num_validation=1 of them are used (2 " \
           f"left out); raise those to use them all" in caplog.messages
