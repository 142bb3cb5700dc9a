"""The paper's GRPO stage (configs/grpo_qwen2_5_vl_3b.py, SPEC §4) on Qwen3-VL-4B, from its SFT model.

The same method: 16 prompts x G = 8 samples of up to 2048 new tokens per step, the same rewards, clipping, KL and
constant 1e-6 rate; the vision tower and its mergers frozen. The sampler, the learner and the rewards run the
Qwen3-VL model unchanged (its DeepStack features are computed once per prompt and shared by the G samples).

    python -m robust_r1_jax.main --config=configs/grpo_qwen3_vl_4b.py:v5p8 \\
        --config.model.init_from=runs/sft_qwen3_vl_4b_v5p8/model \\
        --config.data.tokenizer=/models/Qwen3-VL-4B-Instruct --config.data.dataset_dir=/data/robust_r1_tfds

Variants as for SFT (v5p8: 4 chips, v6e8: 8 chips; fsdp over all). Memory per chip, estimated (GB = 1e9 bytes):
                                                                               v5p-8 (32 rows)  v6e-8 (16 rows)
  policy LM 4.02B x 16 B + reference LM 4.02B x 4 B + frozen vision 0.41B x 4 B
    = 82.0 / chips                                                                     20.5            10.3
  rollout KV cache: 36 layers x 2 x 8 heads x 128 x 2 B = 147 KB per token x rows
    x 2560 tokens (freed before the update)                                              12.1             6.0
  update, remat "full" (each layer's bf16 input, 184 KB per token) x rows x 2560         15.1             7.5
  log-prob chunk of 256 tokens: 3 x rows x 256 x 151,936 x 4 B                          15.0             7.5
  total (update): 20.5 + 15.1 + 15.0                                                 ~51 of 95       ~25 of 32
The compiler disagreed for v6e-8 with the whole batch in one backward pass (configs/aot.py, WORKSPACE.md "Qwen3-VL"):
the update peaked at 30.9 of 32 GiB, over the 85% bound (64-token log-prob chunks only reach 30.7). So v6e8 runs the
update in 2 micro-batches of whole prompt groups (grpo.update_microbatches = 2: 8 rows per chip at a time, the same
loss and update; WORKSPACE.md "GRPO"; 2 is the most its 2 prompt groups per chip allow): the pre-load estimate
(train/memory.py) falls from 26.6 to 20.1 GiB per chip (activations and log-prob chunk halved, plus a 1.9 GiB fp32
gradient accumulator), and with the 20% by which GRPO estimates ran under the compiler's figures, 24.1 GiB stays
under 85% of 32 GiB (27.2). To be proven by the aot mode (WORKSPACE.md "Qwen3-VL"). v5p-8 was not compiled yet.
"""
import os

from robust_r1_jax.aot import recipe_on_preset

VARIANTS = ("", "v5p8", "v6e8")
# the paper's settings and the slices' meshes, kept from the 3B recipe
PAPER_RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_qwen2_5_vl_3b.py")


def get_config(variant: str = ""):
    c = recipe_on_preset(PAPER_RECIPE, variant, VARIANTS, "runs/grpo_qwen3_vl_4b", "qwen3_vl_4b")
    if variant == "v6e8":
        c.grpo.update_microbatches = 2   # the update's 16 rows per chip as 2 x 8 (see above)
    return c
