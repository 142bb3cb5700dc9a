"""The paper's 3B GRPO stage (configs/grpo_qwen2_5_vl_3b.py) on one node of 8 x H100 80 GB.

One process drives the node's 8 GPUs (launch/slurm_gpu.sbatch runs one process per node):

    sbatch --nodes=1 launch/slurm_gpu.sbatch configs/grpo_qwen2_5_vl_3b_8xh100.py \\
        --config.model.init_from=/shared/runs/sft_3b/model --config.data.tokenizer=/models/Qwen2.5-VL-3B-Instruct \\
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
import importlib.util
import os

import ml_collections

GPUS = 8


def _recipe() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_qwen2_5_vl_3b.py")
    spec = importlib.util.spec_from_file_location("grpo_qwen2_5_vl_3b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config() -> ml_collections.ConfigDict:
    c = _recipe()
    c.workdir = "runs/grpo_qwen2_5_vl_3b_8xh100"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, GPUS, 1
    c.data.global_batch_size = 16   # prompts per step; x G = 128 completions
    c.data.seq_len = 512
    c.grpo.num_samples = 8
    c.sampling.max_new_tokens = 2048
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat, c.model.attention_impl = "full", "auto"
    c.grpo.logprob_chunk = 256
    return c
