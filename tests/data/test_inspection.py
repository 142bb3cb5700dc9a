"""The inspect mode on a dataset folder synth wrote: splits, summary and stored examples as text."""
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from robust_r1_jax.data import inspection, synth
from robust_r1_jax.data.records import MissingInput

CHAIN = ("<TYPE>gaussian noise(0.40)<TYPE_END>\n<INFLUENCE>grain<INFLUENCE_END>\n<REASONING>round<REASONING_END>\n"
         "<CONCLUSION>a circle<CONCLUSION_END>\n<ANSWER>2<ANSWER_END>")
HUMAN = "<image>Ignore <|image_pad|> here. Which shape is drawn?\n1. square\n2. circle"


def _config(path, num_examples=3):
    return ml_collections.ConfigDict(dict(mode="inspect", inspect=dict(path=str(path), num_examples=num_examples)))


def test_a_dataset_folder_prints_its_splits_summary_and_stored_examples(tmp_path, capsys):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "0.png")
    line = {"id": "q1", "image": "0.png", "conversations": [{"from": "human", "value": HUMAN},
                                                           {"from": "gpt", "value": CHAIN}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(line) + "\n" + json.dumps({**line, "image": "gone.png"}) + "\n")
    config = synth.default_config()
    config.workdir = str(tmp_path / "work")
    config.synth.update(dict(source="robust_r1_jsonl", source_path=str(tmp_path / "train.jsonl"),
                             image_root=str(tmp_path), num_train=1, num_validation=0, contact_sheet_size=0))
    synth.run(config)
    for path in (tmp_path / "work", tmp_path / "work" / "tfds", tmp_path / "work" / "tfds" / "robust_r1" / "1.0.0"):
        inspection.run_inspect(_config(path))
        out = capsys.readouterr().out
        assert out.startswith(f"dataset: {tmp_path / 'work' / 'tfds' / 'robust_r1' / '1.0.0'}\nsplits: train 1\n")
    assert '  type_aliases_applied: {"gaussian noise -> noise": 1}' in out
    assert "gone.png" in out and "  max_images_per_prompt: 1" in out
    assert "--- train[0] id 'q1'" in out and "  image: 30x20 px, plus 0 extra image(s)" in out
    assert "  option 0: 'square'\n  option 1: 'circle'   <- answer\n" in out
    assert ("  prompt (source's own turn, prompt_style=upstream): "
            "'Ignore <|image_pad|> here. Which shape is drawn?\\n1. square\\n2. circle'") in out
    assert "  prompt_answer (the answer in that turn's labels): '2'" in out
    assert "  degradations: noise(0.40) (seed -1" in out and "<ANSWER>1<ANSWER_END>'" in out


def test_a_path_that_is_neither_a_model_nor_a_dataset_is_one_error(tmp_path):
    with pytest.raises(MissingInput, match="does not exist"):
        inspection.run_inspect(_config(tmp_path / "nowhere"))
    with pytest.raises(MissingInput, match="a dataset folder synth wrote"):
        inspection.run_inspect(_config(tmp_path))


def test_a_folder_above_several_datasets_names_them(tmp_path):
    for version in ("1.0.0", "1.1.0"):
        (tmp_path / "tfds" / "robust_r1" / version).mkdir(parents=True)
        (tmp_path / "tfds" / "robust_r1" / version / "dataset_info.json").write_text("{}")
    with pytest.raises(MissingInput, match=r"inspect.path: dataset_dir .* holds 2 datasets, name one: .*1.0.0, "):
        inspection.run_inspect(_config(tmp_path))
