"""Issue 22 item 3 in evaluation and generate: ``prompt_style`` "upstream" joins the suffix to the question text
directly, as upstream trained the released Robust-R1 models; "project" keeps the project's prompts."""
import dataclasses

import pytest
from eval_helpers import ScriptedAnswerer, good_records, stand_in_model

from robust_r1_jax.data import chains, sources
from robust_r1_jax.eval import generate, protocols, robust

SUFFIX = chains.PROMPT_SUFFIX


def test_protocol_prompts_under_each_style():
    indexed = protocols.prompt_text("<image>Q?", ["a", "b"], "", "indexed", True, "upstream")
    assert indexed == "Q?\nOptions:\n0. a\n1. b" + SUFFIX
    assert protocols.prompt_text("Q?", ["a", "b"], "h", "indexed", True) == chains.format_prompt("h\nQ?", ["a", "b"])
    vlmeval = protocols.vlmevalkit_mcq_prompt("Q?", ["a", "b"], "h") + SUFFIX
    assert protocols.prompt_text("Q?", ["a", "b"], "h", "vlmevalkit", True, "upstream") == vlmeval
    assert protocols.prompt_text("Q?", ["a", "b"], "h", "vlmevalkit", True, "project") == vlmeval
    assert protocols.prompt_text("Q?", ["a"], "", "indexed", False, "upstream") == "Q?\nOptions:\n0. a"
    with pytest.raises(ValueError, match="unknown prompt_style 'raw'"):
        protocols.prompt_text("Q?", [], "", "indexed", True, "raw")


def test_generate_prompts_under_each_style():
    typed = "<image>\nWhich shape?\n1. circle\n2. square\n"
    assert generate.prompt_text(typed, (), True, "upstream") == "\nWhich shape?\n1. circle\n2. square\n" + SUFFIX
    assert generate.prompt_text("Q?", ("a", "b"), True, "upstream") == "Q?\nOptions:\n0. a\n1. b" + SUFFIX
    assert generate.prompt_text("Q?", ("a", "b"), True) == chains.format_prompt("Q?", ["a", "b"])
    assert generate.prompt_text(typed, (), False, "upstream") == typed.replace("<image>", "")
    from configs.generate import get_config
    assert get_config().prompt_style == "project"


def test_the_eval_config_carries_the_style_to_the_prompts(tokenizer, processor, tmp_path):
    config = robust.default_config()
    assert config.prompt_style == "project"
    config.prompt_style = "upstream"
    config.protocol = "indexed"
    settings = robust.settings_from_config(config)
    assert settings.prompt_style == "upstream"
    path = tmp_path / "two.tsv"
    sources.write_vlmeval_tsv(good_records()[:2], str(path))
    answerer = ScriptedAnswerer(tokenizer, tokenizer.convert_tokens_to_ids("<|im_end|>"), "noise(0.50)")
    small = dataclasses.replace(settings, max_new_tokens=64, batch_size=2, prompt_buckets=(512,), patch_buckets=(16,))
    robust.evaluate_model("scripted", stand_in_model(tokenizer), processor,
                          [robust.synthetic_benchmark(str(path), ["clean"])], small, generate_fn=answerer.generate)
    record = good_records()[0]
    expected = chains.format_question(record.question, record.options) + SUFFIX
    assert expected in tokenizer.decode(answerer.seen[0][0])
    config.prompt_style = "verbatim"
    with pytest.raises(ValueError, match="unknown prompt_style 'verbatim'"):
        robust.settings_from_config(config)
