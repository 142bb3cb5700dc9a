"""Ahead-of-time proof of a recipe on a TPU slice, compiled on this machine (no TPU; needs libtpu).

    python -m robust_r1_jax.main --config=configs/aot.py \
        --config.recipe=configs/sft_qwen2_5_vl_3b.py:v5p8 --config.topology=v5p-8 --config.output=aot.json

Prints per program the compiler's per-chip memory and whether it fits, and XLA's cost-model time and MFU; exits 1
when a program does not fit. See robust_r1_jax/aot.py.
"""
from robust_r1_jax.aot import default_config


def get_config():
    c = default_config()
    c.recipe = "configs/sft_tiny.py"
    return c
