"""R-Bench JSON answers go through the one answer mapping (data/options.py): index, letter or option text."""
import json

import numpy as np
from PIL import Image

from robust_r1_jax.eval import benchmarks


def test_rbench_json_answers_as_index_letter_or_text(tmp_path):
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "0.png")
    entry = {"image": "images/0.png", "question": "How many?", "options": ["None", "Two", "None", "One"]}
    answers = [1, "c", "One", "None", "E", True]
    entries = [{**entry, "id": str(i), "answer": a} for i, a in enumerate(answers)]
    (tmp_path / "low.json").write_text(json.dumps(entries))
    rows = benchmarks.read_rbench(str(tmp_path))["low"]
    assert [row.record.answer if row.record else None for row in rows] == [1, 2, 3, None, None, None]
    assert rows[3].problem.endswith("entry 3: answer 'None' matches options [0, 2] (duplicated option text): ambiguous")
    assert rows[4].problem.endswith("entry 4: answer 'E' is past the last option letter D")
    assert rows[5].problem.endswith("entry 5: answer True names none of 4 options")
