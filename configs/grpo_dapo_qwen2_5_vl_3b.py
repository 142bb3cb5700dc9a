"""A DAPO-style GRPO stage on Qwen2.5-VL-3B (Yu et al. 2025, arXiv:2503.14476): the paper's recipe
(configs/grpo_qwen2_5_vl_3b.py, SPEC §4) with DAPO's four changes, for comparing against it. Not what Robust-R1 ran.

- clip-higher: ε_low 0.2, ε_high 0.28 (DAPO §3.1);
- dynamic sampling: 2 x 16 prompts drawn per step, the first 16 groups whose rewards differ are trained on, weight-0
  padding groups when fewer qualify, ``dynamic_sampling/kept_fraction`` logged (§3.2; DAPO resamples until the batch
  is full, which static shapes cannot: ``oversample`` bounds it and the padding says when it fell short);
- token-level loss: ``loss_aggregation="token_mean"`` (§3.3);
- soft overlong punishment over the last 512 of the 2048 tokens (§3.4; DAPO used 4096 of 20480, 20%: a quarter here
  since Robust-R1's chains are much shorter than the budget);
- no KL term (β = 0), as DAPO.

The rollout costs twice the paper's (32 prompts x 8 samples per step); the update sees the same 128 rows. The scale
variants are the paper recipe's (``--config=configs/grpo_dapo_qwen2_5_vl_3b.py:v5p8``, ``:v6e8``, ``:8xh100``).
Dr. GRPO and GSPO are overrides of the paper recipe (WORKSPACE.md "GRPO").

    python -m robust_r1_jax.main --config=configs/grpo_dapo_qwen2_5_vl_3b.py \\
        --config.model.init_from=runs/sft_qwen2_5_vl_3b/model \\
        --config.data.tokenizer=/models/Qwen2.5-VL-3B-Instruct --config.data.dataset_dir=/data/robust_r1_tfds
"""
import importlib.util
import os


def _paper_recipe():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_qwen2_5_vl_3b.py")
    spec = importlib.util.spec_from_file_location("grpo_qwen2_5_vl_3b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(variant: str = ""):
    c = _paper_recipe().get_config(variant)
    c.workdir = c.workdir.replace("runs/grpo_", "runs/grpo_dapo_", 1)
    c.grpo.epsilon_low, c.grpo.epsilon_high = 0.2, 0.28
    c.grpo.dynamic_sampling, c.grpo.oversample = True, 2
    c.grpo.loss_aggregation = "token_mean"
    c.grpo.overlong, c.grpo.overlong_buffer, c.grpo.overlong_penalty_factor = "soft_penalty", 512, 1.0
    c.grpo.beta = 0.0
    return c
