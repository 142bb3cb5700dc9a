"""The paper's SFT stage (configs/sft_qwen2_5_vl_3b.py) on Qwen2.5-VL-7B-Instruct from a local Hugging Face checkpoint.

Same recipe as 3B: vision tower and merger frozen, the language model fully trained, bf16 compute with fp32 master
weights and AdamW moments, 2 epochs of 2.5K chains; examples packed (as for 3B) into a global batch of 16 rows x 2048
tokens, up to three images a row (155 steps).

    python -m robust_r1_jax.main --config=configs/sft_qwen2_5_vl_7b.py:8xh100 \\
        --config.model.init_from=/models/Qwen2.5-VL-7B-Instruct \\
        --config.data.dataset_dir=/data/robust_r1_tfds --config.workdir=/runs/sft_7b

7B (SPEC §5: 28 layers x 3584, 28 / 4 heads, untied 152,064-token head) has 7.62B language parameters and 0.68B in
the vision tower: fp32 weights, gradients and two Adam moments are 7.62B x 16 B = 122 GB, plus 2.7 GB of frozen
vision, so the states alone need at least two 80 GB devices; every variant shards them over all its devices
(mesh data 1, fsdp = devices, tensor 1). ``init_from`` must hold a 7B model: a 3B folder under this recipe (or
a 7B one under the 3B recipe) stops before loading with one line naming the recipe to use.

Scale variants (``--config=configs/sft_qwen2_5_vl_7b.py:VARIANT``, as for 3B; the mesh, the workdir and the remat
policy change, nothing else):
  v5p16    v5p-16: 8 chips (2 hosts) x 95 GB, 2 sequences per chip, remat "dots"
  v6e16    v6e-16: 16 chips (4 hosts) x 32 GB, 1 sequence per chip, remat "dots"
  8xh100   one node of 8 x H100 80 GB, 2 sequences per GPU, remat "dots"

Per-chip memory as the TPU compiler reports it (configs/aot.py, WORKSPACE.md "Scale configs" has the figures) and
as the pre-load check (train/memory.py) estimates it before any weights are read:
  7B states per chip: 124.6 GB / 8 = 15.6 GB (v5p-16, 8 x H100), / 16 = 7.8 GB (v6e-16); remat "dots" keeps the
  projection outputs and layer input, 28 x (4 x 3584 + 2 x 18944 + 2 x 512) bf16 = 3.0 MB per token: 12.3 GB for
  2 sequences of 2048 tokens, 6.2 GB for one; the cross-entropy chunk of 512 tokens (3 x seqs x 512 x 152,064 x
  4 B) 1.9 / 0.9 GB.
"""

import os

from robust_r1_jax.aot import load_recipe

# variant -> devices on the fsdp axis; "" is the recipe on whatever is there.
FSDP = {"": -1, "v5p16": 8, "v6e16": 16, "8xh100": 8}
# the paper's settings, kept from the 3B recipe (its plain variant)
PAPER_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_qwen2_5_vl_3b.py")


def get_config(variant: str = ""):
    if variant not in FSDP:
        raise ValueError(f"unknown variant {variant!r}; this config knows {', '.join(v for v in FSDP if v)}")
    c = load_recipe(PAPER_RECIPE)
    c.workdir = "runs/sft_qwen2_5_vl_7b" + (f"_{variant}" if variant else "")
    c.model.preset = "7b"   # init_from must hold a 7B model (checked before loading)
    c.model.remat = "dots"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, FSDP[variant], 1
    # packed like the 3B recipe, but into the 16 rows of 2048 tokens the compiler's figures below were taken at
    # (v6e-16's 16 chips cannot split the 3B recipe's 8 rows of 4096): 2.02 examples per row, 21% padding
    # (one per row was 60%), ~32 examples per step
    c.data.global_batch_size, c.data.seq_len = 16, 2048
    c.data.image_slots, c.data.patch_bucket = 3, 3 * 1024
    c.train.steps = 155             # 2 epochs of 2.5K chains at 2.02 packed examples per row, 16 rows per step
    return c
