"""R-Bench from a local copy, and the written reports: JSON, Markdown (one row per model) and the PNG plot."""
import csv
import io
import json
import os

import numpy as np
import pytest
from eval_helpers import ScriptedAnswerer, good_records, stand_in_model, write_tsv_with_bad_rows
from PIL import Image

from robust_r1_jax.data import chains, sources
from robust_r1_jax.data.records import SourceError
from robust_r1_jax.eval import benchmarks, report, robust

SETTINGS = robust.Settings(max_new_tokens=256, batch_size=4, prompt_buckets=(256, 512), patch_buckets=(16,),
                          eval_protocol="indexed")
LEVELS = ["clean", "25%", "50%", "100%"]


def answerer(tokenizer, shift=0):
    return ScriptedAnswerer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"), "noise(0.40)", shift=shift)


@pytest.fixture(scope="module")
def rbench_dir(tmp_path_factory):
    """low / mid as JSON lists with image files (one missing, one bad entry), high as a VLMEvalKit TSV."""
    root = tmp_path_factory.mktemp("rbench")
    records = good_records()
    (root / "images").mkdir()
    for level, chosen in (("low", records[0:4]), ("mid", records[4:8])):
        entries = []
        for r in chosen:
            name = f"images/{level}_{r.id}.png"
            Image.fromarray(r.load_image()).save(root / name)
            answer = "ABCD"[r.answer] if level == "mid" else r.answer  # letters and indices are both accepted
            entries.append({"id": r.id, "image": name, "question": r.question, "options": list(r.options),
                            "answer": answer})
        entries.append({"id": "x", "image": f"images/{level}_missing.png", "question": "q?",
                        "options": ["a", "b"], "answer": 0})
        if level == "mid":
            entries.append({"id": "y", "image": "images/none.png", "question": "q?", "options": ["a"], "answer": 0})
        (root / f"{level}.json").write_text(json.dumps(entries))
    sources.write_vlmeval_tsv(records[8:12], str(root / "MCQ_high.tsv"))
    return str(root)


def scored_by_hand(tokenizer, processor, rows):
    """Independent scoring of shipped (undegraded) rows: decode the scripted chain's ANSWER digit."""
    scripted = answerer(tokenizer)
    correct = 0
    for record in rows:
        encoded = processor.encode(chains.format_prompt(record.question, record.options), [record.load_image()])
        correct += scripted.answer_for(encoded["pixel_values"]) == record.answer
    return correct


def test_rbench_layout_and_accuracy_per_level(tokenizer, processor, rbench_dir):
    bench = robust.rbench_benchmark(rbench_dir)
    assert [c.level for c in bench.conditions] == ["low", "mid", "high"]
    summaries, predictions = robust.evaluate_model("m", stand_in_model(tokenizer), processor, [bench], SETTINGS,
                                                   generate_fn=answerer(tokenizer).generate)
    summary = summaries["R-Bench"]
    records = good_records()
    expected = {"low": scored_by_hand(tokenizer, processor, records[0:4]),
                "mid": scored_by_hand(tokenizer, processor, records[4:8]),
                "high": scored_by_hand(tokenizer, processor, records[8:12])}
    totals = {"low": 5, "mid": 6, "high": 4}  # the broken entries count as wrong
    for level in ("low", "mid", "high"):
        assert summary["levels"][level]["correct"] == expected[level]
        assert summary["levels"][level]["total"] == totals[level]
        assert summary["levels"][level]["intensity"] is None
    assert summary["levels"]["overall"]["correct"] == sum(expected.values())
    assert summary["levels"]["overall"]["total"] == 15
    assert 0 < sum(expected.values()) < 12
    problems = {row["label"]: row["problem"] for row in summary["failed_rows"]}
    assert "image file not found" in problems["x"]
    assert "'options' must be a list of at least two" in problems["y"]
    assert "by_type" not in summary
    assert all(p["level"] in ("low", "mid", "high") for p in predictions)


def test_rbench_folder_problems_are_explained(tmp_path):
    with pytest.raises(SourceError, match="R-Bench folder not found"):
        benchmarks.rbench_files(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="MCQ_low.tsv"):
        benchmarks.rbench_files(str(tmp_path))


@pytest.fixture(scope="module")
def two_models(tokenizer, processor, rbench_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tsv") / "shapes_eval.tsv"
    write_tsv_with_bad_rows(path)
    benches = [robust.synthetic_benchmark(str(path), LEVELS), robust.rbench_benchmark(rbench_dir)]
    results = {"protocol": SETTINGS.protocol(), "models": {}}
    predictions = []
    for name, shift in (("model A", 0), ("model B", 1)):
        summaries, records = robust.evaluate_model(name, stand_in_model(tokenizer), processor, benches, SETTINGS,
                                                   generate_fn=answerer(tokenizer, shift).generate)
        results["models"][name] = {"path": name, "tokenizer": "t", "prompt_suffix": True, "benchmarks": summaries}
        predictions += records
    return results, predictions, benches


def accuracy_table(markdown, bench):
    """The rows of the first table after the benchmark's heading."""
    section = markdown.split(f"## {bench}\n", 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return lines[start], rows


def test_reports_are_written(two_models, tmp_path):
    results, predictions, _ = two_models
    paths = report.write_reports(results, predictions, str(tmp_path / "out"))
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    set_folder = os.readlink(tmp_path / "out" / ".report")  # the set's own folder; the names link into it
    assert names == sorted(["results.json", "results.md", "accuracy.png", "predictions.jsonl", ".report",
                            set_folder])  # no temporary files left
    assert json.loads(open(paths["json"]).read()) == json.loads(json.dumps(results))

    markdown = open(paths["markdown"]).read()
    header, rows = accuracy_table(markdown, "shapes_eval")
    assert header.startswith("| model | clean (s=0.00) | 25% (s=0.23) | 50% (s=0.45) | 100% (s=0.90) |")
    assert [row[0] for row in rows] == ["model A", "model B"]
    for row in rows:
        levels = results["models"][row[0]]["benchmarks"]["shapes_eval"]["levels"]
        assert row[1:] == [f"{100 * levels[lv]['accuracy']:.2f}" for lv in LEVELS]
    _, rbench_rows = accuracy_table(markdown, "R-Bench")
    assert [row[0] for row in rbench_rows] == ["model A", "model B"] and len(rbench_rows[0]) == 5
    assert "`" in markdown and "Failed rows (counted as wrong)" in markdown and "index 901" in markdown
    assert "Greedy decoding, at most 256 new tokens, protocol `indexed`. Accuracy in %" in markdown

    with Image.open(paths["plot"]) as plot:
        plot.load()
        assert plot.format == "PNG"
        assert plot.size == (2 * 500, 400)  # two benchmark panels
        pixels = np.asarray(plot.convert("RGB"))
    assert pixels.std() > 10  # something was drawn

    lines = open(paths["predictions"]).read().splitlines()
    assert len(lines) == len(predictions) == 2 * (14 * 4 + 15)
    assert json.loads(lines[0])["model"] == "model A"


def test_only_process_zero_writes(two_models, tmp_path, monkeypatch):
    results, predictions, _ = two_models
    monkeypatch.setattr(report.jax, "process_index", lambda: 1)
    report.write_reports(results, predictions, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_one_benchmark_plot_size(two_models):
    results, _, _ = two_models
    single = {"protocol": results["protocol"], "models": {
        name: {**m, "benchmarks": {"shapes_eval": m["benchmarks"]["shapes_eval"]}}
        for name, m in results["models"].items()}}
    with Image.open(__import__("io").BytesIO(report.plot_png(single))) as plot:
        assert plot.size == (500, 400)


def test_vlmevalkit_tables_are_written_beside_the_reports(two_models, tmp_path):
    results, predictions, benches = two_models
    paths = report.write_reports(results, predictions, str(tmp_path / "out"), benches)
    folder = tmp_path / "out" / "vlmevalkit"
    assert paths["vlmevalkit"] == str(folder)
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tsv"))
    # Four levels of the synthetic TSV per model, and R-Bench's one TSV file (high); its JSON levels have no columns.
    assert written == sorted([f"{level}/model_{m}_shapes_eval.tsv" for level in LEVELS for m in "AB"] + [
        "as_shipped/model_A_MCQ_high.tsv", "as_shipped/model_B_MCQ_high.tsv"])
    text = (folder / "50%" / "model_B_shapes_eval.tsv").read_text()
    assert text.startswith('"index"\t"question"\t"A"\t"B"\t"C"\t"D"\t"answer"\t"category"\t"prediction"\t"thinking"\n')
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    assert [row[0] for row in rows[1:]] == [str(i) for i in range(100, 112)] + ["900", "901"]  # failed rows too
    by_index = {p["index"]: p for p in predictions if p["model"] == "model B" and p["level"] == "50%"
                and p["benchmark"] == "shapes_eval"}
    for fields in rows[1:]:
        output = by_index[fields[0]]["output"]
        assert fields[-2:] == (["", ""] if output is None else [chains.extract_block(output, "ANSWER"), output])
    assert sum(fields[-1] == "" for fields in rows[1:]) == 2


def test_a_report_set_is_replaced_as_one_unit(two_models, tmp_path, monkeypatch):
    """A failure while the second set is written (here: the disk fills after its first file) leaves the first set
    whole; then the second set replaces all of it and the first set's folder is gone."""
    results, predictions, _ = two_models
    out = tmp_path / "out"
    report.write_reports(results, predictions, str(out))
    first = {name: (out / name).read_bytes() for name in ("results.json", "results.md", "accuracy.png")}
    second = json.loads(json.dumps(results))
    second["protocol"]["note"] = "second run"
    fsync, calls = os.fsync, []

    def fsync_then_fail(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        fsync(fd)
    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", fsync_then_fail)
        with pytest.raises(OSError, match="No space left"):
            report.write_reports(second, predictions, str(out))
    assert {name: (out / name).read_bytes() for name in first} == first
    report.write_reports(second, predictions, str(out))
    assert json.loads((out / "results.json").read_text())["protocol"]["note"] == "second run"
    assert [p.name for p in out.iterdir() if p.name.startswith(".report-")] == [os.readlink(out / ".report")]
