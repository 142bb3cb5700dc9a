"""Convert a checkpoint: a Hugging Face directory -> orbax, or an orbax model checkpoint -> Hugging Face.

python -m robust_r1_jax.main --config=configs/convert.py \
    --config.convert.src=/path/Qwen2.5-VL-3B-Instruct --config.convert.dst=/path/qwen3b_orbax
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "convert"
    config.convert = ml_collections.ConfigDict(dict(src="", dst="", dtype="float32"))
    return config
