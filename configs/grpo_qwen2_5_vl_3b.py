"""The paper's GRPO stage on Qwen2.5-VL-3B from the SFT checkpoint (SPEC §4, as the reference run used it).

G = 8 samples per prompt at temperature 1.0, completions up to 2048 tokens; advantages (R - mean_G) /
(std_G + 1e-4) with torch's unbiased std; ratio clipped to [0.8, 1.2]; k3 KL to the frozen SFT model with
beta = 0.04; loss = mean over sequences of the token mean; lr 1e-6; one epoch over ~7.5K prompts at
16 prompts x 8 samples per optimizer step (~470 steps); vision frozen; bf16. Rewards: the paper's r_deg variant;
weights default to the released code's (all four, weight 1); the paper's R = r_deg + r_len is
``--config.rewards.accuracy=0 --config.rewards.format=0``.

    python -m robust_r1_jax.main --config=configs/grpo_qwen2_5_vl_3b.py \\
        --config.model.init_from=runs/sft_qwen2_5_vl_3b/model \\
        --config.data.tokenizer=/models/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/robust_r1_tfds

Scale variants (big_vision style, ``--config=configs/grpo_qwen2_5_vl_3b.py:VARIANT``; the text after the colon is
``get_config``'s argument): the recipe unchanged except for the mesh, the workdir and what the memory of the target
needs (the tables below; WORKSPACE.md "Scale configs" sums them up).

--------------------------------------------------------------------------------------------------------------------
The paper's 3B GRPO stage on one Cloud TPU host: the variants `v5p8` and `v6e8`.

Slices assumed (each is ONE host, so one process and no coordinator; a JAX device is one chip):
  v5p-8   4 chips (8 TensorCores, two per chip), 95 GB HBM per chip   --config=configs/grpo_qwen2_5_vl_3b.py:v5p8
  v6e-8   8 chips, 32 GB HBM per chip                                  --config=configs/grpo_qwen2_5_vl_3b.py:v6e8

    launch/tpu_pod.sh --name r1 --zone us-east5-a --accelerator-type v5p-8 --version v2-alpha-tpuv5 \
        --config configs/grpo_qwen2_5_vl_3b.py:v5p8 --workdir runs/grpo_3b \
        --config-args "--config.model.init_from=runs/sft_3b/model \\
                       --config.data.tokenizer=/data/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/tfds"

(paths relative to the project folder on the host; the SFT run of configs/sft_qwen2_5_vl_3b.py:v5p8 on the same
slice leaves its model in runs/sft_3b/model.)

Mesh (data 1, fsdp = chips, tensor 1), as for SFT. One step: 16 prompts (a 512-token bucket) x G = 8 samples =
128 rows of 512 + 2048 tokens (SPEC §4), 128 / chips rows per chip, sampled, scored (old policy and reference)
and trained in one update. Memory per chip, estimated (GB = 1e9 bytes):                v5p-8 (32 rows)
  policy LM 3.086B x 16 B (fp32 weights, grads, Adam) + reference LM 3.086B x 4 B
    + frozen vision 0.669B x 4 B = 64.4 / chips                                                16.1
  rollout KV cache: 36 layers x (k, v) x 2 KV heads x 128 x 2 B = 36.9 KB per token,
    rows x 2560 tokens (freed before the update)                                                3.0
  update with remat "full" (only each layer's bf16 input is kept: 147 KB per token)            12.1
    ("dots" would keep 2.2 MB per token: 180 GB, which is why GRPO recomputes everything)
  backward of one layer, XLA attention: 3 x rows x 16 heads x 2560^2 x 4 B                     40.3
  log-prob chunk of 256 tokens: 3 x rows x 256 x 151,936 x 4 B (not at the same time)          14.9
  total: 16.1 + 12.1 + 40.3                                                                 ~69 of 95

v6e-8 (32 GB): these shape estimates (XLA attention materialising every score matrix) put 16 rows per chip with
2048-token completions at ~34 GB, and the slice used to cap completions at 1024. With splash attention, scanned
layers and sharded moments the TPU compiler's own figures (configs/aot.py, WORKSPACE.md "Scale configs") are, per
chip: rollout 9.4, scoring 12.3, update 23.9 of 32 GiB with SPEC §4's 2048 tokens, so every slice now samples 2048.
On v5p-8: rollout 17.9, scoring 23.1, update 48.7 of 95 GiB (the ~69 GB total above was the XLA-attention estimate).

--------------------------------------------------------------------------------------------------------------------
The paper's 3B GRPO stage on one node of 8 x H100 80 GB: the variant `8xh100`.

One process drives the node's 8 GPUs (launch/slurm_gpu.sbatch runs one process per node):

    sbatch --nodes=1 launch/slurm_gpu.sbatch configs/grpo_qwen2_5_vl_3b.py:8xh100 \
        --config.model.init_from=/shared/runs/sft_3b/model --config.data.tokenizer=/models/Qwen2.5-VL-3B-Instruct \
        --config.data.dataset_dir=/data/tfds --config.workdir=/shared/runs/grpo_3b

Mesh (data 1, fsdp 8, tensor 1). One step, exactly SPEC §4: 16 prompts (512-token bucket) x G = 8 samples =
128 rows of 512 + 2048 tokens, 16 rows per GPU, sampled, scored (old policy and reference) and trained in one
update. Memory per GPU, estimated (GB = 1e9 bytes):
  policy LM 3.086B x 16 B (fp32 weights, grads, Adam) + reference LM 3.086B x 4 B
    + frozen vision 0.669B x 4 B = 64.4 / 8                                                8.1
  rollout KV cache: 36.9 KB per token x 16 rows x 2560 tokens (freed before the update)    1.5
  update with remat "full" (each layer's bf16 input, 147 KB per token) x 16 x 2560         6.0
    ("dots" would keep 2.2 MB per token: 90 GB)
  attention: cuDNN flash kernel, no score matrices; one layer's MLP in the backward
    (gate, up, product and a gradient: 4 x 16 x 2560 x 11,008 x 2 B)                       3.6
  log-prob chunk of 256 tokens: 3 x 16 x 256 x 151,936 x 4 B (not at the same time)         7.5
  total: 8.1 + 6.0 + 7.5                                                               ~22 of 80
"""
from robust_r1_jax.rl.grpo import default_config

# variant -> devices on the fsdp axis (one host each, so one process); "" is the recipe on whatever is there.
FSDP = {"": -1, "v5p8": 4, "v6e8": 8, "8xh100": 8}


def get_config(variant: str = ""):
    if variant not in FSDP:
        raise ValueError(f"unknown variant {variant!r}; this config knows {', '.join(v for v in FSDP if v)}")
    c = default_config()
    c.workdir = "runs/grpo_qwen2_5_vl_3b" + (f"_{variant}" if variant else "")
    c.model.preset = "3b"
    c.model.init_from = ""  # required: the SFT model (orbax model dir, training checkpoint or HF dir)
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    # The scale targets recompute every layer: "dots" would keep 2.2 MB per token of the 82K-token update.
    c.model.remat, c.model.attention_impl = ("full" if variant else "dots"), "auto"
    c.model.scan_layers = True      # one scanned layer body: the compile does not grow with depth
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
    c.sampling.max_new_tokens = 2048   # SPEC §4, on every slice (v6e-8 fits it: see above)
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 1.0   # constant rate
    c.train.steps = 7500 // 16
    c.train.freeze = ("^visual\\.",)
    c.train.checkpoint_every = 50
    c.rewards.variant = "paper"
    if variant in ("v5p8", "v6e8"):
        # each chip's rows read the whole 6.2 GB bf16 copy per token: split over 2 chips (the 2 KV heads' limit)
        # the decode step reads half (WORKSPACE.md "Rollout at its roofline", XLA's TPU cost model at the (1024,
        # 300) profile: v6e-8 2.6 s of decode per rollout against 4.45 s replicated; v5p-8 5.47 s against 6.82 s,
        # the whole step 9.4 s against 10.7 s)
        c.rollout.layout, c.rollout.tensor_parallel = "tensor", 2
    return c
