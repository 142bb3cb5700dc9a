"""Convert a checkpoint: a Hugging Face directory -> orbax, or an orbax model (or training) checkpoint -> Hugging Face.

python -m robust_r1_jax.main --config=configs/convert.py \
    --config.convert.src=/path/Qwen2.5-VL-3B-Instruct --config.convert.dst=/path/qwen3b_orbax
"""
from robust_r1_jax.model.convert import default_config


def get_config():
    return default_config()
