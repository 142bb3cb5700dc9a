"""The generate mode on a tiny random Qwen3-VL folder (issue 27, item 3): one image streamed, and a folder through
the batched sampler (left-padded rows, the batched image layout), each give transformers' greedy chain for the same
prompt; the model the mode loads has transformers' logits along that chain."""
import io
import os
import sys

import pytest
from eval_helpers import good_records
from PIL import Image
from test_generate_mode import config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import qwen3_vl_folder  # noqa: E402

from robust_r1_jax.eval import generate  # noqa: E402
from robust_r1_jax.model import generate as gen  # noqa: E402
from robust_r1_jax.model import loading  # noqa: E402

MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def folder(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_vl_generate")
    model_dir = qwen3_vl_folder.write(root / "model", tokenizer)
    images = root / "images"
    images.mkdir()
    records = good_records()[:2]
    for i, record in enumerate(records):
        Image.fromarray(record.load_image()).save(images / f"img{i}.png")
    return model_dir, images, records


def _greedy(**overrides):
    c = config(**overrides)
    c.sampling.temperature, c.sampling.max_new_tokens = 0.0, MAX_NEW_TOKENS
    return c


def _reference(model_dir, image_path, question, options, logits: bool = False) -> tuple[str, int]:
    """transformers' greedy chain for the prompt the mode builds: (text without stop tokens, tokens generated).
    ``logits``: also check that the loaded model's logits along the chain are transformers' (the greedy tokens
    alone would not tell a misplaced DeepStack feature: its effect on this model's logits is ~1e-3)."""
    processor = loading.load_processor(model_dir)
    encoded = processor.encode(generate.prompt_text(question, options, True), [generate.load_image(image_path)])
    ids, scores = qwen3_vl_folder.transformers_greedy(model_dir, encoded, MAX_NEW_TOKENS)
    assert len(set(ids)) >= 3, ids   # a chain that varies token by token
    if logits:
        qwen3_vl_folder.check_logits(model_dir, encoded, ids, scores)
    stops = set(gen.default_stop_token_ids(loading.read_config(model_dir)))
    return processor.tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True), len(ids)


@pytest.mark.slow   # 15-45 s on the 2-core CI machine, with its model fixture
def test_one_image_streams_transformers_greedy_chain(folder):
    model_dir, images, records = folder
    record, out = records[0], io.StringIO()
    completion = generate.run(_greedy(checkpoint=model_dir, image=str(images / "img0.png"), question=record.question,
                                      options=tuple(record.options)), out, io.StringIO())
    want_text, want_tokens = _reference(model_dir, str(images / "img0.png"), record.question, record.options,
                                        logits=True)
    assert (completion.text, completion.num_tokens) == (want_text, want_tokens)
    assert out.getvalue().startswith(want_text + "\n")


@pytest.mark.slow
def test_a_folder_run_gives_each_image_transformers_greedy_chain(folder, tmp_path):
    model_dir, images, _ = folder
    question = "How many objects are there?"
    records = generate.run(_greedy(checkpoint=model_dir, image_dir=str(images), question=question, batch_size=2,
                                   prompt_buckets=(512,), patch_buckets=(16,), output=str(tmp_path / "gen.jsonl")),
                           io.StringIO(), io.StringIO())
    assert [r["image"] for r in records] == ["img0.png", "img1.png"]
    for record in records:
        want_text, want_tokens = _reference(model_dir, str(images / record["image"]), question, ())
        assert (record["output"], record["tokens"]) == (want_text, want_tokens)
