"""The ``vlmevalkit`` protocol: VLMEvalKit's exact matching, its Qwen2.5-VL MCQ prompt and pixel bounds, R-Bench as
VLMEvalKit ships it (R-Bench-Dis / R-Bench-Ref TSVs) and the prediction tables VLMEvalKit's evaluation reads."""
import csv
import io

import pytest
from eval_helpers import ScriptedAnswerer, good_records, stand_in_model

from robust_r1_jax.data import chains, sources
from robust_r1_jax.data.records import Record, SourceError
from robust_r1_jax.eval import benchmarks, protocols, report, robust
from robust_r1_jax.eval.answers import vlmevalkit_choice, vlmevalkit_extract

COLOURS = {"A": "red", "B": "green", "C": "blue", "D": "yellow"}


# ------------------------------------------------------------------ VLMEvalKit's can_infer


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("(C)", "C"),
    ("The answer is B.", "B"),  # the lone letter is among the last four words
    ("**D**", "D"),
    ("Answer: [A]", "A"),
    # A letter early in a long answer does not count by position ...
    ("B is what most people pick, but looking closely at the whole picture the colour is plainly another", None),
    # ... but "answer is X" anywhere does (letters A-D).
    ("Looking closely at the whole picture, I think the correct answer is **C** and not the other ones", "C"),
    ("A or B", None),  # two letters: neither position nor text decides
    ("green", "B"),  # no letter: the one option text inside a short answer
    ("It is green.", "B"),
    ("red or green", None),  # two option texts
    ("A cat sits on a mat in the sun all day long", None),  # "A" too early, text too long for text matching
    ("Cannot determine the answer", None),  # a refusal is VLMEvalKit's "Z"
    ("Z", None),
    ("", None),
])
def test_vlmevalkit_choice_reads_like_can_infer(text, expected):
    assert vlmevalkit_choice(text, dict(COLOURS)) == expected


def test_vlmevalkit_choice_matches_substrings_as_vlmevalkit_does():
    # VLMEvalKit's can_infer_text tests substrings: "red" is inside "dark red", so the answer is ambiguous.
    assert vlmevalkit_choice("dark red", {"A": "red", "B": "dark red"}) is None
    assert vlmevalkit_choice("dark red", {"A": "blue", "B": "dark red"}) == "B"
    # The text rule only reads answers at most twice as long as all option texts together.
    assert vlmevalkit_choice("it is blue", {"A": "blue", "B": "red"}) == "A"
    assert vlmevalkit_choice("it is most likely blue", {"A": "blue", "B": "red"}) is None


def test_vlmevalkit_choice_leaves_the_options_alone_and_checks_them():
    options = {"A": "Red", "B": "Green"}
    assert vlmevalkit_choice("green", options) == "B"
    assert options == {"A": "Red", "B": "Green"}  # VLMEvalKit lower-cases its dict in place; we do not
    with pytest.raises(ValueError, match="needs the question's options"):
        vlmevalkit_choice("A", {})
    with pytest.raises(ValueError, match="capital letters"):
        vlmevalkit_choice("A", {"a": "x", "1": "y"})


def chain(answer: str) -> str:
    return (f"<TYPE>lens blur(0.40)<TYPE_END>\n<INFLUENCE>A blurred edge.<INFLUENCE_END>\n<REASONING>The shape is "
            f"round.<REASONING_END>\n<CONCLUSION>It is green.<CONCLUSION_END>\n<ANSWER>{answer}<ANSWER_END>")


def test_the_answer_block_is_read_first():
    options = ("red", "green", "blue")
    got = vlmevalkit_extract(chain("C"), options)
    assert (got.index, got.source) == (2, "answer_tag")
    got = vlmevalkit_extract(chain("(B) green"), options)
    assert (got.index, got.source) == (1, "answer_tag")
    # A block VLMEvalKit cannot read (an index, as the indexed protocol's chains write): the whole output decides,
    # and here "A" from "A blurred edge" stands too early among many words.
    got = vlmevalkit_extract(chain("1"), options)
    assert (got.index, got.source) == (None, "free_text")
    got = vlmevalkit_extract("The answer is B", options)
    assert (got.index, got.source) == (1, "free_text")


# ------------------------------------------------------------------ prompt and pixel bounds

# VLMEvalKit's ImageMCQDataset.build_prompt for this row, written out by hand from its code.
EXPECTED_PROMPT = ("Hint: The shape is in the centre.\n"
                   "Question: What colour is the shape?\n"
                   "Options:\nA. red\nB. green\nC. blue\n"
                   "Please select the correct answer from the options above. \n")


def one_row_tsv(path, hint="The shape is in the centre."):
    image = good_records()[0].encoded_image()
    record = Record(id="7", question="What colour is the shape?", options=("red", "green", "blue"), answer=1,
                    image_bytes=image, hint=hint)
    sources.write_vlmeval_tsv([record], str(path))
    return benchmarks.read_tsv_rows(str(path))[0]


def test_a_tsv_row_gets_vlmevalkits_prompt(tmp_path):
    row = one_row_tsv(tmp_path / "one.tsv")
    assert robust.question_text(row, use_suffix=False, protocol="vlmevalkit") == EXPECTED_PROMPT
    assert robust.question_text(row, use_suffix=True, protocol="vlmevalkit") == EXPECTED_PROMPT + chains.PROMPT_SUFFIX
    no_hint = one_row_tsv(tmp_path / "two.tsv", hint="")
    assert robust.question_text(no_hint, use_suffix=False, protocol="vlmevalkit") == EXPECTED_PROMPT.split("\n", 1)[1]
    # The index-numbered protocol stays selectable.
    assert robust.question_text(row, use_suffix=False, protocol="indexed") == (
        "The shape is in the centre.\nWhat colour is the shape?\nOptions:\n0. red\n1. green\n2. blue")


def test_pixel_bounds():
    assert protocols.pixel_bounds("vlmevalkit", 0, 0) == (1003520, 12845056)
    assert protocols.pixel_bounds("vlmevalkit", 3136, 0) == (3136, 12845056)
    assert protocols.pixel_bounds("vlmevalkit", 0, 50176) == (50176, 50176)  # a lower max lowers the floor
    assert protocols.pixel_bounds("indexed", 0, 0) == (0, 0)  # the model folder's preprocessor_config.json
    with pytest.raises(ValueError, match="unknown evaluation protocol 'vlmeval'"):
        protocols.pixel_bounds("vlmeval", 0, 0)


def test_the_config_defaults_to_vlmevalkit_and_checks_the_name():
    config = robust.default_config()
    assert config.protocol == "vlmevalkit" and robust.Settings().eval_protocol == "vlmevalkit"
    config.protocol = "letters"
    with pytest.raises(ValueError, match=r"expected one of \['vlmevalkit', 'indexed'\]"):
        robust.settings_from_config(config)


# ------------------------------------------------------------------ R-Bench TSVs and prediction tables


def write_rbench_tsv(path, records, extra: dict[str, list[str]]):
    """A VLMEvalKit MCQ TSV of ``records`` with extra columns appended (e.g. a level column)."""
    sources.write_vlmeval_tsv(records, str(path))
    lines = path.read_text().splitlines()
    lines[0] += "".join(f"\t{name}" for name in extra)
    for i in range(1, len(lines)):
        lines[i] += "".join(f"\t{values[i - 1]}" for values in extra.values())
    path.write_text("\n".join(lines) + "\n")


STRENGTHS = ["1", "2", "3", "1", "2", "3", "1", "1", "2", "3", "3", "3"]


def test_rbench_levels_come_from_the_strength_column(tmp_path):
    records = good_records()
    write_rbench_tsv(tmp_path / "R-Bench-Dis.tsv", records, {"strength": STRENGTHS})
    write_rbench_tsv(tmp_path / "R-Bench-Ref.tsv", records[:3], {"strength": STRENGTHS[:3]})
    levels = benchmarks.read_rbench(str(tmp_path))
    assert list(levels) == ["ref", "low", "mid", "high"]
    assert [row.label for row in levels["low"]] == ["100", "103", "106", "107"]
    assert [len(levels[k]) for k in ("ref", "mid", "high")] == [3, 3, 5]
    assert dict(levels["low"][0].columns)["strength"] == "1" and "image" not in dict(levels["low"][0].columns)


def test_rbench_without_a_level_column_is_one_level(tmp_path, caplog):
    records = good_records()[:4]
    write_rbench_tsv(tmp_path / "R-bench-dis.tsv", records, {"category": ["outdoor", "indoor", "outdoor", "x"]})
    levels = benchmarks.read_rbench(str(tmp_path))
    assert list(levels) == ["dis"] and len(levels["dis"]) == 4
    assert "no level column" in caplog.text
    (tmp_path / "R-bench-dis.tsv").rename(tmp_path / "R-Bench-Ref.tsv")
    with pytest.raises(SourceError, match="no R-Bench-Dis.tsv"):
        benchmarks.read_rbench(str(tmp_path))


def test_rbench_dis_end_to_end_with_vlmevalkit_tables(tmp_path, tokenizer, processor):
    records = good_records()
    write_rbench_tsv(tmp_path / "R-Bench-Dis.tsv", records, {"strength": STRENGTHS, "l2-category": ["x"] * 12})
    bench = robust.rbench_benchmark(str(tmp_path))
    answerer = ScriptedAnswerer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"), "noise(0.20)",
                                letters=True)
    settings = robust.Settings(max_new_tokens=256, batch_size=4, prompt_buckets=(512,), patch_buckets=(16,))
    summaries, predictions = robust.evaluate_model("Robust R1/x", stand_in_model(tokenizer), processor, [bench],
                                                   settings, use_suffix=True, generate_fn=answerer.generate)
    # The prompts were VLMEvalKit's with the suffix: decode the first one.
    first_prompt = tokenizer.decode(answerer.seen[0][0], skip_special_tokens=True)
    assert "Options:\nA. " in first_prompt and first_prompt.endswith(chains.PROMPT_SUFFIX + "\nassistant\n")
    # An independent count: the scripted answer for each row's patches against the TSV's answer letter.
    by_label = {r.id: r for r in records}
    picked = {}
    for prediction in predictions:
        picked[prediction["index"]] = prediction["predicted"]
    summary = summaries["R-Bench"]
    for level, strength in (("low", "1"), ("mid", "2"), ("high", "3")):
        labels = [r.id for r, s in zip(records, STRENGTHS) if s == strength]
        correct = sum(picked[label] == by_label[label].answer for label in labels)
        assert summary["levels"][level]["total"] == len(labels)
        assert summary["levels"][level]["correct"] == correct
    assert summary["levels"]["overall"]["total"] == 12
    assert summary["levels"]["overall"]["correct"] == sum(picked[r.id] == r.answer for r in records)
    assert 0 < summary["levels"]["overall"]["correct"] < 12

    tables = report.vlmevalkit_tables(predictions, [bench])
    assert list(tables) == ["as_shipped/Robust_R1_x_R-Bench-Dis.tsv"]
    rows = list(csv.reader(io.StringIO(tables["as_shipped/Robust_R1_x_R-Bench-Dis.tsv"]), delimiter="\t"))
    assert rows[0] == ["index", "question", "A", "B", "C", "D", "answer", "category", "strength", "l2-category",
                       "prediction", "thinking"]
    assert [row[0] for row in rows[1:]] == [r.id for r in records]  # file order, every row
    for row in rows[1:]:
        answer = picked[row[0]]
        assert row[-2] == "ABCD"[answer] and row[-1].endswith(f"<ANSWER>{row[-2]}<ANSWER_END>")
        assert row[6] == "ABCD"[by_label[row[0]].answer]
    assert tables["as_shipped/Robust_R1_x_R-Bench-Dis.tsv"].startswith('"index"\t"question"\t')  # QUOTE_ALL


def test_synthetic_benchmarks_get_one_table_per_level(tmp_path):
    row = one_row_tsv(tmp_path / "MMStar.tsv")
    bench = robust.synthetic_benchmark(str(tmp_path / "MMStar.tsv"), ["clean", "50%"])
    predictions = [{"model": "m", "benchmark": "MMStar", "level": level, "where": row.where, "output": output}
                   for level, output in (("clean", "B"), ("50%", None))]
    tables = report.vlmevalkit_tables(predictions, [bench])
    assert tables == {
        "clean/m_MMStar.tsv": ('"index"\t"question"\t"hint"\t"A"\t"B"\t"C"\t"answer"\t"category"\t"prediction"\n'
                               '"7"\t"What colour is the shape?"\t"The shape is in the centre."\t"red"\t"green"\t'
                               '"blue"\t"B"\t""\t"B"\n'),
        "50%/m_MMStar.tsv": ('"index"\t"question"\t"hint"\t"A"\t"B"\t"C"\t"answer"\t"category"\t"prediction"\n'
                             '"7"\t"What colour is the shape?"\t"The shape is in the centre."\t"red"\t"green"\t'
                             '"blue"\t"B"\t""\t""\n'),
    }
