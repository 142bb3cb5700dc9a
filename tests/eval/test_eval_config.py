"""configs/eval_robust.py: models, tokenizers, names, benchmarks, and the demo default when nothing is given."""
import pytest

from robust_r1_jax.eval import defaults, robust


def config(**overrides):
    from configs.eval_robust import get_config
    cfg = get_config()
    cfg.update(overrides)
    return cfg


def test_checkpoints_names_tokenizers_and_suffix():
    specs = robust.model_specs(config(checkpoints=("/m/base", "/runs/sft/model", "/runs/rl/model"),
                                      tokenizers=("/m/base",), no_suffix=("base",)))
    assert [s.name for s in specs] == ["base", "sft/model", "rl/model"]  # folder names, made unique
    assert [s.tokenizer_path for s in specs] == ["/m/base"] * 3  # one tokenizer shared by all
    assert [s.use_suffix for s in specs] == [False, True, True]

    specs = robust.model_specs(config(checkpoints=("/a", " /b"), names=("A", "B"), tokenizers=("", "/tok"),
                                      no_suffix=("all",)))
    assert [(s.name, s.path, s.tokenizer_path, s.use_suffix) for s in specs] == [
        ("A", "/a", "", False), ("B", "/b", "/tok", False)]

    with pytest.raises(ValueError, match="config.names has 1 entries for 2 checkpoints"):
        robust.model_specs(config(checkpoints=("/a", "/b"), names=("A",)))
    with pytest.raises(ValueError, match="config.tokenizers has 2 entries for 3 checkpoints"):
        robust.model_specs(config(checkpoints=("/a", "/b", "/c"), tokenizers=("/t", "/u")))


def test_no_checkpoint_without_the_demo_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        robust.model_specs(config())
    message = str(error.value)
    assert defaults.DEMO_COMMAND in message
    assert defaults.DEMO_TOKENIZER_DIR in message and defaults.DEMO_SFT_MODEL in message


def test_no_checkpoint_evaluates_the_demo_models_before_and_after_rl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in (defaults.DEMO_TOKENIZER_DIR, defaults.DEMO_SFT_MODEL):
        (tmp_path / path).mkdir(parents=True)
    specs = robust.model_specs(config())
    assert [(s.name, s.path, s.tokenizer_path) for s in specs] == [
        ("demo SFT", defaults.DEMO_SFT_MODEL, defaults.DEMO_TOKENIZER_DIR)]
    (tmp_path / defaults.DEMO_RL_MODEL).mkdir(parents=True)
    assert [s.name for s in robust.model_specs(config())] == ["demo SFT", "demo SFT+RL"]
    # The demo TSV is the default benchmark; its absence is explained the same way.
    with pytest.raises(FileNotFoundError, match="demo_eval.tsv is missing.*configs/demo.py"):
        robust.load_benchmarks(config(), using_demo=True)


def test_a_benchmark_is_required_for_your_own_checkpoints():
    with pytest.raises(ValueError, match="no benchmark given: set --config.tsvs"):
        robust.load_benchmarks(config(checkpoints=("/a",)), using_demo=False)


NO_BENCHMARK = ("error: no benchmark given: set --config.tsvs=a.tsv (a VLMEvalKit MCQ TSV; several as "
                "--config.tsvs='(\"a.tsv\", \"b.tsv\")') and/or --config.rbench_dir=<local R-Bench copy>")


@pytest.mark.parametrize("overrides,lines", [
    ({}, [NO_BENCHMARK]),
    ({"levels": ()}, [NO_BENCHMARK, "error: config.levels: no benchmark level given"]),
    ({"tsvs": ("bench.tsv",), "levels": ("clean", "75%")}, [
        "error: config.levels: unknown benchmark level '75%'; expected names ['clean', '25%', '50%', '100%'] or "
        "intensities [0.0, 0.23, 0.45, 0.9]"]),
], ids=["no-benchmark", "no-benchmark-no-level", "unknown-level"])
def test_eval_with_nothing_to_evaluate_is_one_error_line_per_field_before_any_load(overrides, lines, monkeypatch,
                                                                                    capsys, tmp_path):
    from robust_r1_jax import main
    from robust_r1_jax.eval import inference

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")
    monkeypatch.setattr(inference, "load_model", refuse)
    with pytest.raises(SystemExit) as stopped:
        main.run_mode(config(checkpoints=(str(tmp_path / "model"),), workdir=str(tmp_path / "w"), **overrides))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == ["invalid config:", *lines]
    assert not (tmp_path / "w").exists()


def test_settings_from_the_config():
    settings = robust.settings_from_config(config(prompt_buckets=(128, 256), patch_buckets=(16,), batch_size=3))
    assert settings.prompt_buckets == (128, 256) and settings.patch_buckets == (16,)
    assert settings.batch_size == 3 and settings.temperature == 0.0 and settings.max_new_tokens == 1024


def test_as_list():
    assert robust.as_list(()) == [] and robust.as_list((" ", "")) == []
    assert robust.as_list(("a", " b", "")) == ["a", "b", ""]
    assert robust.as_list(("x", 2)) == ["x", "2"] and robust.as_list("one") == ["one"]


def test_the_demo_models_are_evaluated_with_the_protocol_they_learned():
    config = robust.default_config()
    assert config.protocol == "vlmevalkit"
    assert robust.run_settings(config).eval_protocol == "indexed"  # no checkpoint: the demo models
    config.checkpoints = ("/ckpt/Qwen2.5-VL-3B-Instruct",)
    assert robust.run_settings(config).eval_protocol == "vlmevalkit"
    config.protocol = "indexed"
    assert robust.run_settings(config).eval_protocol == "indexed"
