"""The paper's SFT stage (configs/sft_qwen2_5_vl_3b.py) on Qwen3-VL-4B-Instruct from a local Hugging Face folder.

The same method and data: vision tower, its merger and the DeepStack mergers frozen, the language model fully
trained; bf16 compute, fp32 master weights and AdamW moments; 2.5K chains for two epochs, packed as the 3B recipe
packs them: 8 rows of 4096 tokens per step, up to five images a row, 131 steps. Qwen3-VL cuts 16-px patches: one
448 x 448 image is 28 x 28 = 784 patches, 196 image tokens (each image slot's 1024 patches leave room for other
aspect ratios at the same pixel budget); the image settings come from the folder's ``preprocessor_config.json``, the
chat template from its ``chat_template.json``.

    python -m robust_r1_jax.main --config=configs/sft_qwen3_vl_4b.py:v5p8 \\
        --config.model.init_from=/models/Qwen3-VL-4B-Instruct \\
        --config.data.dataset_dir=/data/robust_r1_tfds --config.workdir=/runs/sft_qwen3_vl_4b

Qwen3-VL-4B (model/config.py ``qwen3_vl_4b``): 36 layers of width 2560, 32 query / 8 KV heads of 128, tied
embeddings; 4.02B language-model parameters, 0.41B in the tower and its mergers. Mixture-of-experts Qwen3-VL
models are not supported.

Variants (``--config=configs/sft_qwen3_vl_4b.py:VARIANT``), each one host: v5p-8 (4 chips, 95 GB HBM each) and
v6e-8 (8 chips, 32 GB each); mesh (data 1, fsdp = chips, tensor 1) as for the 3B recipe. Memory per chip,
estimated for the same tokens per chip as 2048-token sequences (GB = 1e9 bytes):  v5p-8 (4 seqs)   v6e-8 (2 seqs)
  trained LM 4.02B x 16 B (fp32 weights, grads, two Adam moments) = 64.3 / chips       16.1             8.0
  frozen vision 0.41B x 4 B = 1.6 / chips                                               0.4             0.2
  remat "dots": per token and layer q, k, v, o, gate, up, down (4096 + 2 x 1024 + 2560
    + 3 x 9728 = 37,888 values) and the layer input (2560), bf16, 36 layers = 2.9 MB    24.0            12.0
  cross-entropy chunk of 512 tokens: 3 x seqs x 512 x 151,936 x 4 B                      3.7             1.9
  total                                                                              ~44 of 95       ~22 of 32
The compiler's figures (configs/aot.py) are in WORKSPACE.md, "Scale configs".
"""
import os

from robust_r1_jax.aot import recipe_on_preset

VARIANTS = ("", "v5p8", "v6e8")
# the paper's settings and the slices' meshes, kept from the 3B recipe
PAPER_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_qwen2_5_vl_3b.py")


def get_config(variant: str = ""):
    c = recipe_on_preset(PAPER_RECIPE, variant, VARIANTS, "runs/sft_qwen3_vl_4b", "qwen3_vl_4b")
    c.model.remat = "dots"   # the 3B recipe keeps none on v5p-8; 4B needs dots there too
    return c
