"""The embedded default run, ``python -m robust_r1_jax.main --config=configs/demo.py``: no downloads.

1. synthesise the procedural shapes VQA dataset with degradations and reasoning chains;
2. train a small byte-level BPE tokenizer on it (Qwen2.5-VL special tokens; chain tags stay plain text);
3. SFT a small Qwen2.5-VL from scratch; 4. GRPO from the SFT model with the jitted rewards;
5. evaluate both on held-out degraded images (chain validity, answer accuracy) and write a VLMEvalKit TSV of
   held-out clean images for ``configs/eval_robust.py``; 6. write ``report.md``.
Everything lands under ``config.workdir`` (default ``runs/demo``, the paths of ``robust_r1_jax.eval.defaults``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time

import numpy as np

from robust_r1_jax.data import chains, sources, synth, tfds_builder
from robust_r1_jax.data.tokenizer import train_demo_tokenizer
from robust_r1_jax.eval import answers, inference
from robust_r1_jax.model.processor import ImageProcessor, Processor, load_tokenizer
from robust_r1_jax.rl import grpo
from robust_r1_jax.train import sft

log = logging.getLogger(__name__)

FORMAT_PATTERN = re.compile(r"<TYPE>.*?<TYPE_END>\s*<INFLUENCE>.*?<INFLUENCE_END>\s*<REASONING>.*?<REASONING_END>"
                            r"\s*<CONCLUSION>.*?<CONCLUSION_END>\s*<ANSWER>.*?<ANSWER_END>", re.DOTALL)


def build_data(config, workdir: str) -> dict:
    s = synth_config(config, workdir)
    summary = synth.run(s)
    return summary


def synth_config(config, workdir: str):
    from ml_collections import ConfigDict
    c = ConfigDict()
    c.workdir = os.path.join(workdir, "data")
    c.synth = ConfigDict(dict(
        source="shapes", source_path="", image_root="", aokvqa_split="", keep_prebuilt_chains=True,
        num_train=config.data.num_train, num_validation=config.data.num_validation,
        image_size=config.data.image_size, max_image_side=0, min_degradations=config.data.min_degradations,
        max_degradations=config.data.max_degradations, seed=config.seed, on_error="raise", annotator="template",
        annotator_base_url="", annotator_model="", annotator_timeout=60.0, image_format="png", data_dir="",
        overwrite=True, num_workers=0, contact_sheet_size=8))
    return c


def build_tokenizer(dataset_dir: str, out_dir: str, vocab_size: int):
    examples = tfds_builder.read_examples(dataset_dir, "train", decode_images=False)
    texts = [e["chain"] for e in examples] + [chains.format_prompt(e["question"], e["options"]) for e in examples]
    return train_demo_tokenizer(texts, out_dir, vocab_size=vocab_size)


def sequence_bucket(dataset_dir: str, processor: Processor, image_tokens: int, multiple: int = 64) -> tuple[int, int]:
    """(SFT sequence bucket, longest chain in tokens) over the training split."""
    longest, longest_chain = 0, 0
    for e in tfds_builder.read_examples(dataset_dir, "train", decode_images=False):
        prompt = len(processor.tokenize(chains.format_prompt(e["question"], e["options"])))
        chain = len(processor.tokenize(e["chain"]))
        longest = max(longest, prompt + chain + image_tokens + 32)
        longest_chain = max(longest_chain, chain)
    return -(-longest // multiple) * multiple, longest_chain


def evaluate(model_dir: str, processor: Processor, examples: list[dict], max_new_tokens: int,
             batch_size: int) -> dict:
    """Greedy chains on held-out degraded images: format validity, answer accuracy, mean length."""
    model = inference.load_model(model_dir)
    scfg = inference.sampler_config(model, processor, max_new_tokens=max_new_tokens)
    gen = inference.Generator(model, processor, scfg, batch_size=batch_size, prompt_buckets=(256, 512, 1024),
                              patch_buckets=(16, 64, 256))
    prompts = [(chains.format_prompt(e["question"], e["options"]), e["image"]) for e in examples]
    outputs = gen.complete(prompts)
    valid = [bool(FORMAT_PATTERN.search(o.text)) for o in outputs]
    correct = [answers.extract_answer(o.text, e["options"]) == int(e["answer"]) for o, e in zip(outputs, examples)]
    return dict(examples=len(examples), valid_chains=float(np.mean(valid)), accuracy=float(np.mean(correct)),
                chance=float(np.mean([1.0 / len(e["options"]) for e in examples])),
                mean_tokens=float(np.mean([o.num_tokens for o in outputs])), sample=outputs[0].text)


def write_eval_tsv(path: str, num: int, image_size: int, seed: int) -> str:
    """Held-out clean shapes questions as a VLMEvalKit TSV (the robustness protocol degrades them itself)."""
    from robust_r1_jax.data import shapes
    records = shapes.make_records(num, seed=seed + 7919, image_size=image_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sources.write_vlmeval_tsv(records, path)
    return path


def run(config) -> dict:
    started = time.perf_counter()
    workdir = sft.check_workdir(config.workdir)
    timings = {}

    t = time.perf_counter()
    data = build_data(config, workdir)
    dataset_dir = data["dataset_dir"]
    timings["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    tok_dir = os.path.join(workdir, "tokenizer")
    build_tokenizer(dataset_dir, tok_dir, config.data.vocab_size)
    pixels = config.data.image_size ** 2
    # image settings beside the tokenizer, so evaluation preprocesses exactly as training did
    _write_text(os.path.join(tok_dir, "preprocessor_config.json"),
                json.dumps({"min_pixels": pixels, "max_pixels": pixels, "patch_size": 14, "temporal_patch_size": 2,
                            "merge_size": 2}, indent=2))
    processor = Processor(load_tokenizer(tok_dir), ImageProcessor.from_pretrained(tok_dir))
    image_tokens = (config.data.image_size // 28) ** 2
    seq_len, longest_chain = sequence_bucket(dataset_dir, processor, image_tokens)
    timings["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    sft_cfg = stage_config(config, "sft", workdir, dataset_dir, tok_dir, seq_len)
    sft_out = sft.run(sft_cfg)
    timings["sft"] = time.perf_counter() - t

    held_out = tfds_builder.read_examples(dataset_dir, "validation")[: config.eval.num_examples]
    new_tokens = -(-int(longest_chain * 1.25) // 32) * 32
    t = time.perf_counter()
    sft_eval = evaluate(sft_out["model_dir"], processor, held_out, new_tokens, config.eval.batch_size)
    timings["eval_sft"] = time.perf_counter() - t

    rl_out, rl_eval = None, None
    if config.rl.steps > 0:
        t = time.perf_counter()
        prompt_len = -(-(seq_len - longest_chain) // 64) * 64
        rl_cfg = stage_config(config, "rl", workdir, dataset_dir, tok_dir, prompt_len,
                              init_from=sft_out["model_dir"], max_new_tokens=new_tokens)
        rl_out = grpo.run(rl_cfg)
        timings["rl"] = time.perf_counter() - t
        t = time.perf_counter()
        rl_eval = evaluate(rl_out["model_dir"], processor, held_out, new_tokens, config.eval.batch_size)
        timings["eval_rl"] = time.perf_counter() - t

    tsv = write_eval_tsv(os.path.join(workdir, "data", "demo_eval.tsv"), config.eval.tsv_rows,
                         config.data.image_size, config.seed)
    timings["total"] = time.perf_counter() - started
    summary = dict(dataset=data, seq_len=seq_len, max_new_tokens=new_tokens, sft=_sft_summary(sft_out),
                   sft_eval=sft_eval, rl=_rl_summary(rl_out), rl_eval=rl_eval, eval_tsv=tsv, timings=timings)
    _write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2, default=str))
    _write_text(os.path.join(workdir, "report.md"), report(summary))
    print(report(summary))
    return summary


def stage_config(config, stage: str, workdir: str, dataset_dir: str, tok_dir: str, seq_len: int, *,
                 init_from: str = "", max_new_tokens: int = 0):
    c = sft.default_config() if stage == "sft" else grpo.default_config()
    c.workdir = os.path.join(workdir, stage)
    c.seed = config.seed
    c.model.preset = config.model.preset
    c.model.init_from = init_from
    c.data.dataset_dir, c.data.tokenizer = dataset_dir, tok_dir
    c.data.seq_len = seq_len
    c.data.patch_bucket = (config.data.image_size // 14) ** 2
    c.data.min_pixels = c.data.max_pixels = config.data.image_size ** 2
    c.train.freeze = ()  # trained from scratch: the vision tower learns too
    c.train.async_checkpoint = False
    section = config[stage]
    c.data.global_batch_size = section.batch_size
    c.train.steps = section.steps
    c.train.checkpoint_every = section.steps
    c.train.log_every = max(1, section.steps // 10)
    c.optim.learning_rate = section.learning_rate
    c.optim.warmup_steps = section.warmup_steps
    c.optim.min_lr_ratio = 0.1
    if stage == "rl":
        c.data.split = "train"
        c.grpo.num_samples = section.num_samples
        c.grpo.beta = section.beta
        c.sampling.max_new_tokens = max_new_tokens
        c.rewards.variant = section.reward_variant
    return c


def _sft_summary(out: dict) -> dict:
    losses = out["losses"]
    return dict(steps=len(losses), first_loss=losses[0], last_loss=losses[-1], skipped=out["skipped"],
                model_dir=out["model_dir"])


def _rl_summary(out: dict | None) -> dict | None:
    if out is None:
        return None
    hist = out["history"]
    k = max(1, len(hist) // 10)
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))
    keys = ("reward/total", "reward/degradation", "reward/length", "reward/format", "reward/accuracy",
            "completion_length", "kl")
    return dict(steps=len(hist), window=k, model_dir=out["model_dir"],
                first=dict((key, mean(hist[:k], key)) for key in keys),
                last=dict((key, mean(hist[-k:], key)) for key in keys))


def report(s: dict) -> str:
    lines = ["# robust_r1_jax demo", "",
             f"Dataset: {s['dataset']['counts']} shapes questions, mean summed intensity "
             f"{s['dataset']['mean_sum_intensity']}; sequence bucket {s['seq_len']} tokens.", "",
             "## SFT", "",
             f"{s['sft']['steps']} steps, loss {s['sft']['first_loss']:.3f} -> {s['sft']['last_loss']:.3f} "
             f"({s['sft']['skipped']} skipped).", "",
             "## Held-out degraded images (greedy)", "",
             "| model | valid chains | answer accuracy | chance | mean tokens |", "|---|---|---|---|---|"]
    for name, ev in (("SFT", s["sft_eval"]), ("SFT+RL", s["rl_eval"])):
        if ev:
            lines.append(f"| {name} | {ev['valid_chains']:.1%} | {ev['accuracy']:.1%} | {ev['chance']:.1%} | "
                         f"{ev['mean_tokens']:.0f} |")
    if s["rl"]:
        r = s["rl"]
        lines += ["", "## GRPO", "", f"{r['steps']} steps; means over the first and last {r['window']} step(s):", "",
                  "| | total | r_deg | r_len | r_fmt | r_acc | length | KL |", "|---|---|---|---|---|---|---|---|"]
        for name in ("first", "last"):
            v = r[name]
            lines.append(f"| {name} | {v['reward/total']:.3f} | {v['reward/degradation']:.3f} | "
                         f"{v['reward/length']:.3f} | {v['reward/format']:.3f} | {v['reward/accuracy']:.3f} | "
                         f"{v['completion_length']:.0f} | {v['kl']:.4f} |")
    lines += ["", "## Time (s)", "", " | ".join(f"{k} {v:.0f}" for k, v in s["timings"].items()), "",
              f"Sample chain (SFT): `{s['sft_eval']['sample'][:300]}`", ""]
    return "\n".join(lines)


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
