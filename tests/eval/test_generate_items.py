"""The generate mode on items it cannot use (issue 16 kinds 1, 2 and 8) and with the model folder's own sampling
settings, its speed lines and one progress bar (issue 17 item 4). The model and sampler are scripted."""
import io
import json
import re
import shutil

import numpy as np
import pytest
from eval_helpers import ScriptedAnswerer, good_records, stand_in_model
from PIL import Image

from robust_r1_jax.data.records import SourceError
from robust_r1_jax.eval import generate, inference
from robust_r1_jax.model import generate as gen

ASPECT = "(absolute aspect ratio must be smaller than 200, got 210.0)"


def config(**overrides):
    from configs.generate import get_config
    cfg = get_config()
    cfg.update(overrides)
    return cfg


def save(path, pixels):
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


@pytest.fixture
def scripted(tokenizer, monkeypatch):
    answerer = ScriptedAnswerer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"), "noise(0.40)")
    monkeypatch.setattr(gen, "generate", answerer.generate)
    monkeypatch.setattr(inference, "load_model", lambda path, dtype: stand_in_model(tokenizer))
    return answerer


def streamed(tokenizer, monkeypatch):
    """A scripted ``gen.stream`` that records the sampler config and image patches of each call."""
    calls = []

    def stream(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, sampler_config, rng):
        calls.append((sampler_config, np.asarray(pixel_values)))
        yield from tokenizer.encode("<ANSWER>1<ANSWER_END>", add_special_tokens=False)
        yield tokenizer.convert_tokens_to_ids("<|im_end|>")

    monkeypatch.setattr(gen, "stream", stream)
    monkeypatch.setattr(inference, "load_model", lambda path, dtype: stand_in_model(tokenizer))
    return calls


def test_a_folder_run_keeps_going_past_unusable_items(tokenizer_dir, scripted, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    records = good_records()[:3]
    for i, r in enumerate(records):
        save(folder / f"good{i}.png", r.load_image())
    save(folder / "banner.png", np.full((2100, 10, 3), 90))  # 10x2100 px: aspect ratio 210
    save(folder / "strip.png", np.full((8, 10000, 3), 90))  # 10000x8 px: aspect ratio 1250
    save(folder / "icon.png", np.full((4, 4, 3), 90))  # the processor scales it up: evaluated
    questions = folder / "questions.jsonl"
    good = [json.dumps({"image": f"good{i}.png", "question": r.question, "options": list(r.options)}).encode()
            for i, r in enumerate(records)]
    lines = [good[0], json.dumps({"image": "banner.png", "question": "what?"}).encode(),
             '{"image": "icon.png", "question": "caf\u00e9?"}'.encode("latin-1"), good[1],
             json.dumps({"image": "strip.png", "question": "q"}).encode(), b"{not json", good[2],
             json.dumps({"image": "icon.png", "question": "an icon?"}).encode()]
    questions.write_bytes(b"\n".join(lines) + b"\n")
    output, info = tmp_path / "out.jsonl", io.StringIO()
    written = generate.run(config(checkpoint=tokenizer_dir, image_dir=str(folder), questions_file=str(questions),
                                  output=str(output), batch_size=3, prompt_buckets=(512,), patch_buckets=(16,)),
                           io.StringIO(), info)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows == json.loads(json.dumps(written)) and len(rows) == 8
    errors = {i: row["error"] for i, row in enumerate(rows) if "error" in row}
    assert errors == {
        1: f"{questions}:2: {folder / 'banner.png'}: the processor rejects the 10x2100 px image {ASPECT}",
        2: f"{questions}:3: not UTF-8 text (byte 0xe9 at column 39)",
        4: f"{questions}:5: {folder / 'strip.png'}: the processor rejects the 10000x8 px image "
           f"(absolute aspect ratio must be smaller than 200, got 1250.0)",
        5: f"{questions}:6: not valid JSON (Expecting property name enclosed in double quotes, column 2)",
    }
    assert [rows[i]["image"] for i in (0, 3, 6, 7)] == ["good0.png", "good1.png", "good2.png", "icon.png"]
    assert all(rows[i]["output"] for i in (0, 3, 6, 7))
    # One progress bar over the whole folder: it starts once at 0/8 and ends at 8/8.
    bar = info.getvalue()
    assert bar.count("0/8") == 1 and "8/8" in bar
    assert "speed: " in bar and " tokens for 4 images in " in bar and " tokens/s" in bar


def test_one_image_the_processor_rejects_is_named(tokenizer_dir, tokenizer, tmp_path, monkeypatch):
    streamed(tokenizer, monkeypatch)
    save(tmp_path / "banner.png", np.full((2100, 10, 3), 90))
    with pytest.raises(SourceError) as raised:  # main prints it as one line
        generate.run(config(checkpoint=tokenizer_dir, image=str(tmp_path / "banner.png"), question="q"),
                     io.StringIO(), io.StringIO())
    assert str(raised.value) == f"{tmp_path / 'banner.png'}: the processor rejects the 10x2100 px image {ASPECT}"


def test_exif_orientation_is_applied_to_user_photos(tokenizer_dir, tokenizer, processor, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (56, 112, 3), dtype=np.uint8)  # as the sensor wrote it: 112 wide, 56 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    upright = np.rot90(stored, k=-1)
    assert np.array_equal(generate.load_image(str(tmp_path / "phone.png")), upright)
    calls = streamed(tokenizer, monkeypatch)
    generate.run(config(checkpoint=tokenizer_dir, image=str(tmp_path / "phone.png"), question="q"),
                 io.StringIO(), io.StringIO())
    assert np.array_equal(calls[0][1], processor.image_processor(upright)["pixel_values"])


@pytest.fixture
def model_folder(tokenizer_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tokenizer_dir, folder)
    return folder


def run_one(folder, tmp_path, **sampling):
    save(tmp_path / "one.png", good_records()[0].load_image())
    cfg = config(checkpoint=str(folder), image=str(tmp_path / "one.png"), question="q")
    for name, value in sampling.items():
        cfg.sampling[name] = value
    info = io.StringIO()
    generate.run(cfg, io.StringIO(), info)
    return info.getvalue().splitlines()


def test_the_model_folders_generation_config_is_used(model_folder, tokenizer, tmp_path, monkeypatch):
    calls = streamed(tokenizer, monkeypatch)
    shipped = model_folder / "generation_config.json"
    shipped.write_text(json.dumps({"do_sample": True, "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.05,
                                   "max_new_tokens": 64, "num_beams": 3}))
    lines = run_one(model_folder, tmp_path)
    used = calls[-1][0]
    assert (used.temperature, used.top_p, used.top_k, used.repetition_penalty, used.max_new_tokens) == (
        0.7, 0.8, 50, 1.05, 64)
    assert lines[0] == (f"sampling: temperature=0.7 (generation_config.json), top_p=0.8 (generation_config.json), "
                        f"top_k=50 (generation_config.json), repetition_penalty=1.05 (generation_config.json), "
                        f"max_new_tokens=64 (generation_config.json); "
                        f"from {shipped} (not supported by this sampler, ignored: num_beams=3)")
    count = len(tokenizer.encode("<ANSWER>1<ANSWER_END>", add_special_tokens=False)) + 1
    assert re.fullmatch(rf"speed: first token after \d+\.\d\d s, then \d+\.\d tokens/s \({count} tokens in "
                        rf"\d+\.\d\d s; the first run of a shape includes compilation\)", lines[1])

    # A setting the user gives wins; temperature 0 asks for greedy and the file is not used at all.
    lines = run_one(model_folder, tmp_path, top_k=5)
    assert (calls[-1][0].top_k, calls[-1][0].temperature) == (5, 0.7)
    assert "top_k=5 (set)" in lines[0]
    lines = run_one(model_folder, tmp_path, temperature=0.0)
    assert calls[-1][0].greedy and (calls[-1][0].max_new_tokens, calls[-1][0].repetition_penalty) == (1024, 1.0)
    assert lines[0] == (f"sampling: greedy (set), max_new_tokens=1024 (default); greedy was asked for, so "
                        f"{shipped} is not used")

    # do_sample false (transformers' default) is greedy, with the file's penalty; no file: greedy by default.
    shipped.write_text(json.dumps({"temperature": 0.7, "repetition_penalty": 1.2}))
    assert run_one(model_folder, tmp_path)[0] == (
        f"sampling: greedy (generation_config.json), repetition_penalty=1.2 (generation_config.json), "
        f"max_new_tokens=1024 (default); from {shipped}")
    assert calls[-1][0].greedy and calls[-1][0].repetition_penalty == 1.2
    shipped.unlink()
    assert run_one(model_folder, tmp_path)[0] == "sampling: greedy (default), max_new_tokens=1024 (default)"


def test_speed_lines():
    completion = inference.Completion("x", 11, seconds=2.5, first_token_seconds=0.5)
    assert generate.stream_speed(completion) == ("speed: first token after 0.50 s, then 5.0 tokens/s (11 tokens in "
                                                 "2.50 s; the first run of a shape includes compilation)")
    assert generate.Speed(tokens=300, seconds=1.5).line(3) == (
        "speed: 300 tokens for 3 images in 1.50 s of generation: 200.0 tokens/s (the first batch includes "
        "compilation; a batch returns at once, so there is no time to first token)")


def test_a_runs_model_folder_is_named_with_its_run():
    assert generate.display_name("/tmp/runs/sft_tiny/model") == "sft_tiny/model"
    assert generate.display_name("runs/demo/rl/model/") == "rl/model"
    assert generate.display_name("/x/run/checkpoints") == "run/checkpoints"
    assert generate.display_name("/ckpt/Qwen2.5-VL-3B-Instruct") == "Qwen2.5-VL-3B-Instruct"
    assert generate.display_name("model") == "model"
