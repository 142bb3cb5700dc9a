"""The generate mode with a scripted model: one image streamed token by token, a folder written as JSONL."""
import io
import json

import numpy as np
import pytest
from eval_helpers import IMAGE_SIZE, ScriptedAnswerer, good_records, stand_in_model
from PIL import Image

from robust_r1_jax.eval import generate, inference
from robust_r1_jax.model import generate as gen

CHAIN = "<TYPE>noise(0.40)<TYPE_END>\n<REASONING>the circle is red<REASONING_END>\n<ANSWER>2<ANSWER_END>"


class RecordingOutput(io.StringIO):
    def __init__(self):
        super().__init__()
        self.pieces = []

    def write(self, text):
        self.pieces.append(text)
        return super().write(text)


def scripted_stream(tokenizer, text):
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    calls = []

    def stream(model, prompt_ids, prompt_mask, pixel_values, image_grid_thw, config, rng):
        calls.append((np.asarray(prompt_ids), np.asarray(pixel_values)))
        yield from tokenizer.encode(text, add_special_tokens=False) + [stop]

    return stream, calls


def config(**overrides):
    from configs.generate import get_config
    cfg = get_config()
    cfg.update(overrides)
    return cfg


@pytest.fixture
def image_folder(tmp_path):
    records = good_records()[:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, r in enumerate(records):
        Image.fromarray(r.load_image()).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("ignored: not an image")
    return folder, records


def test_stream_prints_tokens_as_they_come(tokenizer, processor):
    stream, calls = scripted_stream(tokenizer, CHAIN)
    out = RecordingOutput()
    image = good_records()[0].load_image()
    cfg = inference.sampler_config(stand_in_model(tokenizer), processor, max_new_tokens=128)
    completion = generate.stream_completion(None, processor, image, generate.prompt_text("Q?", ("a", "b", "c"), True),
                                            cfg, None, out, stream_fn=stream)
    assert completion.text == CHAIN
    assert completion.num_tokens == len(tokenizer.encode(CHAIN, add_special_tokens=False)) + 1
    assert out.getvalue() == CHAIN + "\n"
    assert len([p for p in out.pieces if p]) >= 10  # printed piece by piece, not at the end
    assert "".join(out.pieces[:3]) == CHAIN[: len("".join(out.pieces[:3]))]
    prompt_ids, pixels = calls[0]
    assert prompt_ids.shape[0] == 1 and pixels.shape[0] == 16  # one 56x56 image: 4x4 patches of 14 px
    assert "First output the types of degradations" in tokenizer.decode(prompt_ids[0])


def test_stream_waits_for_whole_characters(tokenizer, processor):
    text = "colour: ré — ok"
    stream, _ = scripted_stream(tokenizer, text)
    out = RecordingOutput()
    cfg = inference.sampler_config(stand_in_model(tokenizer), processor, max_new_tokens=64)
    generate.stream_completion(None, processor, good_records()[0].load_image(), "Q?", cfg, None, out, stream)
    assert out.getvalue() == text + "\n"
    assert not any("\ufffd" in piece for piece in out.pieces)


def test_run_one_image(tokenizer_dir, tokenizer, image_folder, monkeypatch):
    folder, records = image_folder
    stream, calls = scripted_stream(tokenizer, CHAIN)
    monkeypatch.setattr(gen, "stream", stream)
    monkeypatch.setattr(inference, "load_model", lambda path, dtype: stand_in_model(tokenizer))
    out = RecordingOutput()
    completion = generate.run(config(checkpoint=tokenizer_dir, image=str(folder / "img0.png"),
                                     question="Which colour?", options=("red", "white", "blue")), out)
    assert completion.text == CHAIN
    assert out.getvalue() == CHAIN + "\nanswer: 2 (blue)\n"
    with pytest.raises(ValueError, match="question=... is required"):
        generate.run(config(checkpoint=tokenizer_dir, image=str(folder / "img0.png")), out)
    with pytest.raises(ValueError, match="cannot read the image"):
        generate.run(config(checkpoint=tokenizer_dir, image=str(folder / "broken.png"), question="q"), out)


def test_run_folder_writes_jsonl(tokenizer_dir, tokenizer, processor, image_folder, tmp_path, monkeypatch):
    folder, records = image_folder
    scripted = ScriptedAnswerer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"), "noise(0.40)")
    monkeypatch.setattr(gen, "generate", scripted.generate)
    monkeypatch.setattr(inference, "load_model", lambda path, dtype: stand_in_model(tokenizer))
    questions = folder / "questions.jsonl"
    lines = [{"image": f"img{i}.png", "question": r.question, "options": list(r.options)}
             for i, r in enumerate(records)]
    lines.insert(1, {"image": "broken.png", "question": "what?"})
    questions.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    output = tmp_path / "out" / "gen.jsonl"
    written = generate.run(config(checkpoint=tokenizer_dir, image_dir=str(folder), questions_file=str(questions),
                                  output=str(output), batch_size=2, prompt_buckets=(512,), patch_buckets=(16,)),
                           io.StringIO())
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows == json.loads(json.dumps(written))
    assert [r["image"] for r in rows] == ["img0.png", "broken.png", "img1.png", "img2.png"]
    assert "cannot read the image" in rows[1]["error"] and "output" not in rows[1]
    for row in (rows[0], rows[2], rows[3]):
        patches = processor.image_processor(generate.load_image(str(folder / row["image"])))["pixel_values"]
        expected = scripted.answer_for(patches)
        assert row["answer"] == expected
        assert row["output"] == scripted.chain(expected)
        assert row["tokens"] == len(tokenizer.encode(row["output"], add_special_tokens=False)) + 1
    assert sorted(p.name for p in output.parent.iterdir()) == ["gen.jsonl"]

    # One shared question, every image of the folder, open question (no options -> no answer index).
    shared = generate.run(config(checkpoint=tokenizer_dir, image_dir=str(folder), question="Describe it.",
                                 output=str(output), batch_size=3, prompt_buckets=(512,), patch_buckets=(16,)),
                          io.StringIO())
    assert [r["image"] for r in shared] == ["broken.png", "img0.png", "img1.png", "img2.png"]
    assert all(r["answer"] is None for r in shared if "output" in r)


def test_bad_generate_input_is_explained(tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="config.image=<file>"):
        generate.run(config(checkpoint=tokenizer_dir))
    (tmp_path / "q.jsonl").write_text('{"image": "a.png"}\n')
    items = generate.batch_items(config(image_dir=str(tmp_path), questions_file=str(tmp_path / "q.jsonl")))
    assert [item.problem for item in items] == [
        f"{tmp_path / 'q.jsonl'}:1: expected an object with string 'image' and 'question'"]
    with pytest.raises(FileNotFoundError, match="no images"):
        generate.batch_items(config(image_dir=str(tmp_path), question="q"))


def test_demo_model_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="configs/demo.py"):
        generate.model_spec(config())
    for sub in ("runs/demo/tokenizer", "runs/demo/sft/model"):
        (tmp_path / sub).mkdir(parents=True)
    assert generate.model_spec(config()).path == "runs/demo/sft/model"
    (tmp_path / "runs/demo/rl/model").mkdir(parents=True)
    spec = generate.model_spec(config())
    assert (spec.name, spec.path, spec.tokenizer_path) == ("demo SFT+RL", "runs/demo/rl/model", "runs/demo/tokenizer")


def test_image_size_constant_matches_the_test_images():
    assert good_records()[0].load_image().shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
