"""Print a checkpoint's layout, stored dtype, files (shards, tokenizer, processor, generation config), model config
and parameter counts (HF directory, orbax model or training checkpoint folder).

python -m robust_r1_jax.main --config=configs/inspect.py --config.inspect.path=/path/to/checkpoint
"""
from robust_r1_jax.model.convert import default_inspect_config


def get_config():
    return default_inspect_config()
