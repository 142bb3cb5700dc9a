"""The paper's GRPO stage on Qwen2.5-VL-3B from the SFT checkpoint (SPEC §4, as the reference run used it).

G = 8 samples per prompt at temperature 1.0, completions up to 2048 tokens; advantages (R - mean_G) /
(std_G + 1e-4) with torch's unbiased std; ratio clipped to [0.8, 1.2]; k3 KL to the frozen SFT model with
beta = 0.04; loss = mean over sequences of the token mean; lr 1e-6; one epoch over ~7.5K prompts at
16 prompts x 8 samples per optimizer step (~470 steps); vision frozen; bf16. Rewards: the paper's r_deg variant;
weights default to the released code's (all four, weight 1); the paper's R = r_deg + r_len is
``--config.rewards.accuracy=0 --config.rewards.format=0``.

    python -m robust_r1_jax.main --config=configs/grpo_qwen2_5_vl_3b.py \
        --config.model.init_from=runs/sft_qwen2_5_vl_3b/model \
        --config.data.tokenizer=/models/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/robust_r1_tfds
"""
from robust_r1_jax.rl.grpo import default_config


def get_config():
    c = default_config()
    c.workdir = "runs/grpo_qwen2_5_vl_3b"
    c.model.preset = "3b"
    c.model.init_from = ""  # required: the SFT model (orbax model dir, training checkpoint or HF dir)
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat, c.model.attention_impl = "dots", "auto"
    c.data.tokenizer = ""   # required: the Qwen2.5-VL tokenizer directory
    c.data.global_batch_size = 16
    c.data.seq_len = 512            # prompt bucket: 256 image tokens + question + instruction
    c.data.patch_bucket = 1024
    c.data.max_pixels = 448 * 448
    c.data.worker_count = 4
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.grpo.num_samples = 8
    c.grpo.temperature = 1.0
    c.grpo.epsilon_low = c.grpo.epsilon_high = 0.2
    c.grpo.beta = 0.04
    c.grpo.loss_aggregation = "sequence_mean"
    c.grpo.std_estimator = "unbiased"
    c.grpo.inner_iterations = 1
    c.grpo.logprob_chunk = 256
    c.sampling.max_new_tokens = 2048
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 1.0   # constant rate
    c.train.steps = 7500 // 16
    c.train.freeze = ("^visual\\.",)
    c.train.checkpoint_every = 50
    c.rewards.variant = "paper"
    return c
