"""The paper's GRPO stage (configs/grpo_qwen2_5_vl_3b.py, SPEC §4) on Qwen2.5-VL-7B from its SFT model.

Same recipe as 3B: G = 8 samples per prompt at temperature 1.0, completions up to 2048 tokens, clipped ratio
[0.8, 1.2], k3 KL to the frozen SFT model with beta 0.04, lr 1e-6, 16 prompts x 8 samples = 128 rows per step
(~470 steps), vision frozen, bf16 compute with fp32 master weights.

    python -m robust_r1_jax.main --config=configs/grpo_qwen2_5_vl_7b.py:8xh100 \\
        --config.model.init_from=/runs/sft_7b/model --config.data.tokenizer=/models/Qwen2.5-VL-7B-Instruct \\
        --config.data.dataset_dir=/data/robust_r1_tfds --config.workdir=/runs/grpo_7b

Memory: the policy's fp32 weights, gradients and Adam moments (7.62B x 16 B = 122 GB), the fp32 reference copy
(30.5 GB) and the frozen vision tower (2.7 GB) are 155 GB of states, sharded over every device (mesh data 1,
fsdp = devices, tensor 1). The learner update holds, per row of 512 + 2048 tokens, the layer inputs of remat
"full" (28 x 3584 bf16 = 200 KB per token) and one layer's recomputed activations, and the log-prob chunk
(3 x rows x 256 x 152,064 x 4 B): 128 rows fit where each device takes at most 16 of them (GRPO has no gradient
accumulation), so the smallest slices are 8 chips of 95 GB or 16 of 32 GB. ``init_from`` must hold a 7B model
(the recipe stops with one line otherwise).

Scale variants (``--config=configs/grpo_qwen2_5_vl_7b.py:VARIANT``; mesh, workdir, nothing else):
  v5p16    v5p-16: 8 chips (2 hosts) x 95 GB, 16 rows per chip
  v6e16    v6e-16: 16 chips (4 hosts) x 32 GB, 8 rows per chip
  8xh100   one node of 8 x H100 80 GB, 16 rows per GPU
Per-chip figures of the TPU compiler (configs/aot.py) are in WORKSPACE.md "Scale configs".
"""

import os

from robust_r1_jax.aot import load_recipe

# variant -> devices on the fsdp axis; "" is the recipe on whatever is there.
FSDP = {"": -1, "v5p16": 8, "v6e16": 16, "8xh100": 8}
# the paper's settings, kept from the 3B recipe (its plain variant)
PAPER_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_qwen2_5_vl_3b.py")


def get_config(variant: str = ""):
    if variant not in FSDP:
        raise ValueError(f"unknown variant {variant!r}; this config knows {', '.join(v for v in FSDP if v)}")
    c = load_recipe(PAPER_RECIPE)
    c.workdir = "runs/grpo_qwen2_5_vl_7b" + (f"_{variant}" if variant else "")
    c.model.preset = "7b"   # init_from must hold a 7B model (checked before loading)
    c.model.remat = "full"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, FSDP[variant], 1
    return c
