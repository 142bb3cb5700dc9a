"""The paper's SFT stage on Qwen2.5-VL-3B-Instruct from a local Hugging Face checkpoint.

Vision tower and merger frozen, the language model fully trained (SPEC §1); bf16 compute with fp32 master
weights and AdamW moments; 2.5K chains (25% of the 10K A-OKVQA train split, SPEC §2) for two epochs.

    python -m robust_r1_jax.main --config=configs/sft_qwen2_5_vl_3b.py \\
        --config.model.init_from=/models/Qwen2.5-VL-3B-Instruct \\
        --config.data.dataset_dir=/data/robust_r1_tfds --config.workdir=/runs/sft_3b

Memory on one 80 GB GPU: 3.09B trained parameters x 16 bytes (fp32 weights, grads, two Adam moments) is
49 GB, so a single H100 fits with remat "dots"; on 8 chips use fsdp=8 (see WORKSPACE.md for mesh choices).

Scale variants (big_vision style, ``--config=configs/sft_qwen2_5_vl_3b.py:VARIANT``; the text after the colon is
``get_config``'s argument): the recipe unchanged except for the mesh, the workdir and what the memory of the target
needs (the tables below; WORKSPACE.md "Scale configs" sums them up).

--------------------------------------------------------------------------------------------------------------------
The paper's 3B SFT stage on one Cloud TPU host: the variants `v5p8` and `v6e8`.

Slices assumed (each is ONE host, so one process and no coordinator; a JAX device is one chip):
  v5p-8   4 chips (8 TensorCores, two per chip), 95 GB HBM per chip    --config=configs/sft_qwen2_5_vl_3b.py:v5p8
  v6e-8   8 chips, 32 GB HBM per chip                                   --config=configs/sft_qwen2_5_vl_3b.py:v6e8

    launch/tpu_pod.sh --name r1 --zone us-east5-a --accelerator-type v5p-8 --version v2-alpha-tpuv5 \
        --config configs/sft_qwen2_5_vl_3b.py:v5p8 --workdir runs/sft_3b \
        --config-args "--config.model.init_from=/data/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/tfds"

Mesh (data 1, fsdp = chips, tensor 1): every parameter, gradient and Adam moment is split over all chips;
tensor parallelism buys nothing at this size (2 KV heads cap it at 2). Examples are packed (data/packing.py): a
global batch of 8 rows of 4096 tokens, ~4.77 examples of SPEC §8's 644-974 tokens per row (6% padding; one
example per 2048-token row was 60%), 2 epochs of 2.5K chains = 131 steps, 8 / chips rows per chip, no gradient
accumulation. The compiler's figures for the packed step: v5p-8 64.2 of 95 GiB per chip (remat "none"), v6e-8
15.6 of 32 GiB (remat "dots"); XLA's cost model on v5p-8: 57.8% MFU, 54.5% on real tokens; on v6e-8 (sliced
prefetches off, the only v6e pricing with memory space assignment) 21.0% MFU, 19.8% on real tokens (WORKSPACE.md).
The sizing below was made for the former unpacked batch of 16 sequences of 2048 tokens (the same tokens per
chip; the compiler's packed figures above are within 1 GiB of the unpacked ones).
Memory per chip, estimated (GB = 1e9 bytes):                                  v5p-8 (4 seqs)   v6e-8 (2 seqs)
  trained LM 3.086B x 16 B (fp32 weights, grads, two Adam moments) = 49.4 / chips      12.3             6.2
  frozen vision 0.669B x 4 B (fp32) = 2.7 / chips                                       0.7             0.3
  remat "dots": per token and layer the projection outputs (q, k, v, o, gate, up,
    down = 28,672 values) and the layer input (2,048), bf16, 36 layers = 2.21 MB        18.1             9.1
  backward of one layer, XLA attention (fp32 scores, probabilities, their
    gradient): 3 x seqs x 16 heads x 2048^2 x 4 B                                        3.2             1.6
  cross-entropy chunk of 512 tokens: 3 x seqs x 512 x 151,936 x 4 B                      3.7             1.9
  total                                                                             ~38 of 95       ~19 of 32
The TPU compiler's own figure for v5p-8 (configs/aot.py; splash attention, scanned layers, sharded moments):
30.5 GiB per chip with "dots". That headroom buys remat "none" on v5p-8: 64.1 of 95 GiB, and XLA's cost model
(conservative, attention costed on the XLA path) goes from 44.4% to 48.7% MFU, so the v5p8 variant keeps every
activation. v6e-8's 32 GiB chips keep "dots": 15.5 of 32 GiB per chip by the aot report (remat "none" would need
roughly 13.5 GiB more per sequence, which does not fit).

--------------------------------------------------------------------------------------------------------------------
The paper's 3B SFT stage on one node of 8 x H100 80 GB: the variant `8xh100` (the paper's 8 GPUs).

One process drives the node's 8 GPUs (launch/slurm_gpu.sbatch runs one process per node):

    sbatch --nodes=1 launch/slurm_gpu.sbatch configs/sft_qwen2_5_vl_3b.py:8xh100 \
        --config.model.init_from=/models/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/tfds \
        --config.workdir=/shared/runs/sft_3b

Mesh (data 1, fsdp 8, tensor 1): parameters, gradients and Adam moments split over the 8 GPUs (NVLink makes
the per-layer all-gathers cheap); keeping all 52 GB of states on every GPU would leave too little room. On more
nodes set --config.mesh.data=<nodes> (fsdp stays within a node). Global batch 16 sequences of 2048 tokens (the
recipe), 2 per GPU, no gradient accumulation. Memory per GPU, estimated (GB = 1e9 bytes):
  trained LM 3.086B x 16 B (fp32 weights, grads, two Adam moments) = 49.4 / 8            6.2
  frozen vision 0.669B x 4 B (fp32) = 2.7 / 8                                             0.3
  remat "dots": projection outputs and layer input, 30,720 bf16 values per token and
    layer, 36 layers = 2.21 MB per token, x 2 x 2048 tokens                               9.1
  attention: cuDNN flash kernel ("auto" on GPU in bf16), no score matrices                ~0
  cross-entropy chunk of 512 tokens: 3 x 2 x 512 x 151,936 x 4 B                         1.9
  total                                                                              ~18 of 80
The headroom would also take remat "none" (every activation kept, roughly twice the "dots" figure) for fewer
recomputed matmuls; "dots" is the setting measured against the peer baseline (SPEC §7).
"""
from robust_r1_jax.train.sft import default_config

# variant -> devices on the fsdp axis (one host each, so one process); "" is the recipe on whatever is there.
FSDP = {"": -1, "v5p8": 4, "v6e8": 8, "8xh100": 8}
# what each layer keeps for the backward pass, from the aot report (see above); "dots" elsewhere
REMAT = {"v5p8": "none"}


def get_config(variant: str = ""):
    if variant not in FSDP:
        raise ValueError(f"unknown variant {variant!r}; this config knows {', '.join(v for v in FSDP if v)}")
    c = default_config()
    c.workdir = "runs/sft_qwen2_5_vl_3b" + (f"_{variant}" if variant else "")
    c.model.preset = "3b"
    c.model.init_from = ""  # required: a local Qwen2.5-VL-3B-Instruct directory
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat, c.model.attention_impl = REMAT.get(variant, "dots"), "auto"
    c.model.scan_layers = True      # one scanned layer body: the compile does not grow with depth
    # packed (data/packing.py): whole examples first-fit into 4096-token rows of up to five images; at SPEC §8's
    # rows (644-974 tokens) 4.77 examples per row, 6% padding (one per 2048-token row was 60%), ~38 per step
    c.data.packing = True
    c.data.global_batch_size = 8
    c.data.seq_len = 4096
    c.data.image_slots = 5
    c.data.patch_bucket = 5 * 1024  # five 448 x 448 images: 32 x 32 patches, 256 image tokens each
    c.data.max_pixels = 448 * 448
    c.data.worker_count = 8
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, FSDP[variant], 1
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 10
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.train.steps = 131             # 2 epochs of 2.5K chains at 4.77 packed examples per row, 8 rows per step
    c.train.freeze = ("^visual\\.",)
    c.train.ce_chunk = 512
    c.train.checkpoint_every = 50
    return c
