"""Where the CPU demo (``configs/demo.py``) leaves its outputs, relative to the working directory.

The demo writes these paths and ``configs/eval_robust.py`` / ``configs/generate.py`` read them when no checkpoint
is given, so both sides import them from here.
"""
from __future__ import annotations

import os

DEMO_COMMAND = "python -m robust_r1_jax.main --config=configs/demo.py"
DEMO_DIR = "runs/demo"
DEMO_TOKENIZER_DIR = os.path.join(DEMO_DIR, "tokenizer")
DEMO_SFT_MODEL = os.path.join(DEMO_DIR, "sft", "model")
DEMO_RL_MODEL = os.path.join(DEMO_DIR, "rl", "model")
DEMO_EVAL_TSV = os.path.join(DEMO_DIR, "data", "demo_eval.tsv")
DEMO_EVAL_WORKDIR = os.path.join(DEMO_DIR, "eval")
# Display name -> model directory: the demo model before and after RL.
DEMO_MODELS = (("demo SFT", DEMO_SFT_MODEL), ("demo SFT+RL", DEMO_RL_MODEL))
