"""A stopped evaluation keeps every finished (model, benchmark, level) on disk, a rerun with the same config reuses
them and writes the report set an uninterrupted run writes; another config evaluates anew (eval/finished.py)."""
import dataclasses
import json
import os

import pytest
from eval_helpers import ScriptedAnswerer, stand_in_model, write_tsv_with_bad_rows

from robust_r1_jax.eval import finished, inference, report, robust

LEVELS = ["clean", "25%", "50%", "100%"]
SETTINGS = robust.Settings(max_new_tokens=256, batch_size=5, prompt_buckets=(256, 512), patch_buckets=(16,),
                          eval_protocol="indexed")
CHUNKS = 3  # 14 rows (2 unreadable) in batches of 5: three generate calls per level


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "shapes_eval.tsv"
    write_tsv_with_bad_rows(path)
    return str(path)


class Counting(ScriptedAnswerer):
    """The scripted answerer, counting its generate calls and raising at call ``fail_at`` (a crash mid-run)."""

    def __init__(self, tokenizer, fail_at=0):
        super().__init__(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"), "noise(0.50)")
        self.calls, self.fail_at = 0, fail_at

    def generate(self, *args):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed mid-level")
        return super().generate(*args)


@pytest.fixture
def loaders(tokenizer, processor, monkeypatch):
    loads = []

    def load_model(path, dtype):
        loads.append(path)
        return stand_in_model(tokenizer)

    monkeypatch.setattr(inference, "load_model", load_model)
    monkeypatch.setattr(inference, "load_processor", lambda spec, *bounds: processor)
    return loads


def _evaluate(tsv, model_dir, answerer, store, settings=SETTINGS):
    specs = [inference.ModelSpec("scripted", model_dir)]
    return robust.evaluate(specs, [robust.synthetic_benchmark(tsv, LEVELS)], settings,
                           generate_fn=answerer.generate, store=store)


def _report_files(results, predictions, workdir):
    report.write_reports(results, predictions, workdir)
    return {name: open(os.path.join(workdir, name), "rb").read()
            for name in (report.JSON_NAME, report.MARKDOWN_NAME, report.PREDICTIONS_NAME)}


def test_a_stopped_evaluation_resumes_to_the_uninterrupted_reports(tokenizer, tsv, tmp_path, loaders):
    model_dir = str(tmp_path / "model")
    os.makedirs(model_dir)
    whole = _evaluate(tsv, model_dir, Counting(tokenizer), store=None)

    store = finished.FinishedLevels(str(tmp_path / "eval"))
    crashing = Counting(tokenizer, fail_at=CHUNKS + 2)  # inside the second level
    with pytest.raises(RuntimeError, match="killed mid-level"):
        _evaluate(tsv, model_dir, crashing, store)
    saved = sorted(os.listdir(os.path.join(store.directory, "scripted", "shapes_eval")))
    assert saved == ["clean.json"]

    resumed_answerer = Counting(tokenizer)
    resumed = _evaluate(tsv, model_dir, resumed_answerer, store)
    assert resumed_answerer.calls == CHUNKS * (len(LEVELS) - 1)  # the clean level was not generated again
    assert resumed == whole
    assert (_report_files(*resumed, str(tmp_path / "a")) == _report_files(*whole, str(tmp_path / "b")))

    loaders.clear()
    again = Counting(tokenizer)
    assert _evaluate(tsv, model_dir, again, store) == whole
    assert again.calls == 0 and loaders == []  # every level finished: the model is not even loaded


def test_another_config_or_model_folder_evaluates_anew(tokenizer, tsv, tmp_path, loaders):
    model_dir = str(tmp_path / "model")
    os.makedirs(model_dir)
    store = finished.FinishedLevels(str(tmp_path / "eval"))
    _evaluate(tsv, model_dir, Counting(tokenizer), store)
    other = Counting(tokenizer)
    _evaluate(tsv, model_dir, other, store, dataclasses.replace(SETTINGS, max_new_tokens=200))
    assert other.calls == CHUNKS * len(LEVELS)
    os.rename(model_dir, model_dir + ".old")  # a re-export swaps a new folder in by rename
    os.makedirs(model_dir)
    anew = Counting(tokenizer)
    _evaluate(tsv, model_dir, anew, store, dataclasses.replace(SETTINGS, max_new_tokens=200))
    assert anew.calls == CHUNKS * len(LEVELS)


def test_a_torn_or_foreign_level_file_is_evaluated_again(tokenizer, tsv, tmp_path, loaders):
    model_dir = str(tmp_path / "model")
    os.makedirs(model_dir)
    store = finished.FinishedLevels(str(tmp_path / "eval"))
    whole = _evaluate(tsv, model_dir, Counting(tokenizer), store)
    clean = os.path.join(store.directory, "scripted", "shapes_eval", "clean.json")
    with open(clean, "w") as f:
        f.write('{"key": ')  # a file cut short by hand (the store itself writes atomically)
    level_25 = os.path.join(store.directory, "scripted", "shapes_eval", "25.json")
    saved = json.load(open(level_25))
    saved["key"]["settings"]["seed"] = 99
    json.dump(saved, open(level_25, "w"))
    again = Counting(tokenizer)
    assert _evaluate(tsv, model_dir, again, store) == whole
    assert again.calls == 2 * CHUNKS
