"""Convert a checkpoint: a Hugging Face directory -> orbax, or an orbax model (or training) checkpoint -> Hugging Face.

python -m robust_r1_jax.main --config=configs/convert.py \
    --config.convert.src=/path/Qwen2.5-VL-3B-Instruct --config.convert.dst=/path/qwen3b_orbax

The destination is a complete model folder (tokenizer, chat template, preprocessor and generation configs carried
over from the source; for a training checkpoint from the run's model/, data.tokenizer or model.init_from), stored
in the source's dtype unless --config.convert.dtype=float32 (or bfloat16) says otherwise.
"""
from robust_r1_jax.model.convert import default_config


def get_config():
    return default_config()
