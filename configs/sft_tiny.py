"""SFT of the tiny preset on a dataset built with configs/synth.py (CPU-sized; the aot mode's default recipe).

python -m robust_r1_jax.main --config=configs/synth.py --config.workdir=runs/synth
python -m robust_r1_jax.main --config=configs/sft_tiny.py \
    --config.data.dataset_dir=runs/synth/tfds --config.data.tokenizer=runs/demo/tokenizer

``dataset_dir`` is synth's workdir (runs/synth), its data folder (runs/synth/tfds) or the versioned dataset folder
(runs/synth/tfds/robust_r1/1.0.0).
The tokenizer is the demo's; without a finished demo, a shrunk one writes one (and a tiny model) in about a
minute; then pass --config.data.tokenizer=runs/demo_small/tokenizer:

python -m robust_r1_jax.main --config=configs/demo.py --config.workdir=runs/demo_small \
    --config.synth.synth.num_train=64 --config.synth.synth.num_validation=8 --config.tokenizer.vocab_size=512 \
    --config.sft.train.steps=4 --config.rl.train.steps=0 --config.eval.num_examples=4 --config.eval.tsv_rows=4
"""
from robust_r1_jax.train.sft import default_config


def get_config():
    c = default_config()
    c.workdir = "runs/sft_tiny"
    c.data.global_batch_size = 8
    c.data.seq_len = 512
    c.data.patch_bucket = 64
    c.data.max_pixels = 112 * 112
    c.optim.learning_rate = 2e-3
    c.optim.warmup_steps = 10
    c.optim.min_lr_ratio = 0.1
    c.train.steps = 60
    c.train.freeze = ()  # a random-init tiny model has no pretrained vision tower to keep
    c.train.log_every = 10
    c.train.checkpoint_every = 20
    return c
