"""Print a checkpoint's model config and parameter counts (HF directory or orbax model checkpoint).

python -m robust_r1_jax.main --config=configs/inspect.py --config.inspect.path=/path/to/checkpoint
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "inspect"
    config.inspect = ml_collections.ConfigDict(dict(path=""))
    return config
