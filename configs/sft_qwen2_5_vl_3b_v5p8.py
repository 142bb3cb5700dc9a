"""The paper's 3B SFT stage (configs/sft_qwen2_5_vl_3b.py) on one Cloud TPU host: v5p-8 (default) or v6e-8.

Slices assumed (each is ONE host, so one process and no coordinator; a JAX device is one chip):
  v5p-8   4 chips (8 TensorCores, two per chip), 95 GB HBM per chip    --config=configs/sft_qwen2_5_vl_3b_v5p8.py
  v6e-8   8 chips, 32 GB HBM per chip                                   --config=configs/sft_qwen2_5_vl_3b_v5p8.py:v6e-8

    launch/tpu_pod.sh --name r1 --zone us-east5-a --accelerator-type v5p-8 --version v2-alpha-tpuv5 \\
        --config configs/sft_qwen2_5_vl_3b_v5p8.py --workdir runs/sft_3b \\
        --config-args "--config.model.init_from=/data/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/tfds"

Mesh (data 1, fsdp = chips, tensor 1): every parameter, gradient and Adam moment is split over all chips;
tensor parallelism buys nothing at this size (2 KV heads cap it at 2). Global batch 16 sequences of 2048
tokens (the recipe: 2 epochs of 2.5K chains = 312 steps), 16 / chips per chip, no gradient accumulation.
Memory per chip, estimated (GB = 1e9 bytes):                                  v5p-8 (4 seqs)   v6e-8 (2 seqs)
  trained LM 3.086B x 16 B (fp32 weights, grads, two Adam moments) = 49.4 / chips      12.3             6.2
  frozen vision 0.669B x 4 B (fp32) = 2.7 / chips                                       0.7             0.3
  remat "dots": per token and layer the projection outputs (q, k, v, o, gate, up,
    down = 28,672 values) and the layer input (2,048), bf16, 36 layers = 2.21 MB        18.1             9.1
  backward of one layer, XLA attention (fp32 scores, probabilities, their
    gradient): 3 x seqs x 16 heads x 2048^2 x 4 B                                        3.2             1.6
  cross-entropy chunk of 512 tokens: 3 x seqs x 512 x 151,936 x 4 B                      3.7             1.9
  total                                                                             ~38 of 95       ~19 of 32
"""
import importlib.util
import os

import ml_collections

CHIPS = {"v5p-8": 4, "v6e-8": 8}


def _recipe() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_qwen2_5_vl_3b.py")
    spec = importlib.util.spec_from_file_location("sft_qwen2_5_vl_3b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(slice_name: str = "v5p-8") -> ml_collections.ConfigDict:
    if slice_name not in CHIPS:
        raise ValueError(f"unknown TPU slice {slice_name!r}; this config knows {', '.join(CHIPS)}")
    c = _recipe()
    c.workdir = f"runs/sft_qwen2_5_vl_3b_{slice_name.replace('-', '')}"
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, CHIPS[slice_name], 1
    c.data.global_batch_size = 16
    c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
    c.model.remat = "dots"
    c.train.grad_accum = 1
    c.train.ce_chunk = 512
    return c
