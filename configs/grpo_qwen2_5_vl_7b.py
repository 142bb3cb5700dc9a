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
from robust_r1_jax.rl.grpo import default_config

FSDP = {"": -1, "v5p16": 8, "v6e16": 16, "8xh100": 8}


def get_config(variant: str = ""):
    if variant not in FSDP:
        raise ValueError(f"unknown variant {variant!r}; this config knows {', '.join(v for v in FSDP if v)}")
    c = default_config()
    c.workdir = "runs/grpo_qwen2_5_vl_7b" + (f"_{variant}" if variant else "")
    c.model.preset = "7b"
    c.model.init_from = ""  # required: the 7B SFT model (orbax model dir, training checkpoint or HF dir)
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat, c.model.attention_impl = "full", "auto"
    c.model.scan_layers = True
    c.data.tokenizer = ""   # required: the Qwen2.5-VL tokenizer directory
    c.data.global_batch_size = 16
    c.data.seq_len = 512            # prompt bucket: 256 image tokens + question + instruction
    c.data.patch_bucket = 1024
    c.data.max_pixels = 448 * 448
    c.data.worker_count = 4
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, FSDP[variant], 1
    c.grpo.num_samples = 8
    c.grpo.epsilon_low = c.grpo.epsilon_high = 0.2
    c.grpo.beta = 0.04
    c.grpo.loss_aggregation = "sequence_mean"
    c.grpo.std_estimator = "unbiased"
    c.grpo.inner_iterations = 1
    c.grpo.logprob_chunk = 256
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 2048
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 1.0
    c.train.steps = 7500 // 16
    c.train.freeze = ("^visual\\.",)
    c.train.checkpoint_every = 50
    c.rewards.variant = "paper"
    return c
