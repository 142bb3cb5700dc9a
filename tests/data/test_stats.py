"""``inspect`` on a dataset (data/stats.py): token-length histograms, padding at seq_len, examples per step with
and without packing; a model path still gets the model report."""
import numpy as np
import pytest

from robust_r1_jax.data import chains, rows, stats, tfds_builder
from robust_r1_jax.data.tokenizer import train_demo_tokenizer

import test_pipeline as tp


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    examples = tp._examples()
    path = tfds_builder.write_dataset({"train": examples}, str(tmp_path_factory.mktemp("stats_tfds")))
    texts = [e["chain"] for e in examples] + [rows.user_text(e, chains.PROMPT_SUFFIX) for e in examples]
    tok = tmp_path_factory.mktemp("stats_tok") / "tok"
    train_demo_tokenizer(texts, tok, vocab_size=1024)
    return path, str(tok)


def _config(path, tokenizer, **inspect):
    c = stats.default_config()
    c.inspect.update(dict(path=path, tokenizer=tokenizer, seq_len=1024, patch_bucket=128, image_slots=4,
                          global_batch_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280, **inspect))
    return c


def test_inspect_a_dataset_prints_lengths_padding_and_examples_per_step(dataset, capsys):
    path, tok = dataset
    report = stats.run_inspect(_config(path, tok))
    out = capsys.readouterr().out
    assert report["examples"] == tp.NUM_EXAMPLES and report["truncated"] == 0
    for heading in ("prompt tokens:", "image tokens:", "chain tokens:", "row tokens", "unpacked: padding",
                    "packed:   padding"):
        assert heading in out
    # the shapes rows (400-700 tokens) in 1024-token rows: about half padding alone, about one in five packed
    unpacked, packed = report["unpacked"], report["packed"]
    assert unpacked["padding_fraction"] == pytest.approx(1 - report["mean_total"] / 1024)   # all 14 placed
    assert 0.3 < unpacked["padding_fraction"] < 0.65 and packed["padding_fraction"] < unpacked["padding_fraction"]
    assert unpacked["examples_per_step"] == 2 and packed["examples_per_step"] > 2.5
    assert report["mean_tokens"]["image"] > 0 and report["mean_tokens"]["chain"] > 100
    # a 10-bin histogram line per bin for each of the four distributions
    assert sum(1 for line in out.splitlines() if line.startswith("  ") and "#" in line) >= 4


def test_a_dataset_without_a_tokenizer_is_one_clear_error(dataset):
    path, _ = dataset
    with pytest.raises(ValueError, match="is a dataset: set --config.inspect.tokenizer"):
        stats.run_inspect(_config(path, ""))


def test_histogram_lines():
    lines = stats.histogram([1, 2, 2, 3, 10], bins=3, width=10)
    assert len(lines) == 3 and lines[0].split()[:4] == ["1", "-", "4", "4"] and lines[0].endswith("#" * 10)
    assert stats.histogram([5, 5], bins=4)[0].split()[:2] == ["5", "2"]
