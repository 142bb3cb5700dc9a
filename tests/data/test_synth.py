"""Synthesis end to end: shapes -> degradations -> chains -> TFDS, plus sheet and bad input."""

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import re
import time

import numpy as np
import pytest
from PIL import Image

from robust_r1_jax import degrade
from robust_r1_jax.data import annotators, chains, shapes, sources, synth, tfds_builder
from robust_r1_jax.data.records import ImageError, Record

CONFIG_PATH = pathlib.Path(__file__).resolve().parents[2] / "configs" / "synth.py"
SPEC_FORMAT = re.compile(
    r"<TYPE>.*?<TYPE_END>\s*<INFLUENCE>.*?<INFLUENCE_END>\s*<REASONING>.*?<REASONING_END>\s*"
    r"<CONCLUSION>.*?<CONCLUSION_END>\s*<ANSWER>.*?<ANSWER_END>",
    re.DOTALL,
)


def load_config():
    spec = importlib.util.spec_from_file_location("configs_synth_under_test", CONFIG_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def small_config(workdir, **overrides):
    config = load_config()
    config.workdir = str(workdir)
    config.synth.num_train = 10
    config.synth.num_validation = 4
    config.synth.image_size = 48
    config.synth.contact_sheet_size = 3
    for key, value in overrides.items():
        setattr(config.synth, key, value)
    return config


def tree_digest(path):
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = hashlib.sha256(pathlib.Path(full).read_bytes()).hexdigest()
    return out


def test_config_defines_the_synth_section():
    config = load_config()
    assert config.mode == "synth"
    assert config.synth.source == "shapes"
    assert 100 <= config.synth.num_train + config.synth.num_validation <= 1000
    for key in ("source_path", "image_root", "num_train", "num_validation", "image_size", "min_degradations",
                "max_degradations", "seed", "on_error"):
        assert key in config.synth


def test_run_builds_a_consistent_dataset(tmp_path):
    config = small_config(tmp_path)
    summary = synth.run(config)
    assert summary["counts"] == {"train": 10, "validation": 4} and summary["skipped"] == 0
    path = summary["dataset_dir"]
    assert path == tfds_builder.dataset_dir(os.path.join(str(tmp_path), "tfds"))
    records = {
        "train": shapes.make_records(10, seed=0, image_size=48),
        "validation": shapes.make_records(4, seed=0, image_size=48, start=10),
    }
    for split in ("train", "validation"):
        examples = tfds_builder.read_examples(path, split)
        assert [e["id"] for e in examples] == [r.id for r in records[split]]
        for index, (example, record) in enumerate(zip(examples, records[split])):
            chain = example["chain"]
            assert SPEC_FORMAT.search(chain)
            parsed, answer = chains.parse_chain_strict(chain)
            assert answer == example["answer"] == record.answer
            intensities = example["degradation_intensities"].tolist()
            assert parsed.types == [(n, round(s, 2)) for n, s in zip(example["degradation_types"], intensities)]
            assert 1 <= len(parsed.types) <= config.synth.max_degradations
            assert all(abs(s * 100 - round(s * 100)) < 1e-3 for s in intensities)  # two decimals
            assert example["degradation_seed"] == synth.example_seed(0, split, index)
            assert example["options"] == list(record.options) and example["question"] == record.question
            assert example["rationales"] == list(record.rationales)
            # The stored pixels are exactly the clean render degraded with the stored plan and seed.
            plan = [(n, round(s, 2)) for n, s in zip(example["degradation_types"], intensities)]
            expected, _ = degrade.compose(record.load_image(), plan, example["degradation_seed"])
            np.testing.assert_array_equal(example["image"], expected)
    sheet = np.asarray(Image.open(summary["contact_sheet"]))
    assert sheet.shape[0] == 3 * (192 + 6) + 6  # three rows: clean | degraded | label
    stored = json.loads((tmp_path / synth.SUMMARY_NAME).read_text())
    assert stored["counts"] == summary["counts"]


def test_two_runs_give_identical_bytes(tmp_path):
    first = synth.run(small_config(tmp_path / "a"))
    second = synth.run(small_config(tmp_path / "b"))
    assert tree_digest(first["dataset_dir"]) == tree_digest(second["dataset_dir"])
    third = synth.run(small_config(tmp_path / "c", seed=1))
    assert tree_digest(third["dataset_dir"]) != tree_digest(first["dataset_dir"])


def _tsv_with_one_corrupt_image(tmp_path):
    records = shapes.make_records(6, seed=3, image_size=32)
    records[2] = Record(**{**records[2].__dict__, "image_fn": None, "image_bytes": b"not an image"})
    path = str(tmp_path / "bench.tsv")
    sources.write_vlmeval_tsv(records, path)
    return path, records


def test_bad_image_is_skipped_with_file_and_line(tmp_path, caplog):
    path, records = _tsv_with_one_corrupt_image(tmp_path)
    config = small_config(tmp_path / "work", source="vlmeval_tsv", source_path=path, num_train=4, num_validation=2)
    with caplog.at_level(logging.WARNING):
        summary = synth.run(config)
    assert summary["skipped"] == 1
    assert sum(summary["counts"].values()) == 5
    assert re.search(rf"{re.escape(path)}:4 \(id {records[2].id}\): cannot decode image", caplog.text)
    ids = [e["id"] for split in ("train", "validation") for e in tfds_builder.read_examples(summary["dataset_dir"], split)]
    assert records[2].id not in ids and len(ids) == 5


def test_bad_image_with_raise_leaves_no_dataset(tmp_path):
    path, _ = _tsv_with_one_corrupt_image(tmp_path)
    work = tmp_path / "work"
    config = small_config(work, source="vlmeval_tsv", source_path=path, num_train=4, num_validation=2,
                          on_error="raise")
    with pytest.raises(ImageError, match=rf"{re.escape(path)}:4"):
        synth.run(config)
    assert not os.path.exists(work / "tfds" / "robust_r1")
    assert not os.path.exists(work / synth.CONTACT_SHEET_NAME)


def test_jsonl_source_keeps_prebuilt_chains_and_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    pixels = {}
    for i in range(3):
        array = np.random.default_rng(i).integers(0, 256, (20, 30, 3), dtype=np.uint8)
        Image.fromarray(array).save(images / f"{i}.png")
        pixels[f"r{i}"] = array
        chain = annotators.make_chain("Q", ["a", "b"], i % 2, [], [("noise", 0.3 + 0.1 * i)], seed=i)
        lines.append(json.dumps({"id": f"r{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nQuestion {i}?\nA. a\nB. b"}, {"from": "gpt", "value": chain}]}))
    source = tmp_path / "data.jsonl"
    source.write_text("\n".join(lines))
    config = small_config(tmp_path / "work", source="robust_r1_jsonl", source_path=str(source),
                          image_root=str(images), num_train=2, num_validation=1)
    summary = synth.run(config)
    examples = [e for split in ("train", "validation") for e in tfds_builder.read_examples(summary["dataset_dir"], split)]
    assert len(examples) == 3
    for example in examples:
        assert example["degradation_seed"] == -1
        np.testing.assert_array_equal(example["image"], pixels[example["id"]])
        assert chains.parse_chain(example["chain"]).types == list(
            zip(example["degradation_types"], [round(s, 2) for s in example["degradation_intensities"].tolist()]))
        assert example["options"] == ["a", "b"]


def test_aokvqa_source_end_to_end(tmp_path):
    coco = tmp_path / "coco" / "train2017"
    coco.mkdir(parents=True)
    items = []
    for i in range(5):
        Image.fromarray(np.full((24, 40, 3), 40 * i, np.uint8)).save(coco / f"{i + 1:012d}.jpg")
        items.append({"question_id": f"q{i}", "image_id": i + 1, "question": f"What is {i}?",
                      "choices": ["w", "x", "y", "z"], "correct_choice_idx": i % 4,
                      "rationales": [f"First reason {i}.", f"Second reason {i}.", f"Third reason {i}."]})
    source = tmp_path / "aokvqa_v1p0_train.json"
    source.write_text(json.dumps(items))
    config = small_config(tmp_path / "work", source="aokvqa", source_path=str(source),
                          image_root=str(tmp_path / "coco"), num_train=3, num_validation=2)
    summary = synth.run(config)
    assert summary["counts"] == {"train": 3, "validation": 2}
    train = tfds_builder.read_examples(summary["dataset_dir"], "train")
    assert {e["id"] for e in train} | {e["id"] for e in tfds_builder.read_examples(summary["dataset_dir"], "validation")} == {
        f"q{i}" for i in range(5)}
    for example in train:
        assert example["image"].shape == (24, 40, 3)
        assert example["rationales"][0].startswith("First reason")
        assert example["rationales"][0] in chains.parse_chain(example["chain"]).blocks["REASONING"]


def test_invalid_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="min_degradations"):
        synth.run(small_config(tmp_path, min_degradations=3, max_degradations=2))
    with pytest.raises(ValueError, match="needs synth.source_path"):
        synth.run(small_config(tmp_path, source="aokvqa"))
    with pytest.raises(ValueError, match="on_error"):
        synth.run(small_config(tmp_path, on_error="ignore"))


@pytest.mark.slow
def test_worker_processes_give_the_same_bytes(tmp_path):
    single = synth.run(small_config(tmp_path / "single"))
    pooled = synth.run(small_config(tmp_path / "pooled", num_workers=2))
    assert tree_digest(single["dataset_dir"]) == tree_digest(pooled["dataset_dir"])


@pytest.mark.slow
def test_default_config_builds_well_under_a_minute(tmp_path):
    config = load_config()
    config.workdir = str(tmp_path)
    started = time.perf_counter()
    summary = synth.run(config)
    elapsed = time.perf_counter() - started
    assert summary["counts"] == {"train": config.synth.num_train, "validation": config.synth.num_validation}
    assert summary["spearman_sum_intensity_vs_reasoning_words"] > 0.5
    assert elapsed < 60, elapsed


class _EchoLengthHandler:
    """Loopback chat endpoint answering with a reasoning of exactly the requested word count."""

    @staticmethod
    def make():
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                words = int(re.search(r"about (\d+) words", body["messages"][1]["content"]).group(1))
                content = ("<INFLUENCE>Stub influence.<INFLUENCE_END>\n<REASONING>" + " ".join(["stub"] * words)
                           + "<REASONING_END>\n<CONCLUSION>Stub conclusion.<CONCLUSION_END>")
                payload = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        return Handler


def test_openai_annotator_from_config_uses_the_endpoint(tmp_path):
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoLengthHandler.make())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address
        config = small_config(tmp_path, annotator="openai", annotator_base_url=f"http://{host}:{port}",
                              annotator_model="stub", num_train=3, num_validation=1)
        summary = synth.run(config)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    for example in tfds_builder.read_examples(summary["dataset_dir"], "train"):
        parsed = chains.parse_chain(example["chain"])
        assert parsed.blocks["INFLUENCE"] == "Stub influence."
        assert SPEC_FORMAT.search(example["chain"])
        assert parsed.types == list(zip(example["degradation_types"],
                                        [round(s, 2) for s in example["degradation_intensities"].tolist()]))


def test_the_shapes_section_narrows_the_generated_questions(tmp_path):
    config = small_config(tmp_path)
    assert synth.shapes_style(config.synth) == shapes.FULL_STYLE
    config.synth.shapes.kinds = ("colour",)
    config.synth.shapes.colours = ("red", "green", "blue", "yellow")
    config.synth.shapes.max_distractors = 0
    config.synth.shapes.sorted_options = True
    records = synth.split_records(config.synth)
    assert [len(records["train"]), len(records["validation"])] == [10, 4]
    for record in records["train"] + records["validation"]:
        assert record.category == "colour" and record.options == ("red", "green", "blue", "yellow")
    config.synth.shapes.kinds = ("colour", "weather")
    with pytest.raises(ValueError, match="weather"):
        synth.split_records(config.synth)
