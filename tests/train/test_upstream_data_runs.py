"""Issue 22 end to end: the upstream RL jsonl as shipped (options numbered from 1, two images for some prompts, a
<TYPE> alias) built by synth, then tiny SFT and GRPO runs on it with two image slots and the upstream prompt."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))
import sft_data  # noqa: E402

from robust_r1_jax.data import chains, rows, synth, tfds_builder  # noqa: E402
from robust_r1_jax.data.pipeline import PipelineConfig  # noqa: E402
from robust_r1_jax.data.tokenizer import train_demo_tokenizer  # noqa: E402
from robust_r1_jax.model.processor import ImageProcessor, Processor, load_tokenizer  # noqa: E402
from robust_r1_jax.train import sft  # noqa: E402

SHAPES = ("circle", "square", "triangle", "star")


def _upstream_jsonl(root):
    os.makedirs(os.path.join(root, "train_images"))
    lines = []
    for i in range(12):
        names = [f"{i}a.png"] + ([f"{i}b.png"] if i % 2 else [])
        for k, name in enumerate(names):
            pixels = np.random.default_rng(10 * i + k).integers(0, 256, (56, 56, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, "train_images", name))
        human = "<image>" * len(names) + "Which shape is drawn?\n" + "\n".join(
            f"{n + 1}. {s}" for n, s in enumerate(SHAPES))
        chain = (f"<TYPE>gaussian noise(0.{i + 10}), lens blur(0.30)<TYPE_END>\n<INFLUENCE>grain<INFLUENCE_END>\n"
                 f"<REASONING>the outline is {SHAPES[i % 4]}<REASONING_END>\n<CONCLUSION>a {SHAPES[i % 4]}"
                 f"<CONCLUSION_END>\n<ANSWER>{i % 4 + 1}<ANSWER_END>")
        lines.append(json.dumps({"id": f"r{i}", "image": names[0] if len(names) == 1 else names,
                                 "conversations": [{"from": "human", "value": human},
                                                   {"from": "gpt", "value": chain}]}))
    path = os.path.join(root, "train.jsonl")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_sft_and_grpo_run_on_upstream_data_with_two_images_per_prompt(tmp_path):
    from robust_r1_jax.rl import grpo
    config = synth.default_config()
    config.workdir = str(tmp_path / "synth")
    config.synth.update(dict(source="robust_r1_jsonl", source_path=_upstream_jsonl(str(tmp_path)),
                             image_root=str(tmp_path / "train_images"), num_train=12, num_validation=0))
    summary = synth.run(config)
    assert summary["counts"]["train"] == 12 and summary["type_aliases_applied"] == {"gaussian noise -> noise": 12}
    examples = tfds_builder.read_examples(summary["dataset_dir"], "train", decode_images=False)
    assert sorted(len(e["extra_images"]) for e in examples) == [0] * 6 + [1] * 6
    texts = [e["chain"] for e in examples] + [e["prompt"] + chains.PROMPT_SUFFIX for e in examples]
    tokenizer = str(tmp_path / "tokenizer")
    train_demo_tokenizer(texts, tokenizer, vocab_size=1024)
    data = dict(dataset_dir=summary["dataset_dir"], tokenizer=tokenizer)
    processor = Processor(load_tokenizer(tokenizer), ImageProcessor())
    source = tfds_builder.data_source(summary["dataset_dir"], "train")
    builder = rows.SFTRow(source, processor, PipelineConfig(seq_len=384, patch_bucket=32, image_slots=2,
                                                            prompt_style="upstream"))
    for index in range(len(source)):  # every example is a real row (none became padding)
        row = builder.build(index, padding=False)
        used = (row["image_grid_thw"].prod(axis=1) > 0).sum()
        assert used == 1 + len(source[index]["extra_images"])
        assert (row["input_ids"] == processor.image_token_id).sum() == row["image_grid_thw"].prod(axis=1).sum() // 4
        learned = processor.tokenizer.decode(row["input_ids"][row["loss_mask"] == 1])
        assert chains.parse_chain(learned).answer == source[index]["prompt_answer"].decode()  # "1".."4"
    run = sft_data.tiny_sft_config(data, tmp_path / "sft", steps=2)
    run.data.image_slots, run.data.patch_bucket, run.data.prompt_style = 2, 32, "upstream"
    out = sft.run(run)
    assert len(out["losses"]) == 2 and np.isfinite(out["losses"]).all()
    rl = sft_data.tiny_grpo_config(data, tmp_path / "rl", steps=1)
    rl.data.image_slots, rl.data.patch_bucket, rl.data.prompt_style, rl.data.seq_len = 2, 32, "upstream", 512
    rl_out = grpo.run(rl)
    assert len(rl_out["history"]) == 1 and np.isfinite(rl_out["history"][0]["loss"])
