"""Robustness evaluation (SPEC §2 / §6): ``python -m robust_r1_jax.main --config=configs/eval_robust.py``.

With no checkpoint it evaluates the demo model before and after RL (``runs/demo/sft/model`` and
``runs/demo/rl/model``, tokenizer ``runs/demo/tokenizer``) on the demo's held-out TSV; run the demo first
(``--config=configs/demo.py``). Your own models and benchmarks:

    python -m robust_r1_jax.main --config=configs/eval_robust.py \
        --config.checkpoints='("/ckpt/Qwen2.5-VL-3B-Instruct", "/runs/sft/checkpoints", "/runs/rl/model")' \
        --config.names='("Qwen2.5-VL-3B", "Robust-R1 SFT", "Robust-R1 SFT+RL")' \
        --config.tokenizers='("", "/ckpt/Qwen2.5-VL-3B-Instruct", "/ckpt/Qwen2.5-VL-3B-Instruct")' \
        --config.no_suffix=Qwen2.5-VL-3B \
        --config.tsvs=/data/MMStar.tsv --config.tsvs=/data/RealWorldQA.tsv --config.rbench_dir=/data/R-Bench

A checkpoint is a Hugging Face directory, an orbax model checkpoint (``orbax_io.save``) or a training checkpoint
folder. Lists are tuples: a Python tuple in quotes, or the flag repeated once per entry (ml_collections'
``config_flags``). Generation settings are ``--config.sampling.*`` (greedy, 1024 new tokens by default). Reports go to
``workdir``: results.json, results.md, accuracy.png and predictions.jsonl. Every field and its default:
``robust_r1_jax.eval.robust.default_config``.
"""
from robust_r1_jax.eval.robust import default_config


def get_config():
    return default_config()
