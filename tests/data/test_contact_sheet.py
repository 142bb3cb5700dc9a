"""The contact sheet's row labels."""
import numpy as np

from robust_r1_jax.data.contact_sheet import contact_label


def _example(seed, prompt_answer=""):
    return {"id": "r2", "degradation_types": ["darkness"], "degradation_intensities": np.array([0.2], np.float32),
            "options": ["red", "green", "blue"], "answer": 2, "degradation_seed": seed, "question": "Colour?",
            "prompt_answer": prompt_answer}


def test_a_synthesised_example_shows_clean_and_degraded():
    assert contact_label(_example(7)) == (
        "r2  (seed 7)\nclean | degraded: darkness(0.20)  (sum s = 0.20)\nQ: Colour?\nA: blue")


def test_a_pre_degraded_example_does_not_call_its_image_clean_and_shows_its_own_label():
    assert contact_label(_example(-1, "C")) == (
        "r2  (pre-degraded source: its image as shipped, shown twice)\nthe chain's <TYPE>: darkness(0.20)  "
        "(sum s = 0.20)\nQ: Colour?\nA: blue  (the source's turn: C)")
