"""The protocol with a real tiny model and the real sampler, against a step-by-step greedy loop; the ``eval`` and
``generate`` modes through ``python -m robust_r1_jax.main`` on a saved model. Slow: each part compiles."""
import io
import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from eval_helpers import answering_model, write_tsv_with_bad_rows
from PIL import Image

from robust_r1_jax import degrade
from robust_r1_jax.data import chains
from robust_r1_jax.eval import answers, generate, robust
from robust_r1_jax.model import orbax_io

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LEVELS = ["clean", "25%", "50%", "100%"]
MAX_NEW = 3
LENGTH = 160  # prompt bucket: the longest prompt (chat template, question, options, 4 image tokens) fits
SETTINGS = robust.Settings(max_new_tokens=MAX_NEW, batch_size=8, prompt_buckets=(LENGTH,), patch_buckets=(16,),
                          eval_protocol="indexed")
FLAGS = [f"--config.sampling.max_new_tokens={MAX_NEW}", "--config.batch_size=8", f"--config.prompt_buckets={LENGTH}",
         "--config.patch_buckets=16", "--config.no_suffix=all", "--config.protocol=indexed"]


def prompt(record):
    return chains.format_prompt(record.question, record.options, "")  # base-model prompt: no suffix


@pytest.fixture(scope="module")
def setup(tmp_path_factory, processor, tokenizer):
    root = tmp_path_factory.mktemp("real")
    data = write_tsv_with_bad_rows(root / "shapes_eval.tsv")
    images = {(r.id, lv): degrade.benchmark_image(r.load_image(), int(r.id), lv)
              for r in data["good"] for lv in LEVELS}
    calibration = [processor.encode(prompt(r), [images[r.id, lv]]) for r in data["good"] for lv in LEVELS]
    assert max(len(e["input_ids"]) for e in calibration) <= LENGTH
    model, margin, spread = answering_model(tokenizer, calibration)
    assert margin > 0.05 and min(spread) > 0.01, (margin, spread)
    model_dir = str(root / "model")
    orbax_io.save(model, model_dir)
    return dict(root=root, data=data, images=images, model=model, model_dir=model_dir,
                tsv=str(root / "shapes_eval.tsv"))


def greedy_text(model, processor, text, image, stops):
    """Prefill one left-padded prompt (flat image layout) and decode step by step with argmax."""
    encoded = processor.encode(text, [image])
    n = len(encoded["input_ids"])
    ids = np.full((1, LENGTH), processor.token_ids["<|endoftext|>"], np.int32)
    mask = np.zeros((1, LENGTH), np.int32)
    ids[0, LENGTH - n:], mask[0, LENGTH - n:] = encoded["input_ids"], 1
    logits, cache = model.prefill(ids, mask, encoded["pixel_values"], encoded["image_grid_thw"],
                                  max_len=LENGTH + MAX_NEW)
    out = []
    for _ in range(MAX_NEW):
        token = int(jnp.argmax(logits[0]))
        out.append(token)
        if token in stops:
            break
        logits, cache = model.decode(jnp.asarray([token], jnp.int32), cache)
    return processor.tokenizer.decode([t for t in out if t not in stops], skip_special_tokens=True), len(out)


@pytest.fixture(scope="module")
def independent(setup, processor):
    """(level, TSV index) -> (predicted option, generated text, tokens) from the greedy loop."""
    stops = {setup["model"].config.eos_token_id, setup["model"].config.bos_token_id}
    out = {}
    for record in setup["data"]["good"]:
        for level in LEVELS:
            text, n = greedy_text(setup["model"], processor, prompt(record), setup["images"][record.id, level], stops)
            out[level, record.id] = (answers.extract_answer(text, record.options), text, n)
    return out


@pytest.fixture(scope="module")
def evaluated(setup, processor):
    bench = robust.synthetic_benchmark(setup["tsv"], LEVELS)
    return robust.evaluate_model("tiny", setup["model"], processor, [bench], SETTINGS, use_suffix=False)


def test_sampler_batches_equal_a_greedy_loop(setup, evaluated, independent):
    summaries, predictions = evaluated
    summary = summaries["shapes_eval"]
    for p in predictions:
        if p["problem"] is None:
            assert (p["predicted"], p["output"], p["tokens"]) == independent[p["level"], p["index"]], p
    answer_of = {r.id: r.answer for r in setup["data"]["good"]}
    per_level = []
    for level in LEVELS:
        correct = sum(independent[level, i][0] == answer_of[i] for i in answer_of)
        assert summary["levels"][level]["correct"] == correct
        assert summary["levels"][level]["accuracy"] == pytest.approx(correct / 14)
        per_level.append(correct)
    assert 0 < sum(per_level) < 48 and len(set(per_level)) > 1, per_level  # not vacuous
    assert {o[2] for o in independent.values()} == {2}  # one digit, then <|im_end|>


def test_real_runs_are_identical_without_recompiling(setup, processor, evaluated):
    from robust_r1_jax.model import generate as gen
    compiled = gen.trace_count("generate")
    bench = robust.synthetic_benchmark(setup["tsv"], LEVELS)
    assert robust.evaluate_model("tiny", setup["model"], processor, [bench], SETTINGS, use_suffix=False) == evaluated
    assert gen.trace_count("generate") == compiled  # every batch of every level reused one program


def _main(args, cwd=ROOT, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "robust_r1_jax.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_main_eval_with_checkpoints(setup, tokenizer_dir, evaluated, tmp_path):
    out = _main(["--config=configs/eval_robust.py", f"--config.checkpoints={setup['model_dir']}",
                 f"--config.tokenizers={tokenizer_dir}", f"--config.tsvs={setup['tsv']}", "--config.names=tiny",
                 f"--config.workdir={tmp_path}", *FLAGS])
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    got = results["models"]["tiny"]["benchmarks"]["shapes_eval"]
    assert got == json.loads(json.dumps(evaluated[0]["shapes_eval"]))
    assert "| tiny |" in out.stdout and (tmp_path / "accuracy.png").is_file()
    assert out.stdout.splitlines()[-1].startswith(f"eval: reports in {tmp_path} (results.json, results.md, ")
    assert sorted(os.listdir(tmp_path / "levels" / "tiny" / "shapes_eval")) == [
        "100.json", "25.json", "50.json", "clean.json"]
    again = _main(["--config=configs/eval_robust.py", f"--config.checkpoints={setup['model_dir']}",
                   f"--config.tokenizers={tokenizer_dir}", f"--config.tsvs={setup['tsv']}", "--config.names=tiny",
                   f"--config.workdir={tmp_path}", *FLAGS])   # every level reused: same results, nothing generated
    assert again.returncode == 0 and json.loads((tmp_path / "results.json").read_text()) == results
    assert again.stderr.count("finished in an earlier run") == 4


def test_main_eval_without_checkpoint_uses_the_demo(setup, tokenizer_dir, tmp_path):
    out = _main([f"--config={ROOT}/configs/eval_robust.py", *FLAGS], cwd=tmp_path)
    assert out.returncode != 0 and "configs/demo.py" in out.stderr
    demo = tmp_path / "runs" / "demo"
    shutil.copytree(tokenizer_dir, demo / "tokenizer")
    for stage in ("sft", "rl"):
        shutil.copytree(setup["model_dir"], demo / stage / "model")
    (demo / "data").mkdir()
    shutil.copy(setup["tsv"], demo / "data" / "demo_eval.tsv")
    out = _main([f"--config={ROOT}/configs/eval_robust.py", *FLAGS], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    markdown = (demo / "eval" / "results.md").read_text()
    assert "## demo_eval" in markdown and "| demo SFT |" in markdown and "| demo SFT+RL |" in markdown
    with Image.open(demo / "eval" / "accuracy.png") as plot:
        assert plot.size == (500, 400)


def test_main_generate_streams_one_image(setup, tokenizer_dir, independent, tmp_path):
    record = setup["data"]["good"][0]
    Image.fromarray(record.load_image()).save(tmp_path / "one.png")
    out = _main(["--config=configs/generate.py", f"--config.checkpoint={setup['model_dir']}",
                 f"--config.tokenizer={tokenizer_dir}", f"--config.image={tmp_path / 'one.png'}",
                 f"--config.question={record.question}", f"--config.options={tuple(record.options)!r}",
                 "--config.suffix=False", f"--config.sampling.max_new_tokens={MAX_NEW}"])
    assert out.returncode == 0, out.stderr[-3000:]
    predicted, text, _ = independent["clean", record.id]
    assert text and out.stdout.splitlines()[0] == text
    assert out.stdout.splitlines()[1] == f"answer: {predicted} ({record.options[predicted]})"


def test_generate_folder_with_the_real_sampler(setup, tokenizer_dir, independent, tmp_path, monkeypatch):
    from robust_r1_jax.eval import inference
    monkeypatch.setattr(inference, "load_model", lambda path, dtype: setup["model"])
    records = setup["data"]["good"][:3]
    lines = []
    for r in records:
        Image.fromarray(r.load_image()).save(tmp_path / f"{r.id}.png")
        lines.append(json.dumps({"image": f"{r.id}.png", "question": r.question, "options": list(r.options)}))
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    from configs.generate import get_config
    config = get_config()
    config.update(dict(checkpoint=setup["model_dir"], tokenizer=tokenizer_dir, image_dir=str(tmp_path),
                       questions_file=str(tmp_path / "q.jsonl"), output=str(tmp_path / "out.jsonl"), suffix=False,
                       batch_size=8, prompt_buckets=(LENGTH,), patch_buckets=(16,)))
    config.sampling.max_new_tokens = MAX_NEW
    generate.run(config, io.StringIO())
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(row["answer"], row["output"], row["tokens"]) for row in rows] == [
        independent["clean", r.id] for r in records]
