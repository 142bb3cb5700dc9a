"""The embedded default: ``python -m robust_r1_jax.main --config=configs/demo.py`` (no downloads, CPU-sized).

Synthesises shapes VQA with degradations and chains, trains a tokenizer, SFTs a small Qwen2.5-VL, runs GRPO,
evaluates both on held-out degraded images and writes runs/demo/report.md.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.mode = "demo"
    c.workdir = "runs/demo"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(preset="demo"))
    c.data = ml_collections.ConfigDict(dict(num_train=480, num_validation=64, image_size=56, min_degradations=1,
                                            max_degradations=3, vocab_size=2048))
    c.sft = ml_collections.ConfigDict(dict(steps=150, batch_size=8, learning_rate=2e-3, warmup_steps=10))
    c.rl = ml_collections.ConfigDict(dict(steps=20, batch_size=4, num_samples=4, learning_rate=2e-5,
                                          warmup_steps=0, beta=0.04, reward_variant="paper"))
    c.eval = ml_collections.ConfigDict(dict(num_examples=64, batch_size=32, tsv_rows=48))
    return c
