"""The demo's report module: the summaries it keeps of the training runs and report.md, byte for byte as
``demo.report`` rendered them before it moved here (the expected text was produced by that code)."""
import json
import math
import os

import pytest
from ml_collections import ConfigDict

from robust_r1_jax.eval import demo_report

KEYS = demo_report.RL_KEYS


def summary(with_rl=True, window=3):
    s = dict(workdir="runs/demo", dataset={"counts": {"train": 640, "validation": 64}, "mean_sum_intensity": 1.2345},
             tokenizer="runs/demo/tokenizer", vocab_size=1024, model_preset="demo", image_size=84,
             lengths={"prompt": 61, "chain": 47, "row": 110}, seq_len=128, prompt_len=64, max_new_tokens=80,
             sft=dict(steps=300, first_loss=6.91234, last_loss=0.40411, last_mean_loss=0.41999, skipped=0,
                      model_dir="runs/demo/sft/model"),
             sft_eval=dict(examples=64, valid_chains=0.984375, accuracy=0.515625, strict_accuracy=0.5,
                           chance=0.25, mean_tokens=46.53, sample="<TYPE>noise(0.40)<TYPE_END>\n" + "x" * 700),
             rl=None, rl_eval=None, eval_tsv="runs/demo/data/demo_eval.tsv",
             timings=dict(wall={"synth": 12.4, "tokenizer": 9.6, "sft": 201.2, "total": 546.0},
                          cpu={"synth": 20.1, "tokenizer": 10.2, "sft": 390.7, "total": 942.4}, cpu_cores=2))
    if with_rl:
        first = dict(zip(KEYS, (1.5512, 0.4123, 0.3001, 0.9, 0.25, 44.25, 0.00012)))
        last = dict(zip(KEYS, (1.9388, 0.5012, 0.3502, 0.97, 0.5, 41.5, 0.00345)))
        s["rl"] = dict(steps=30, window=window, model_dir="runs/demo/rl/model", prompts_per_step=4,
                       samples_per_prompt=8, prompt_pool=12 if window > 1 else 0, temperature=1.0, top_p=0.95,
                       rise=last["reward/total"] - first["reward/total"],
                       rise_standard_error=0.0421 if window > 1 else math.nan,
                       fifths={k: [0.1 * i + 0.01 * len(k) for i in range(5)] for k in KEYS} if window > 1 else {},
                       variant="paper", weights={"accuracy": 1.0, "format": 1.0, "degradation": 1.0, "length": 0.5},
                       first=first, last=last, median_step_time=7.25)
        s["rl_eval"] = dict(examples=64, valid_chains=0.96875, accuracy=0.53125, strict_accuracy=0.515625,
                            chance=0.25, mean_tokens=41.0, sample="y")
    return s


# The sample chain is cut at 600 characters: its first line (28 characters) and 572 of the 700 x.
EXPECTED_FULL = """\
# robust_r1_jax demo

Dataset: {'train': 640, 'validation': 64} shapes questions at 84 px, mean summed intensity 1.2345. Tokenizer: 1024 tokens. Longest training prompt 61 tokens, chain 47; SFT rows 128, prompt bucket 64, at most 80 new tokens.

## SFT

Model preset `demo`, 300 steps, loss 6.912 -> 0.404 (mean of the last 10%: 0.420; 0 skipped).

## Held-out degraded images (greedy)

| model | examples | valid chains | answer accuracy | strict accuracy | chance | mean tokens |
|---|---|---|---|---|---|---|
| SFT | 64 | 98.4% | 51.6% | 50.0% | 25.0% | 47 |
| SFT+RL | 64 | 96.9% | 53.1% | 51.6% | 25.0% | 41 |

Valid: the SPEC §3 format regex matches. Answer accuracy: the evaluation's answer extractor; strict: the first ANSWER block is the option index.

## GRPO

30 steps of 4 prompts x 8 samples (prompts from the first 12 training examples), temperature 1, top-p 0.95, r_deg variant `paper`, reward weights: accuracy 1, format 1, degradation 1, length 0.5; median step 7.2 s. Means over the first and last 3 step(s):

| | total | r_deg | r_len | r_fmt | r_acc | length | KL |
|---|---|---|---|---|---|---|---|
| first | 1.551 | 0.412 | 0.300 | 0.900 | 0.250 | 44.2 | 0.0001 |
| last | 1.939 | 0.501 | 0.350 | 0.970 | 0.500 | 41.5 | 0.0034 |

Total reward rise, last minus first window: +0.388 (standard error 0.042 from the per-step means).

Means over fifths of the run:

| | 1/5 | 2/5 | 3/5 | 4/5 | 5/5 |
|---|---|---|---|---|---|
| total | 0.120 | 0.220 | 0.320 | 0.420 | 0.520 |
| degradation | 0.180 | 0.280 | 0.380 | 0.480 | 0.580 |
| length | 0.130 | 0.230 | 0.330 | 0.430 | 0.530 |
| format | 0.130 | 0.230 | 0.330 | 0.430 | 0.530 |
| accuracy | 0.150 | 0.250 | 0.350 | 0.450 | 0.550 |

## Time

| stage | wall s | CPU s (user+sys) |
|---|---|---|
| synth | 12 | 20 |
| tokenizer | 10 | 10 |
| sft | 201 | 391 |
| total | 546 | 942 |

CPU seconds over 2 cores: 471 s per core for the whole run.

Sample held-out chain (SFT, greedy):

```
<TYPE>noise(0.40)<TYPE_END>
""" + "x" * 572 + "\n```\n"


def _without(text, start, end):
    return text[:text.index(start)] + text[text.index(end):]


def test_report_text_is_unchanged_with_rl():
    assert demo_report.markdown(summary()) == EXPECTED_FULL


def test_report_text_is_unchanged_with_one_step_windows_and_no_prompt_pool():
    want = (EXPECTED_FULL.replace("(prompts from the first 12 training examples)", "(all prompts)")
            .replace("last 3 step(s)", "last 1 step(s)")
            .replace("(standard error 0.042 from the per-step means)", "(one step per window)"))
    assert demo_report.markdown(summary(window=1)) == _without(want, "\n\nMeans over fifths", "\n\n## Time")


def test_report_text_is_unchanged_without_rl():
    want = _without(EXPECTED_FULL, "\n\n## GRPO", "\n\n## Time")
    want = want.replace("| SFT+RL | 64 | 96.9% | 53.1% | 51.6% | 25.0% | 41 |\n", "")
    assert demo_report.markdown(summary(with_rl=False)) == want


def test_rl_summary_windows_rise_and_fifths():
    history = [dict({key: 0.5 for key in KEYS}, **{"reward/total": float(step), "step_time": 2.0 + step})
               for step in range(20)]
    rewards = dict(variant="paper", accuracy=1.0, format=1.0, degradation=1.0, length=1.0)
    config = ConfigDict(dict(rl=dict(data=dict(global_batch_size=4, split="train[:32]"), grpo=dict(num_samples=8),
                                     sampling=dict(temperature=1.0, top_p=0.95), rewards=rewards),
                             synth=dict(synth=dict(num_train=16))))
    got = demo_report.rl_summary({"history": history, "model_dir": "m"}, config)
    assert got["window"] == 2 and got["steps"] == 20 and got["prompt_pool"] == 16
    assert got["prompts_per_step"] == 4 and got["samples_per_prompt"] == 8 and got["top_p"] == 0.95
    assert got["weights"] == {"accuracy": 1.0, "format": 1.0, "degradation": 1.0, "length": 1.0}
    assert got["first"]["reward/total"] == 0.5 and got["last"]["reward/total"] == 18.5 and got["rise"] == 18.0
    # each window's per-step variance (0.5) over its 2 steps, both windows: sqrt(0.25 + 0.25)
    assert got["rise_standard_error"] == pytest.approx(math.sqrt(0.5))
    assert got["fifths"]["reward/total"] == [1.5, 5.5, 9.5, 13.5, 17.5]
    assert got["median_step_time"] == 12.0  # the first step (compilation) is left out: median of 3 .. 21
    assert demo_report.rl_summary(None, config) is None


def test_sft_summary_and_write(tmp_path):
    got = demo_report.sft_summary({"losses": [float(10 - i) for i in range(10)], "skipped": 1, "model_dir": "m"})
    assert (got["steps"], got["first_loss"], got["last_loss"], got["last_mean_loss"]) == (10, 10.0, 1.0, 1.0)
    s = summary()
    text = demo_report.write(s, str(tmp_path))
    assert text == EXPECTED_FULL == (tmp_path / "report.md").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "summary.json").read_text())["sft"] == s["sft"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".report", os.readlink(tmp_path / ".report"), "report.md", "summary.json"])  # written as one set
