"""A training run's exported model/ folder is complete: generate and eval read its tokenizer, image settings and
generation config from the folder alone, without a tokenizer flag."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import sft_data  # noqa: E402

from robust_r1_jax.model import loading  # noqa: E402
from robust_r1_jax.train import sft  # noqa: E402


@pytest.mark.slow
def test_the_exported_model_folder_carries_tokenizer_and_configs(tmp_path, capsys):
    data = sft_data.build(str(tmp_path / "data"), num_train=8, vocab_size=1024)
    c = sft.default_config()
    c.workdir = str(tmp_path / "run")
    c.data.dataset_dir = os.path.dirname(os.path.dirname(data["dataset_dir"]))  # the data folder above 1.0.0
    c.data.tokenizer = data["tokenizer"]
    c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 4, 384, 16
    c.data.max_pixels = 28 * 28 * 16
    c.train.steps, c.train.checkpoint_every = 1, 1
    model_dir = sft.run(c)["model_dir"]
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"sft: finished step 1; model in {model_dir} (float32); logs in {c.workdir}/logs (metrics.jsonl, curves.png, "
        f"TensorBoard); checkpoints in {c.workdir}/checkpoints")
    held = set(os.listdir(model_dir))
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json",
            "model_config.json", "params"} <= held
    processor = loading.load_processor(model_dir)  # what generate / eval do when no tokenizer is named
    assert processor.image_processor.max_pixels == 28 * 28 * 16
    loading.check_pairing(loading.load_model(model_dir), processor)
    generation = json.load(open(os.path.join(model_dir, "generation_config.json")))
    assert generation["do_sample"] is False and generation["eos_token_id"][0] == processor.im_end_id
