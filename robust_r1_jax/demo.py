"""The embedded default run, ``python -m robust_r1_jax.main --config=configs/demo.py``: no downloads.

1. synthesise the procedural shapes VQA dataset with degradations and reasoning chains;
2. train a small byte-level BPE tokenizer on it (Qwen2.5-VL special tokens; chain tags stay plain text);
3. SFT a small Qwen2.5-VL from scratch; 4. GRPO from the SFT model with the jitted rewards;
5. evaluate both on held-out degraded images (chain validity, answer accuracy) and write a VLMEvalKit TSV of
   held-out clean images for ``configs/eval_robust.py``; 6. write ``report.md`` and ``summary.json``
   (``robust_r1_jax.eval.demo_report``).
Everything lands under ``config.workdir`` (default ``runs/demo``, the paths of ``robust_r1_jax.eval.defaults``).

The demo's tokenizer lets merges cross word boundaries (no pre-tokenisation split), capped at
``data.max_token_length`` bytes. The shapes chains are built from templates and every prompt ends in the same
long SPEC §1 suffix, so phrase-sized tokens shorten the sequences about five-fold (the suffix alone drops from
169 word-level tokens to about 30). That is what makes SFT, evaluation and GRPO fit ten CPU minutes. The tags
stay plain text: they are bytes inside ordinary merged tokens, which the byte-level rewards read exactly.

What a model trained from scratch for minutes can learn decides the rest of ``configs/demo.py``: 84 px images
(3x3 language tokens), one large object, colour and shape questions with options in palette order
(``data.shapes``, see ``data/shapes.py::Style``), and the demo preset's vision ``initializer_range`` of 0.1. With
the full shapes task or the usual 0.02 initialisation the model learns the chain format but answers at chance.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time

import jax
import numpy as np

from robust_r1_jax import atomic
from robust_r1_jax.data import chains, sources, synth, tfds_builder
from robust_r1_jax.data.tokenizer import train_phrase_tokenizer
from robust_r1_jax.eval import answers, demo_report, inference
from robust_r1_jax.model.processor import DEFAULT_SYSTEM, ImageProcessor, Processor, load_tokenizer
from robust_r1_jax.rl import grpo
from robust_r1_jax.train import run as train_run, sft

log = logging.getLogger(__name__)

# SPEC §3 format regex (search, DOTALL): a held-out generation is a valid chain when it matches.
FORMAT_PATTERN = chains.FORMAT_PATTERN


# ---- data and tokenizer -------------------------------------------------------------------------------------------
def synth_config(config, workdir: str):
    """The synth stage's config (``config.synth``) writing under ``workdir/data``."""
    c = config.synth.copy_and_resolve_references()
    c.workdir = os.path.join(workdir, "data")
    return c


def build_data(config, workdir: str) -> dict:
    return synth.run(synth_config(config, workdir))


def tokenizer_texts(examples: list[dict], system: str = DEFAULT_SYSTEM) -> list[str]:
    """What the model will read and write, cut where the chat template puts special tokens (the tokenizer
    never merges across those): system turn, role names, question + suffix, chain."""
    texts = []
    for e in examples:
        texts += [f"system\n{system}", "\n", "user\n", chains.format_prompt(e["question"], e["options"]),
                  "assistant\n", e["chain"]]
    return texts


def option_atoms(examples: list[dict]) -> tuple[str, ...]:
    """The answer vocabulary: every non-numeric option text of the training split."""
    return tuple(sorted({o for e in examples for o in e["options"] if o and not o.isdigit()}))


def build_tokenizer(dataset_dir: str, out_dir: str, vocab_size: int, max_token_length: int,
                    image_size: int) -> Processor:
    """The demo tokenizer beside the image settings it was trained for (one directory, written atomically), so
    every later reader (SFT, RL, evaluation, ``configs/eval_robust.py``) preprocesses images as training did."""
    examples = tfds_builder.read_examples(dataset_dir, "train", decode_images=False)
    tokenizer = train_phrase_tokenizer(tokenizer_texts(examples), vocab_size, option_atoms(examples),
                                     max_token_length)
    pixels = image_size ** 2
    image_settings = json.dumps({"min_pixels": pixels, "max_pixels": pixels, "patch_size": 14,
                                 "temporal_patch_size": 2, "merge_size": 2}, indent=2)

    def save(directory: str) -> None:
        tokenizer.save_pretrained(directory)
        atomic.write_text(os.path.join(directory, "preprocessor_config.json"), image_settings)
    atomic.replace_dir(out_dir, save)
    return Processor(load_tokenizer(out_dir), ImageProcessor.from_pretrained(out_dir))


def sequence_lengths(dataset_dir: str, processor: Processor, image_tokens: int) -> dict:
    """Longest chat prompt (image tokens included) and longest chain over the training split, in tokens.

    The SFT row is prompt + chain + ``<|im_end|>`` + the closing newline; RL prompts and held-out prompts use
    the prompt figure; the completion budget comes from the chain figure."""
    longest = dict(prompt=0, chain=0, row=0)
    closing = len(processor.tokenize("\n")) + 1
    for e in tfds_builder.read_examples(dataset_dir, "train", decode_images=False):
        # as Processor.encode counts them: the user text and the chain as text
        prompt = len(processor.prompt_ids(chains.format_prompt(e["question"], e["options"]), [image_tokens]))
        chain = len(processor.tokenize(e["chain"], as_text=True))
        longest["prompt"] = max(longest["prompt"], prompt)
        longest["chain"] = max(longest["chain"], chain)
        longest["row"] = max(longest["row"], prompt + chain + closing)
    return longest


def round_up(n: float, multiple: int) -> int:
    return int(-(-int(np.ceil(n)) // multiple) * multiple)


# ---- evaluation ---------------------------------------------------------------------------------------------------
def evaluate(model_dir: str, processor: Processor, examples: list[dict], max_new_tokens: int, batch_size: int,
             prompt_bucket: int) -> dict:
    """Greedy chains on held-out degraded images: format validity (SPEC §3 regex), answer accuracy with the
    project's extractor and strictly (the first ANSWER block equals the option index), mean length."""
    model = inference.load_model(model_dir)
    scfg = inference.sampler_config(model, processor, max_new_tokens=max_new_tokens)
    patches = (processor.image_processor.max_pixels // processor.image_processor.patch_size ** 2)
    gen = inference.Generator(model, processor, scfg, batch_size=min(batch_size, len(examples)),
                              prompt_buckets=(prompt_bucket, 2 * prompt_bucket), patch_buckets=(patches,))
    prompts = [(chains.format_prompt(e["question"], e["options"]), e["image"]) for e in examples]
    outputs = gen.complete(prompts)
    valid = [bool(FORMAT_PATTERN.search(o.text)) for o in outputs]
    correct = [answers.extract_answer(o.text, e["options"]) == int(e["answer"]) for o, e in zip(outputs, examples)]
    strict = [(chains.extract_block(o.text, "ANSWER") or "").strip() == str(int(e["answer"]))
              for o, e in zip(outputs, examples)]
    return dict(examples=len(examples), valid_chains=float(np.mean(valid)), accuracy=float(np.mean(correct)),
                strict_accuracy=float(np.mean(strict)),
                chance=float(np.mean([1.0 / len(e["options"]) for e in examples])),
                mean_tokens=float(np.mean([o.num_tokens for o in outputs])), sample=outputs[0].text)


def write_eval_tsv(path: str, num: int, image_size: int, seed: int, style) -> str:
    """Held-out clean shapes questions of the trained style as a VLMEvalKit TSV (the robustness protocol degrades
    them itself)."""
    from robust_r1_jax.data import shapes
    records = shapes.make_records(num, seed=seed + 7919, image_size=image_size, style=style)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sources.write_vlmeval_tsv(records, path)
    return path


# ---- the run ------------------------------------------------------------------------------------------------------
class StageClock:
    """Wall and process CPU seconds (user + sys, all threads) of each named stage."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - wall
            self.cpu[name] = _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def host() -> dict:
    """The machine a demo ran on: CPU model, core count, the instruction-set features XLA:CPU's kernels are chosen
    by, jax's version and XLA_FLAGS.

    The outcome is bit-exact from run to run on one kind of CPU, not across kinds: XLA:CPU runs matmuls through
    YNNPACK, which picks its kernels at run time by the CPU's features, and 1000 SFT steps amplify the last-bit
    differences (WORKSPACE.md, "The embedded demo's outcome"). Reads ``/proc/cpuinfo`` where there is one.
    """
    model, flags = platform.processor(), set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            fields = dict(line.split(":", 1) for line in handle.read().split("\n\n")[0].splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model, flags = fields.get("model name", model), set(fields.get("flags", "").split())
    features = sorted(f for f in flags if f in ("avx2", "fma") or f.startswith(("avx512", "amx")))
    return dict(cpu=model, cores=os.cpu_count(), features=features, jax=jax.__version__,
                xla_flags=os.environ.get("XLA_FLAGS", ""))


def run(config) -> dict:
    from robust_r1_jax.train import validate
    # The GRPO stage's sampling and grpo sections are checked before the minutes of synthesis and SFT.
    from robust_r1_jax.model import sampling
    validate.check_sampling(config, sections=(), extra=sampling.problems(config.rl.sampling, "rl.sampling")
                            + grpo.config_problems(config.rl, prefix="rl."))
    clock = StageClock()
    with clock("total"):
        summary = _run_stages(config, clock)
    summary["timings"] = dict(wall=clock.wall, cpu=clock.cpu, cpu_cores=os.cpu_count())
    summary["host"] = host()
    print(demo_report.write(summary, summary["workdir"]))
    print(closing_line(summary), flush=True)
    return summary


def closing_line(summary: dict) -> str:
    """The demo's last line: where its models and its report went."""
    models = [stage["model_dir"] for stage in (summary.get("sft"), summary.get("rl"))
              if stage and stage.get("model_dir")]
    workdir = os.path.abspath(summary["workdir"])
    return (f"demo: models in {', '.join(models) or 'none'}; report in {os.path.join(workdir, 'report.md')} and "
            f"summary.json; evaluate them with configs/eval_robust.py")


def _run_stages(config, clock: StageClock) -> dict:
    workdir = train_run.check_workdir(config.workdir)
    with clock("synth"):
        data = build_data(config, workdir)
    dataset_dir = data["dataset_dir"]

    with clock("tokenizer"):
        tok_dir = os.path.join(workdir, "tokenizer")
        processor = build_tokenizer(dataset_dir, tok_dir, config.tokenizer.vocab_size,
                                    config.tokenizer.max_token_length, config.image_size)
        image_tokens = (config.image_size // 28) ** 2
        lengths = sequence_lengths(dataset_dir, processor, image_tokens)
    seq_len = round_up(lengths["row"], 32)
    prompt_len = round_up(lengths["prompt"], 16)
    new_tokens = round_up(lengths["chain"] * config.eval.new_token_margin, 16)

    with clock("sft"):
        sft_out = sft.run(stage_config(config, "sft", workdir, dataset_dir, tok_dir, seq_len))

    held_out = tfds_builder.read_examples(dataset_dir, "validation")[: config.eval.num_examples]
    if not held_out:
        raise ValueError(f"the validation split of {dataset_dir} is empty; raise data.num_validation")
    with clock("eval_sft"):
        sft_eval = evaluate(sft_out["model_dir"], processor, held_out, new_tokens, config.eval.batch_size,
                            prompt_len)

    rl_out, rl_eval = None, None
    if config.rl.train.steps > 0:
        with clock("rl"):
            rl_cfg = stage_config(config, "rl", workdir, dataset_dir, tok_dir, prompt_len,
                                  init_from=sft_out["model_dir"], max_new_tokens=new_tokens)
            rl_out = grpo.run(rl_cfg)
        with clock("eval_rl"):
            rl_eval = evaluate(rl_out["model_dir"], processor, held_out, new_tokens, config.eval.batch_size,
                               prompt_len)

    with clock("eval_tsv"):
        style = synth.shapes_style(synth_config(config, workdir).synth)
        tsv = write_eval_tsv(os.path.join(workdir, "data", "demo_eval.tsv"), config.eval.tsv_rows,
                             config.image_size, config.seed, style)
    return dict(workdir=workdir, dataset=data, tokenizer=tok_dir, vocab_size=config.tokenizer.vocab_size,
                model_preset=config.sft.model.preset, image_size=config.image_size, lengths=lengths,
                seq_len=seq_len, prompt_len=prompt_len, max_new_tokens=new_tokens, sft=demo_report.sft_summary(sft_out),
                sft_eval=sft_eval, rl=demo_report.rl_summary(rl_out, config), rl_eval=rl_eval, eval_tsv=tsv)


def stage_config(config, stage: str, workdir: str, dataset_dir: str, tok_dir: str, seq_len: int, *,
                 init_from: str = "", max_new_tokens: int = 0):
    """The SFT or GRPO stage's config (``config.sft`` / ``config.rl``) with what earlier stages produced filled
    in: its workdir, the dataset and tokenizer, the measured sequence length and, for GRPO, the SFT model and the
    completion budget. A prompt pool larger than the training split is cut to it."""
    c = config[stage].copy_and_resolve_references()
    c.workdir = os.path.join(workdir, stage)
    c.model.init_from = init_from
    c.data.dataset_dir, c.data.tokenizer, c.data.seq_len = dataset_dir, tok_dir, seq_len
    if stage == "rl":
        pool = demo_report.prompt_pool(c.data.split, config.synth.synth.num_train)
        c.data.split = f"train[:{pool}]" if pool else c.data.split
        c.sampling.max_new_tokens = max_new_tokens
    return c
