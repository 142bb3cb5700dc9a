"""SFT, then GRPO from the SFT model, then the robustness evaluation of the GRPO model, all on a random tiny Qwen3-VL
(16-px patches, DeepStack, q/k norm, interleaved M-RoPE) and a tokenizer folder whose preprocessor_config.json
sets Qwen3-VL's patching; and packed SFT (several examples per row, images image-major) on the same model.
Slow: every stage compiles."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "train"))
import qwen3_vl_folder  # noqa: E402
import sft_data  # noqa: E402

from robust_r1_jax import demo  # noqa: E402
from robust_r1_jax.data import synth  # noqa: E402
from robust_r1_jax.eval import robust  # noqa: E402
from robust_r1_jax.model import loading, orbax_io  # noqa: E402
from robust_r1_jax.rl import grpo  # noqa: E402
from robust_r1_jax.train import sft  # noqa: E402

pytestmark = pytest.mark.slow

PREPROCESSOR = qwen3_vl_folder.preprocessor_config(32 * 32, 64 * 64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3_vl_e2e")
    built = sft_data.build(str(root), num_train=16, vocab_size=1024)
    folder = root / "qwen3_vl_tokenizer"
    shutil.copytree(built["tokenizer"], folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return dict(built, tokenizer=str(folder), root=root)


def test_sft_then_grpo_then_eval_on_a_random_qwen3_vl(data, tmp_path):
    c = sft_data.tiny_sft_config(data, tmp_path / "sft", steps=2)
    c.model.preset = "qwen3_vl_tiny"
    sft_out = sft.run(c)
    assert len(sft_out["losses"]) == 2 and np.isfinite(sft_out["losses"]).all()
    trained = orbax_io.restore(sft_out["model_dir"])
    assert trained.config.model_type == "qwen3_vl" and trained.config.vision.patch_size == 16
    assert len(trained.visual.deepstack_mergers) == 2

    g = sft_data.tiny_grpo_config(data, tmp_path / "grpo", steps=1)
    g.model.init_from = sft_out["model_dir"]
    rl_out = grpo.run(g)
    row = rl_out["history"][0]
    for key in ("reward/total", "kl", "loss", "completion_length"):
        assert np.isfinite(row[key]), key
    policy = orbax_io.restore(rl_out["model_dir"])
    assert policy.config.model_type == "qwen3_vl"

    style = synth.shapes_style(synth.default_config().synth)
    tsv = demo.write_eval_tsv(str(tmp_path / "eval" / "shapes.tsv"), 4, 56, 0, style)
    processor = loading.load_processor(data["tokenizer"], min_pixels=56 * 56, max_pixels=64 * 64)
    settings = robust.Settings(max_new_tokens=4, batch_size=4, prompt_buckets=(256,), patch_buckets=(16,),
                               eval_protocol="indexed")
    summaries, predictions = robust.evaluate_model("qwen3_vl_grpo", policy, processor,
                                                   [robust.synthetic_benchmark(tsv, ["clean", "50%"])], settings)
    assert len(predictions) == 8 and set(summaries) == {"shapes"}
    assert all(p["problem"] is None and isinstance(p["output"], str) for p in predictions)


def test_packed_sft_on_a_random_qwen3_vl(data, tmp_path):
    c = sft_data.tiny_sft_config(data, tmp_path / "packed", steps=2)
    c.model.preset = "qwen3_vl_tiny"
    # rows of 1536 tokens, four 16-patch image slots: three or four of the 400-680-token examples per row
    c.data.seq_len, c.data.packing, c.data.image_slots, c.data.patch_bucket = 1536, True, 4, 64
    out = sft.run(c)
    assert len(out["losses"]) == 2 and np.isfinite(out["losses"]).all()
    rows = [json.loads(line) for line in open(tmp_path / "packed" / "logs" / "metrics.jsonl")]
    assert all(r["examples"] >= 8 and r["tokens/padded"] == 4 * 1536 and r["tokens/padding_fraction"] < 0.3
               for r in rows), rows
