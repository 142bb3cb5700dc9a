"""The SFT recipe of configs/sft_qwen2_5_vl_3b.py on Qwen2.5-VL-7B-Instruct (untied head, 8.29B parameters).

7.6B trained parameters need ~122 GB for fp32 weights, gradients and Adam moments: shard them over at least
two 80 GB chips (fsdp) -- the default mesh puts every device on the fsdp axis.
"""
from robust_r1_jax.train.sft import default_config


def get_config():
    c = default_config()
    c.workdir = "runs/sft_qwen2_5_vl_7b"
    c.model.preset = "7b"
    c.model.init_from = ""  # required: a local Qwen2.5-VL-7B-Instruct directory
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat, c.model.attention_impl = "full", "auto"
    c.model.scan_layers = True      # one scanned layer body: the compile does not grow with depth
    # packed as the 3B recipe (configs/sft_qwen2_5_vl_3b.py): 8 rows of 4096 tokens, ~38 examples per step
    c.data.packing = True
    c.data.global_batch_size = 8
    c.data.seq_len = 4096
    c.data.image_slots = 5
    c.data.patch_bucket = 5 * 1024
    c.data.max_pixels = 448 * 448
    c.data.worker_count = 8
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 10
    c.optim.min_lr_ratio = 0.1
    c.train.steps = round(2 * 2500 / (8 * 4.76))   # 2 epochs of 2.5K chains at 4.76 examples per packed row
    c.train.freeze = ("^visual\\.",)
    c.train.ce_chunk = 512
    c.train.checkpoint_every = 50
    return c
