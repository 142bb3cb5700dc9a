"""Robustness evaluation (SPEC §2 / §6): ``python -m robust_r1_jax.main --config=configs/eval_robust.py``.

With no checkpoint it evaluates the demo model before and after RL (``runs/demo/sft/model`` and
``runs/demo/rl/model``, tokenizer ``runs/demo/tokenizer``) on the demo's held-out TSV; run the demo first
(``--config=configs/demo.py``). Your own models and benchmarks:

    python -m robust_r1_jax.main --config=configs/eval_robust.py \
        --config.checkpoints=/ckpt/Qwen2.5-VL-3B-Instruct,/runs/sft/checkpoints,/runs/rl/model \
        --config.names="Qwen2.5-VL-3B,Robust-R1 SFT,Robust-R1 SFT+RL" \
        --config.tokenizers=,/ckpt/Qwen2.5-VL-3B-Instruct,/ckpt/Qwen2.5-VL-3B-Instruct \
        --config.no_suffix=Qwen2.5-VL-3B \
        --config.tsvs=/data/MMStar.tsv,/data/RealWorldQA.tsv --config.rbench_dir=/data/R-Bench

A checkpoint is a Hugging Face directory, an orbax model checkpoint (``orbax_io.save``) or a training checkpoint
folder. Lists are comma-separated. Reports go to ``workdir``: results.json, results.md, accuracy.png and
predictions.jsonl.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "eval"
    config.workdir = ""  # "" -> runs/demo/eval for the demo, runs/eval otherwise

    # Models: paths, display names (default: folder names), tokenizer folders ("" = the checkpoint's own;
    # one entry is shared by all), and the names (or "all") prompted WITHOUT the SPEC §1 suffix (base models).
    config.checkpoints = ""
    config.names = ""
    config.tokenizers = ""
    config.no_suffix = ""

    # Benchmarks: VLMEvalKit MCQ TSVs under synthetic degradation, and/or a local R-Bench MCQ copy
    # (layout in robust_r1_jax/eval/benchmarks.py).
    config.tsvs = ""
    config.rbench_dir = ""
    config.levels = "clean,25%,50%,100%"  # intensities 0, 0.23, 0.45, 0.9
    config.limit = 0  # evaluate only the first N rows of each file (0 = all)

    # Generation: greedy by default; batches padded to fixed shapes so one compilation serves a benchmark.
    config.max_new_tokens = 1024
    config.temperature = 0.0
    config.top_p = 1.0
    config.top_k = 0
    config.seed = 0
    config.batch_size = 8
    config.prompt_buckets = "256,512,1024,2048"  # prompt lengths in tokens (images included)
    config.patch_buckets = "64,256,1024,4096"  # image patches per prompt
    config.min_pixels = 0  # 0: the model's preprocessor_config.json (or Qwen2-VL's defaults)
    config.max_pixels = 0
    config.dtype = "float32"  # "bfloat16" on accelerators
    return config
