"""The paper's 3B SFT stage (configs/sft_qwen2_5_vl_3b.py) on one node of 8 x H100 80 GB (the paper's 8 GPUs).

One process drives the node's 8 GPUs (launch/slurm_gpu.sbatch runs one process per node):

    sbatch --nodes=1 launch/slurm_gpu.sbatch configs/sft_qwen2_5_vl_3b_8xh100.py \\
        --config.model.init_from=/models/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/tfds \\
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
import importlib.util
import os

import ml_collections

GPUS = 8


def _recipe() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_qwen2_5_vl_3b.py")
    spec = importlib.util.spec_from_file_location("sft_qwen2_5_vl_3b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    c = _recipe()
    c.workdir = "runs/sft_qwen2_5_vl_3b_8xh100"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, GPUS, 1
    c.data.global_batch_size = 16
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat, c.model.attention_impl = "dots", "auto"
    c.train.grad_accum = 1
    c.train.ce_chunk = 512
    return c
