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

The protocol (``--config.protocol``) is ``vlmevalkit`` by default: VLMEvalKit's Qwen2.5-VL MCQ prompt (``Hint:``,
``Question:``, ``Options:`` with ``A. ...`` lines, ``Please select the correct answer from the options above.``), its
pixel bounds (1280*28*28 to 16384*28*28) and its exact answer matching, with the SPEC §1 suffix for reasoning models
and their ``<ANSWER>`` block read first; ``indexed`` is the project's ``0. option`` training prompt (the demo models
use it). ``--config.rbench_dir`` is a folder with VLMEvalKit's ``R-Bench-Dis.tsv`` (and ``R-Bench-Ref.tsv``),
reported per level and overall.

A checkpoint is a Hugging Face directory, an orbax model checkpoint (``orbax_io.save``) or a training checkpoint
folder. Lists are tuples: a Python tuple in quotes, or the flag repeated once per entry (ml_collections'
``config_flags``). Generation settings are ``--config.sampling.*`` (greedy, 1024 new tokens by default). Reports go to
``workdir``: results.json, results.md, accuracy.png, predictions.jsonl and
``vlmevalkit/<level>/<model>_<benchmark>.tsv`` (``vlmevalkit/as_shipped/`` for R-Bench): each TSV row's own columns
with VLMEvalKit's ``prediction`` (and ``thinking``) beside them, the table VLMEvalKit's evaluation re-scores
(``PRED_FORMAT=tsv``). Every field and its default: ``robust_r1_jax.eval.robust.default_config``.

Stopping and resuming: each finished (model, benchmark, level) is written as it completes to
``workdir/levels/<model>/<benchmark>/<level>.json``; running the same command again reuses them (a model whose
levels are all there is not even loaded) and writes the report set an uninterrupted run writes. A changed setting,
TSV or model folder evaluates the affected levels anew (``robust_r1_jax/eval/finished.py``). Each level shows a
progress bar of rows with rate and ETA; the last line names where the reports went.

What the pixel bounds cost: VLMEvalKit's Qwen2.5-VL bounds resize every image to at least 1280*28*28 = 1,003,520
pixels, so a benchmark image of 500x500 is upscaled about 4x, to ~1,280 image tokens (5,120 vision patches) per
prompt instead of its native ~320, and prompts need the 2048-token bucket: the prefill and the vision tower cost
about 4-5x what the image's own size would. That is the setting the paper's numbers are measured at. To evaluate
cheaper (numbers then not comparable with VLMEvalKit's), keep images at their own size with the model's own floor:
``--config.min_pixels=3136`` (and, to cap large images, ``--config.max_pixels=802816``, i.e. 1024 image tokens);
``--config.protocol=indexed`` takes the bounds of the model folder's ``preprocessor_config.json``.
"""
from robust_r1_jax.eval.robust import default_config


def get_config():
    return default_config()
