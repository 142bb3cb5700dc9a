"""The demo's report: what its summary keeps of the SFT and GRPO runs, ``report.md`` rendered from that summary,
and both files written as one set into the demo's working directory.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np

from robust_r1_jax.train import metrics


SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.md"
# One RL history window per 10% of the steps: the acceptance compares the first and the last window.
RL_KEYS = ("reward/total", "reward/degradation", "reward/length", "reward/format", "reward/accuracy",
           "completion_length", "kl")


def run_history(out: dict, in_memory: list[dict]) -> list[dict]:
    """Every step's metrics of a stage's run: its ``logs/metrics.jsonl`` (one record per step, replayed steps
    dropped on resume), which also holds the steps of an earlier invocation that a resumed or re-run demo did not
    train again; ``in_memory`` (this invocation's steps) where the file is absent."""
    path = os.path.join(out.get("workdir", ""), "logs", metrics.METRICS_NAME)
    records = metrics.read_jsonl(path) if out.get("workdir") and os.path.exists(path) else []
    return records if len(records) >= len(in_memory) else in_memory


def sft_summary(out: dict) -> dict:
    """What the report shows of ``sft.run``'s result: loss at the ends and over the last 10% of the steps (of the
    whole run, also when this invocation resumed it)."""
    history = run_history(out, [{"loss": loss} for loss in out["losses"]])
    if not history:
        raise ValueError(f"the SFT run in {out.get('workdir')} has no step metrics (logs/{metrics.METRICS_NAME})")
    losses = [float(r["loss"]) for r in history]
    k = max(1, len(losses) // 10)
    skipped = sum(int(r.get("skipped", 0)) for r in history) if len(history) > len(out["losses"]) else out["skipped"]
    return dict(steps=len(losses), first_loss=losses[0], last_loss=losses[-1],
                last_mean_loss=float(np.mean(losses[-k:])), skipped=skipped, model_dir=out["model_dir"])


def prompt_pool(split: str, num_train: int) -> int:
    """The number of prompts of a ``train[:N]`` split, at most ``num_train``; 0 for any other split."""
    match = re.fullmatch(r"train\[:(\d+)\]", split)
    return min(int(match.group(1)), num_train) if match else 0


def rl_summary(out: dict | None, config) -> dict | None:
    """What the report shows of ``grpo.run``'s result (None when RL was skipped): the means of ``RL_KEYS`` over
    the first and last 10% of the steps, the rise of the total reward with its standard error, fifths of the
    run, and the demo config's sampling and reward settings."""
    if out is None:
        return None
    hist, rl = run_history(out, out["history"]), config["rl"]
    k = max(1, len(hist) // 10)
    mean = lambda rows, key: float(np.mean([r[key] for r in rows]))
    step_times = [r["step_time"] for r in hist[1:]] or [hist[0]["step_time"]]
    first = dict((key, mean(hist[:k], key)) for key in RL_KEYS)
    last = dict((key, mean(hist[-k:], key)) for key in RL_KEYS)
    spread = lambda rows: float(np.var([r["reward/total"] for r in rows], ddof=1) / k) if k > 1 else float("nan")
    return dict(steps=len(hist), window=k, model_dir=out["model_dir"],
                prompts_per_step=rl.data.global_batch_size, samples_per_prompt=rl.grpo.num_samples,
                prompt_pool=prompt_pool(rl.data.split, config.synth.synth.num_train),
                temperature=rl.sampling.temperature, top_p=rl.sampling.top_p,
                rise=last["reward/total"] - first["reward/total"],
                rise_standard_error=float(np.sqrt(spread(hist[:k]) + spread(hist[-k:]))),
                fifths=dict((key, [float(np.mean(part)) for part in np.array_split([r[key] for r in hist], 5)])
                            for key in RL_KEYS if len(hist) >= 5),
                variant=rl.rewards.variant,
                weights={k: rl.rewards[k] for k in ("accuracy", "format", "degradation", "length")},
                first=first, last=last,
                median_step_time=float(np.median(step_times)))


def markdown(s: dict) -> str:
    """``report.md`` for the demo summary ``s`` (the dict ``demo.run`` returns and writes as summary.json)."""
    lengths = s["lengths"]
    lines = ["# robust_r1_jax demo", "",
             f"Dataset: {s['dataset']['counts']} shapes questions at {s['image_size']} px, mean summed "
             f"intensity {s['dataset']['mean_sum_intensity']}. Tokenizer: {s['vocab_size']} tokens. Longest "
             f"training prompt {lengths['prompt']} tokens, chain {lengths['chain']}; SFT rows {s['seq_len']}, "
             f"prompt bucket {s['prompt_len']}, at most {s['max_new_tokens']} new tokens.", "",
             "## SFT", "",
             f"Model preset `{s['model_preset']}`, {s['sft']['steps']} steps, loss {s['sft']['first_loss']:.3f} -> "
             f"{s['sft']['last_loss']:.3f} (mean of the last 10%: {s['sft']['last_mean_loss']:.3f}; "
             f"{s['sft']['skipped']} skipped).", "",
             "## Held-out degraded images (greedy)", "",
             "| model | examples | valid chains | answer accuracy | strict accuracy | chance | mean tokens |",
             "|---|---|---|---|---|---|---|"]
    for name, ev in (("SFT", s["sft_eval"]), ("SFT+RL", s["rl_eval"])):
        if ev:
            lines.append(f"| {name} | {ev['examples']} | {ev['valid_chains']:.1%} | {ev['accuracy']:.1%} | "
                         f"{ev['strict_accuracy']:.1%} | {ev['chance']:.1%} | {ev['mean_tokens']:.0f} |")
    lines += ["", "Valid: the SPEC §3 format regex matches. Answer accuracy: the evaluation's answer extractor; "
                  "strict: the first ANSWER block is the option index."]
    if s["rl"]:
        r = s["rl"]
        weights = ", ".join(f"{k} {v:g}" for k, v in r["weights"].items())
        pool = f"prompts from the first {r['prompt_pool']} training examples" if r["prompt_pool"] else "all prompts"
        lines += ["", "## GRPO", "",
                  f"{r['steps']} steps of {r['prompts_per_step']} prompts x {r['samples_per_prompt']} samples "
                  f"({pool}), temperature {r['temperature']:g}, top-p {r['top_p']:g}, r_deg variant "
                  f"`{r['variant']}`, reward weights: {weights}; median step {r['median_step_time']:.1f} s. "
                  f"Means over the first and last {r['window']} step(s):", "",
                  "| | total | r_deg | r_len | r_fmt | r_acc | length | KL |", "|---|---|---|---|---|---|---|---|"]
        for name in ("first", "last"):
            v = r[name]
            lines.append(f"| {name} | {v['reward/total']:.3f} | {v['reward/degradation']:.3f} | "
                         f"{v['reward/length']:.3f} | {v['reward/format']:.3f} | {v['reward/accuracy']:.3f} | "
                         f"{v['completion_length']:.1f} | {v['kl']:.4f} |")
        error = r["rise_standard_error"]
        error = f"standard error {error:.3f} from the per-step means" if np.isfinite(error) else "one step per window"
        lines += ["", f"Total reward rise, last minus first window: {r['rise']:+.3f} ({error})."]
        if r["fifths"]:
            lines += ["", "Means over fifths of the run:", "",
                      "| | " + " | ".join(f"{i + 1}/5" for i in range(5)) + " |", "|---|" + "---|" * 5]
            lines += [f"| {key.split('/')[-1]} | " + " | ".join(f"{x:.3f}" for x in r["fifths"][key]) + " |"
                      for key in RL_KEYS if key.startswith("reward/")]
    t = s["timings"]
    lines += ["", "## Time", "", "| stage | wall s | CPU s (user+sys) |", "|---|---|---|"]
    lines += [f"| {name} | {t['wall'][name]:.0f} | {t['cpu'][name]:.0f} |" for name in t["wall"]]
    lines += ["", f"CPU seconds over {t['cpu_cores']} cores: {t['cpu']['total'] / t['cpu_cores']:.0f} s "
                  f"per core for the whole run."]
    if "host" in s:
        h = s["host"]
        lines += ["", f"Machine: {h['cpu']}, {h['cores']} cores ({' '.join(h['features']) or 'no AVX2'}), jax "
                      f"{h['jax']}{', XLA_FLAGS=' + h['xla_flags'] if h['xla_flags'] else ''}. The numbers repeat "
                      "exactly on this kind of CPU; another kind may round matmuls differently and end elsewhere."]
    lines += ["",
              "Sample held-out chain (SFT, greedy):", "", "```", s["sft_eval"]["sample"][:600], "```", ""]
    return "\n".join(lines)


def _finite(value):
    """``value`` with every NaN or infinity as None: JSON has no such numbers (one step per window gives a NaN
    standard error), and strict readers refuse the bare ``NaN`` Python's json writes."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def write(summary: dict, workdir: str) -> str:
    """Writes ``summary.json`` and ``report.md`` into ``workdir`` as one set (``report.write_report_set``); returns
    the report's text."""
    from robust_r1_jax.eval.report import write_report_set
    text = markdown(summary)
    write_report_set(workdir, {SUMMARY_NAME: json.dumps(_finite(summary), indent=2, default=str,
                                                        allow_nan=False).encode("utf-8"),
                               REPORT_NAME: text.encode("utf-8")})
    return text
