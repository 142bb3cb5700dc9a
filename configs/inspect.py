"""Print a checkpoint's layout, stored dtype, files (shards, tokenizer, processor, generation config), model config
and parameter counts (HF directory, orbax model or training checkpoint folder); or, for a dataset (TFDS folder or
synth output), its token-length histograms, padding at seq_len and examples per step with and without packing.

python -m robust_r1_jax.main --config=configs/inspect.py --config.inspect.path=/path/to/checkpoint
python -m robust_r1_jax.main --config=configs/inspect.py --config.inspect.path=DATASET --config.inspect.tokenizer=DIR
"""
from robust_r1_jax.data.stats import default_config


def get_config():
    return default_config()
