"""A small shapes dataset and a demo tokenizer for trainer tests (built once per session), and the tiny SFT and
GRPO configs that train on it."""
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


def _tiny(c, data: dict, workdir, steps: int, total_steps: int, train: dict):
    c.workdir = str(workdir)
    c.data.dataset_dir, c.data.tokenizer = data["dataset_dir"], data["tokenizer"]
    c.optim.learning_rate, c.optim.total_steps = 1e-3, total_steps
    c.train.steps, c.train.checkpoint_every, c.train.log_every = steps, 1, 1
    for key, value in train.items():
        c.train[key] = value
    return c


def tiny_sft_config(data: dict, workdir, steps: int, total_steps: int = 5, **train):
    """SFT of the tiny preset on ``build``'s data: 4 rows of 384 tokens, a checkpoint every step unless ``train``
    says otherwise (``train`` sets ``config.train`` fields)."""
    from robust_r1_jax.train import sft
    c = sft.default_config()
    c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 4, 384, 16
    return _tiny(c, data, workdir, steps, total_steps, train)


def tiny_grpo_config(data: dict, workdir, steps: int, total_steps: int = 3, **train):
    """GRPO of the tiny preset on ``build``'s data: 2 prompts x 3 samples of 16 new tokens, nothing frozen."""
    from robust_r1_jax.rl import grpo
    c = grpo.default_config()
    c.data.global_batch_size, c.data.seq_len, c.data.patch_bucket = 2, 256, 16
    c.grpo.num_samples, c.sampling.max_new_tokens = 3, 16
    c.train.freeze = ()
    return _tiny(c, data, workdir, steps, total_steps, train)
