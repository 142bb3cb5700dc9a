"""A small shapes dataset and a demo tokenizer for trainer tests (built once per session)."""
import os

from robust_r1_jax.data import synth, tfds_builder
from robust_r1_jax.data.tokenizer import train_demo_tokenizer


def build(root: str, num_train: int = 24, image_size: int = 56, vocab_size: int = 512) -> dict:
    cfg = synth.default_config()
    cfg.workdir = os.path.join(root, "synth")
    cfg.synth.num_train = num_train
    cfg.synth.num_validation = 8
    cfg.synth.image_size = image_size
    cfg.synth.contact_sheet_size = 2
    summary = synth.run(cfg)
    examples = tfds_builder.read_examples(summary["dataset_dir"], "train", decode_images=False)
    from robust_r1_jax.data import chains
    texts = [e["chain"] for e in examples] + [chains.format_prompt(e["question"], e["options"]) for e in examples]
    tok_dir = os.path.join(root, "tokenizer")
    train_demo_tokenizer(texts, tok_dir, vocab_size=vocab_size)
    return dict(dataset_dir=summary["dataset_dir"], tokenizer=tok_dir)
