"""Issue 16, kind 1 on the evaluation side: an item that decodes but cannot be used (the processor's aspect-ratio
limit, the degradation engine's 8-px minimum) is counted wrong, named by file:line, and the run goes on."""
import dataclasses

import numpy as np
import pytest
from eval_helpers import ScriptedAnswerer, good_records, stand_in_model

from robust_r1_jax.data import sources
from robust_r1_jax.eval import robust

LEVELS = ["clean", "25%", "50%", "100%"]
SETTINGS = robust.Settings(max_new_tokens=128, batch_size=3, prompt_buckets=(512,), patch_buckets=(16,))
BANNER, ICON = "901", "902"


def image_record(template, index: str, height: int, width: int):
    pixels = np.full((height, width, 3), 200, np.uint8)
    return dataclasses.replace(template, id=index, image_bytes=None, image_path=None, image_fn=lambda: pixels)


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    """Four good rows, then a 10x2100 px banner (aspect ratio 210) and a 4x4 px icon: lines 6 and 7."""
    good = good_records()[:4]
    path = tmp_path_factory.mktemp("unusable") / "odd_sizes.tsv"
    sources.write_vlmeval_tsv(good + [image_record(good[0], BANNER, 2100, 10), image_record(good[1], ICON, 4, 4)],
                              str(path))
    return str(path)


@pytest.fixture(scope="module")
def evaluated(tokenizer, processor, tsv):
    answerer = ScriptedAnswerer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"), "noise(0.50)")
    bench = robust.synthetic_benchmark(tsv, LEVELS)
    summaries, predictions = robust.evaluate_model("scripted", stand_in_model(tokenizer), processor, [bench],
                                                   SETTINGS, generate_fn=answerer.generate)
    return summaries["odd_sizes"], predictions


def test_a_banner_the_processor_rejects_counts_wrong_at_every_level(tsv, evaluated):
    summary, predictions = evaluated
    for level in LEVELS:
        banner = [p for p in predictions if p["level"] == level and p["index"] == BANNER]
        assert len(banner) == 1 and banner[0]["correct"] is False and banner[0]["output"] is None
        assert banner[0]["problem"] == (f"{tsv}:6 (index {BANNER}): the processor rejects the 10x2100 px image "
                                        f"(absolute aspect ratio must be smaller than 200, got 210.0)")
        assert summary["levels"][level]["total"] == 6  # kept in the denominator
    good = [p for p in predictions if p["index"] not in (BANNER, ICON)]
    assert len(good) == 16 and all(p["output"] is not None for p in good)
    assert {row["label"] for row in summary["failed_rows"]} == {BANNER, ICON}


def test_a_small_icon_is_evaluated_clean_and_counts_wrong_when_it_cannot_be_degraded(tsv, evaluated):
    summary, predictions = evaluated
    icon = {p["level"]: p for p in predictions if p["index"] == ICON}
    assert icon["clean"]["problem"] is None and icon["clean"]["output"] is not None
    for level in LEVELS[1:]:
        assert icon[level]["output"] is None and icon[level]["correct"] is False
        assert icon[level]["problem"] == (f"{tsv}:7 (index {ICON}): cannot degrade the image at {level}: "
                                          f"image must be at least 8x8, got 4x4")
    assert summary["levels"]["clean"]["failed"] == 1
    assert [summary["levels"][level]["failed"] for level in LEVELS[1:]] == [2, 2, 2]
