"""The paper's 3B GRPO stage (configs/grpo_qwen2_5_vl_3b.py) on one Cloud TPU host: v5p-8 (default) or v6e-8.

Slices assumed (each is ONE host, so one process and no coordinator; a JAX device is one chip):
  v5p-8   4 chips (8 TensorCores, two per chip), 95 GB HBM per chip   --config=configs/grpo_qwen2_5_vl_3b_v5p8.py
  v6e-8   8 chips, 32 GB HBM per chip                                  --config=configs/grpo_qwen2_5_vl_3b_v5p8.py:v6e-8

    launch/tpu_pod.sh --name r1 --zone us-east5-a --accelerator-type v5p-8 --version v2-alpha-tpuv5 \\
        --config configs/grpo_qwen2_5_vl_3b_v5p8.py --workdir runs/grpo_3b \\
        --config-args "--config.model.init_from=runs/sft_3b/model \\
                       --config.data.tokenizer=/data/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/tfds"

(paths relative to the project folder on the host; the SFT run of configs/sft_qwen2_5_vl_3b_v5p8.py on the same
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

v6e-8 (32 GB): with 2048-token completions 16 rows per chip need 8.1 + 6.0 + 20.1 = ~34 GB, more than the chip
has, because the XLA attention on TPU materialises every score matrix. So this slice caps completions at 1024
tokens, the one departure from SPEC §4 (a completion cut there earns no format or answer reward): 8.1 states
+ 3.6 kept inputs + max(7.3 attention, 7.5 log-prob chunk) = ~19 of 32 GB. Prompts per step stay at 16 x 8.
"""
import importlib.util
import os

import ml_collections

CHIPS = {"v5p-8": 4, "v6e-8": 8}
MAX_COMPLETION = {"v5p-8": 2048, "v6e-8": 1024}


def _recipe() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_qwen2_5_vl_3b.py")
    spec = importlib.util.spec_from_file_location("grpo_qwen2_5_vl_3b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(slice_name: str = "v5p-8") -> ml_collections.ConfigDict:
    if slice_name not in CHIPS:
        raise ValueError(f"unknown TPU slice {slice_name!r}; this config knows {', '.join(CHIPS)}")
    c = _recipe()
    c.workdir = f"runs/grpo_qwen2_5_vl_3b_{slice_name.replace('-', '')}"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, CHIPS[slice_name], 1
    c.data.global_batch_size = 16   # prompts per step; x G = 128 completions
    c.data.seq_len = 512
    c.grpo.num_samples = 8
    c.sampling.max_new_tokens = MAX_COMPLETION[slice_name]
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat = "full"
    c.grpo.logprob_chunk = 256
    return c
