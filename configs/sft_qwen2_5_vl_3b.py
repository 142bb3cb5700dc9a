"""The paper's SFT stage on Qwen2.5-VL-3B-Instruct from a local Hugging Face checkpoint.

Vision tower and merger frozen, the language model fully trained (SPEC §1); bf16 compute with fp32 master
weights and AdamW moments; 2.5K chains (25% of the 10K A-OKVQA train split, SPEC §2) for two epochs.

    python -m robust_r1_jax.main --config=configs/sft_qwen2_5_vl_3b.py \
        --config.model.init_from=/models/Qwen2.5-VL-3B-Instruct \
        --config.data.dataset_dir=/data/robust_r1_tfds --config.workdir=/runs/sft_3b

Memory on one 80 GB GPU: 3.09B trained parameters x 16 bytes (fp32 weights, grads, two Adam moments) is
49 GB, so a single H100 fits with remat "dots"; on 8 chips use fsdp=8 (see WORKSPACE.md for mesh choices).
"""
from robust_r1_jax.train.sft import default_config


def get_config():
    c = default_config()
    c.workdir = "runs/sft_qwen2_5_vl_3b"
    c.model.preset = "3b"
    c.model.init_from = ""  # required: a local Qwen2.5-VL-3B-Instruct directory
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat, c.model.attention_impl = "dots", "auto"
    c.data.global_batch_size = 16
    c.data.seq_len = 2048
    c.data.patch_bucket = 1024      # one 448 x 448 image: 32 x 32 patches, 256 image tokens
    c.data.max_pixels = 448 * 448
    c.data.worker_count = 8
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 10
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.train.steps = 2 * 2500 // 16
    c.train.freeze = ("^visual\\.",)
    c.train.ce_chunk = 512
    c.train.checkpoint_every = 50
    return c
