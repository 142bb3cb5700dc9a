"""A CPU-sized GRPO run (a few steps, minutes) on the shrunk demo's SFT model, for trying the GRPO variants
(WORKSPACE.md "GRPO"). The 3B recipes (configs/grpo_qwen2_5_vl_3b.py, configs/grpo_dapo_qwen2_5_vl_3b.py) keep
their sizes whatever model they load: 16 prompts x 8 samples x 2048 new tokens never finish a step on a CPU.

First the model, tokenizer and dataset (about a minute; configs/sft_tiny.py's docstring):

python -m robust_r1_jax.main --config=configs/demo.py --config.workdir=runs/demo_small \
    --config.synth.synth.num_train=64 --config.synth.synth.num_validation=8 --config.tokenizer.vocab_size=512 \
    --config.sft.train.steps=4 --config.rl.train.steps=0 --config.eval.num_examples=4 --config.eval.tsv_rows=4

Then the reference run's settings (SPEC §4) or a variant family (``get_config``'s argument, after the colon):

python -m robust_r1_jax.main --config=configs/grpo_tiny.py            # GRPO as the paper ran it
python -m robust_r1_jax.main --config=configs/grpo_tiny.py:dapo       # configs/grpo_dapo_qwen2_5_vl_3b.py's changes
python -m robust_r1_jax.main --config=configs/grpo_tiny.py:dr_grpo    # sequence_sum_constant, scale_rewards none
python -m robust_r1_jax.main --config=configs/grpo_tiny.py:gspo       # sequence ratio, beta 0, inner_iterations 2

Each writes runs/grpo_tiny_<variant>/ (runs/grpo_tiny_paper/ for the reference; logs/metrics.jsonl); a finished workdir is resumed, so raise
``--config.train.steps`` or pick a new ``--config.workdir``. Another demo folder: ``--config.model.init_from``,
``--config.data.tokenizer``, ``--config.data.dataset_dir`` (the demo's ``data`` folder).
"""
import importlib.util
import os

from robust_r1_jax.rl.grpo import default_config

DEMO = "runs/demo_small"
MAX_NEW_TOKENS = 32


def _dapo_grpo_section():
    """configs/grpo_dapo_qwen2_5_vl_3b.py's ``grpo`` section, so the tiny DAPO run cannot drift from the preset."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grpo_dapo_qwen2_5_vl_3b.py")
    spec = importlib.util.spec_from_file_location("grpo_dapo_qwen2_5_vl_3b", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config().grpo


def get_config(variant: str = ""):
    if variant not in ("", "dapo", "dr_grpo", "gspo"):
        raise ValueError(f"unknown variant {variant!r}; this config knows dapo, dr_grpo, gspo")
    c = default_config()
    c.workdir = "runs/grpo_tiny_" + (variant or "paper")
    c.model.preset = "demo"
    c.model.init_from = f"{DEMO}/sft/model"
    c.data.tokenizer = f"{DEMO}/tokenizer"
    c.data.dataset_dir = f"{DEMO}/data"
    c.data.split = "train[:32]"
    c.data.global_batch_size = 2       # prompts per step
    c.data.seq_len = 224               # the shrunk demo's prompt bucket (its summary.json prompt_len)
    c.data.patch_bucket = 36           # 84 px images: 6 x 6 patches
    c.data.min_pixels = c.data.max_pixels = 84 * 84
    c.grpo.num_samples = 4
    c.sampling.temperature, c.sampling.top_p = 1.0, 0.95
    c.sampling.max_new_tokens = MAX_NEW_TOKENS
    c.optim.learning_rate, c.optim.warmup_steps, c.optim.min_lr_ratio = 2e-4, 0, 1.0
    c.train.steps = c.train.checkpoint_every = 3
    c.train.log_every = 1
    c.train.async_checkpoint = False
    c.rewards.variant = "paper"
    if variant == "dapo":
        c.grpo.update(_dapo_grpo_section())
        c.grpo.overlong_buffer = MAX_NEW_TOKENS // 4   # the preset's 512 of 2048
    elif variant == "dr_grpo":
        c.grpo.loss_aggregation, c.grpo.scale_rewards = "sequence_sum_constant", "none"
    elif variant == "gspo":
        # At one update per rollout the sequence ratio is 1 and GSPO's gradient is GRPO's: two updates show it.
        c.grpo.importance_sampling, c.grpo.beta, c.grpo.inner_iterations = "sequence", 0.0, 2
    return c
