"""Exported model folders are complete and self-contained: transformers loads the tokenizer, chat template, image
processor, generation config and model from the folder alone, in the source's dtype, with normal file modes; a
re-export replaces a folder only once the new one is complete; inspect and convert read training checkpoints."""
import json
import os
import stat
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from flax import nnx
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import hf_logits, hf_model, image_tokens_prompt, tiny_config  # noqa: E402

from robust_r1_jax.model import assets, convert, hf, loading, orbax_io  # noqa: E402

# A vision-language template as such folders ship (image parts render a pad; loading refuses one that cannot).
TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
            "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
            "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SOURCE_PROCESSOR = {"min_pixels": 3136, "max_pixels": 50176, "patch_size": 14, "temporal_patch_size": 2,
                    "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711],
                    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A stand-in for a downloaded Qwen2.5-VL-Instruct folder: bf16 shards with an index, a Qwen2-style tokenizer
    with a chat template, preprocessor and generation configs."""
    from transformers import AutoTokenizer, GenerationConfig
    from robust_r1_jax.data.tokenizer import build_qwen2_style_tokenizer
    cfg = tiny_config()
    root = tmp_path_factory.mktemp("export")
    ref = hf_model(cfg, seed=5).to(torch.bfloat16)
    src = str(root / "Qwen2.5-VL-tiny")
    ref.save_pretrained(src, max_shard_size="150KB")
    build_qwen2_style_tokenizer(str(root / "tok"), ["what colour is the square? the answer is red."] * 4,
                                cfg.text.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tok"))
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(src)
    with open(os.path.join(src, "preprocessor_config.json"), "w") as f:
        json.dump(SOURCE_PROCESSOR, f)
    GenerationConfig(bos_token_id=cfg.bos_token_id, pad_token_id=cfg.bos_token_id, do_sample=True,
                     eos_token_id=[cfg.eos_token_id, cfg.bos_token_id], repetition_penalty=1.05, temperature=0.1,
                     top_p=0.001, top_k=1).save_pretrained(src)
    return cfg, ref, src, root


def test_a_converted_folder_loads_in_transformers_with_its_tokenizer_and_configs(source, umask_022):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, Qwen2_5_VLForConditionalGeneration
    # AutoImageProcessor / AutoProcessor pick the torchvision backend, which is not installed: the PIL class.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    cfg, ref, src, root = source
    assert convert.convert(src, str(root / "orbax")) == "hf->orbax"
    assert convert.convert(str(root / "orbax"), str(root / "hf")) == "orbax->hf"
    out = str(root / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "generation_config.json"):
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(src, name), "rb").read(), name
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["dtype"] == "bfloat16" and "torch_dtype" not in config
    with safe_open(os.path.join(out, "model.safetensors"), "numpy") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert mode(out) == 0o755 and {mode(os.path.join(out, n)) for n in os.listdir(out)} == {0o644}

    want, got = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(out)
    assert len(got) == len(want) == cfg.text.vocab_size
    messages = [{"role": "user", "content": "what colour is the square?"}]
    assert (got.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            == want.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    assert got("the answer is red.")["input_ids"] == want("the answer is red.")["input_ids"]
    assert GenerationConfig.from_pretrained(out).to_dict() == GenerationConfig.from_pretrained(src).to_dict()
    assert AutoConfig.from_pretrained(out).model_type == "qwen2_5_vl"
    assert Qwen2VLImageProcessorPil.from_pretrained(out).size.longest_edge == SOURCE_PROCESSOR["max_pixels"]

    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    assert back.dtype == torch.bfloat16
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    rng = np.random.default_rng(0)
    ids = np.array([image_tokens_prompt(rng, cfg, [(1, 4, 4)], [3, 2])])
    pix = rng.normal(size=(16, cfg.vision.patch_dim)).astype(np.float32)
    # Same weights; compared in float32, where both models take the same attention path.
    ref32 = Qwen2_5_VLForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    back32 = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    np.testing.assert_array_equal(hf_logits(back32, ids, pixel_values=pix, grid=np.array([(1, 4, 4)])),
                                  hf_logits(ref32, ids, pixel_values=pix, grid=np.array([(1, 4, 4)])))


def test_shards_and_index_above_the_shard_size(source, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration
    cfg, ref, src, _ = source
    model = loading.load_model(src, None)
    hf.save(model, str(tmp_path / "out"), max_shard_size="100KB", asset_sources=(src,))
    index = json.load(open(tmp_path / "out" / "model.safetensors.index.json"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all(os.path.getsize(tmp_path / "out" / s) <= 100_000 + 1024 for s in shards)  # + safetensors header
    source_index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    assert index["metadata"]["total_size"] == source_index["metadata"]["total_size"]
    assert set(index["weight_map"]) == set(source_index["weight_map"])
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
    assert torch.equal(back.model.language_model.norm.weight, ref.model.language_model.norm.weight)


def test_a_source_without_generation_config_gets_a_greedy_one(source, tmp_path):
    from transformers import GenerationConfig
    cfg, _, src, _ = source
    model = loading.load_model(src, None)
    orbax_io.save(model, str(tmp_path / "m"))
    generation = GenerationConfig.from_pretrained(str(tmp_path / "m"))
    assert generation.do_sample is False and generation.eos_token_id == [cfg.eos_token_id, cfg.bos_token_id]


def test_a_training_export_carries_the_tokenizer_and_the_runs_image_settings(source, tmp_path):
    from robust_r1_jax.model.processor import ImageProcessor
    cfg, _, src, _ = source
    model = loading.load_model(src, "float32")
    orbax_io.save(model, str(tmp_path / "model"), asset_sources=("", str(tmp_path / "no-such"), src),
                  image_processor=ImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16))
    processor = loading.load_processor(str(tmp_path / "model"))  # what generate / eval do with the folder alone
    assert processor.image_processor.max_pixels == 28 * 28 * 16
    assert len(processor.tokenizer) == cfg.text.vocab_size
    saved = json.load(open(tmp_path / "model" / "preprocessor_config.json"))
    assert saved["size"] == {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16}
    assert saved["image_processor_type"] == SOURCE_PROCESSOR["image_processor_type"]


def test_a_tokenizer_without_a_chat_template_is_exported_with_qwen2_5_vls(source, tmp_path):
    """The project's own tokenizers have no template; the exported folder gets the one the processor renders in
    Python, so transformers' apply_chat_template gives the prompt our processor gives."""
    from transformers import AutoTokenizer
    from robust_r1_jax.model.processor import Processor, chat_prompt
    cfg, _, src, root = source
    plain = tmp_path / "plain-tokenizer"
    AutoTokenizer.from_pretrained(str(root / "tok")).save_pretrained(str(plain))
    assert not assets.has_chat_template(str(plain))
    processor_before = Processor(loading.load_processor(str(plain)).tokenizer)
    orbax_io.save(loading.load_model(src, "float32"), str(tmp_path / "model"), asset_sources=(str(plain),))
    assert assets.has_chat_template(str(tmp_path / "model"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour?"}]}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == chat_prompt(
        "what colour?")
    after = loading.load_processor(str(tmp_path / "model"))  # now renders through the template: same prompt
    assert after.prompt("what colour?", [4]) == processor_before.prompt("what colour?", [4])


class Killed(Exception):
    pass


def test_a_failed_reexport_leaves_the_old_model_loadable(source, tmp_path, monkeypatch):
    _, _, src, _ = source
    old = loading.load_model(src, "float32")
    path = str(tmp_path / "model")
    orbax_io.save(old, path, asset_sources=(src,))
    new = loading.load_model(src, "float32")
    nnx.update(new, nnx.map_state(lambda _, v: v * 2, nnx.state(new, nnx.Param)))
    real_save = ocp.StandardCheckpointer.save

    def save_then_die(self, *args, **kwargs):  # the new weights are committed, the rest is never written
        real_save(self, *args, **kwargs)
        self.wait_until_finished()
        raise Killed

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save_then_die)
    with pytest.raises(Killed):
        orbax_io.save(new, path, asset_sources=(src,))
    monkeypatch.undo()
    ids = np.arange(8)[None]
    np.testing.assert_array_equal(np.asarray(loading.load_model(path)(ids)), np.asarray(old(ids)))
    assert os.listdir(tmp_path) == ["model"]  # no staging folder left behind
    orbax_io.save(new, path, asset_sources=(src,))  # and the next export goes through
    np.testing.assert_array_equal(np.asarray(loading.load_model(path)(ids)), np.asarray(new(ids)))


def test_a_failed_hf_export_leaves_the_old_folder(source, tmp_path, monkeypatch):
    _, _, src, _ = source
    model = loading.load_model(src, None)
    hf.save(model, str(tmp_path / "hf"), asset_sources=(src,))
    before = sorted(os.listdir(tmp_path / "hf"))
    monkeypatch.setattr(assets, "carry_over", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        hf.save(model, str(tmp_path / "hf"), dtype="float32")
    assert sorted(os.listdir(tmp_path / "hf")) == before and os.listdir(tmp_path) == ["hf"]
    assert loading.read_config(str(tmp_path / "hf")).param_dtype == "bfloat16"


def training_checkpoint(model, path, run_config):
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    halves = {"trainable": {"language": params["language"]}, "frozen": {"visual": params["visual"]}}
    manager = ocp.CheckpointManager(path, item_names=(loading.STATE, loading.DATA, loading.META))
    meta = {"model_config": model.config.to_dict(), "config": json.dumps(run_config)}
    manager.save(4, args=ocp.args.Composite(**{loading.STATE: ocp.args.StandardSave(halves),
                                               loading.DATA: ocp.args.JsonSave({}),
                                               loading.META: ocp.args.JsonSave(meta)}))
    manager.wait_until_finished()
    manager.close()


def test_inspect_names_the_stored_dtype_and_what_the_folder_holds(source):
    _, _, src, _ = source
    text = convert.describe(src)
    assert "stored dtype: bfloat16" in text and '"param_dtype": "bfloat16"' in text
    assert "weights: model-00001-of-00003.safetensors, model-00002-of-00003.safetensors, " \
           "model-00003-of-00003.safetensors, model.safetensors.index.json" in text
    assert "tokenizer: chat_template.jinja, tokenizer.json, tokenizer_config.json" in text
    assert "processor: preprocessor_config.json" in text and "generation: generation_config.json" in text


def test_inspect_and_convert_read_a_training_checkpoint_folder(source, tmp_path):
    from transformers import AutoTokenizer
    _, _, src, _ = source
    model = loading.load_model(src, "float32")
    workdir = tmp_path / "run"
    training_checkpoint(model, str(workdir / "checkpoints"), {"data": {"tokenizer": src},
                                                              "model": {"init_from": ""}})
    text = convert.describe(str(workdir / "checkpoints"))
    assert "layout: training checkpoint folder (steps 4; the newest is read)" in text
    assert "stored dtype: float32" in text
    assert convert.convert(str(workdir / "checkpoints"), str(tmp_path / "hf")) == "orbax->hf"
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "hf"))) == len(AutoTokenizer.from_pretrained(src))
    assert json.load(open(tmp_path / "hf" / "config.json"))["dtype"] == "float32"


def test_a_run_trained_in_bf16_converts_to_bf16_unless_asked_for_fp32(source, tmp_path):
    """A training checkpoint keeps fp32 master weights; the release is stored in the run's compute dtype."""
    _, _, src, _ = source
    model = loading.with_runtime_settings(loading.load_model(src, "float32"), dtype="bfloat16")
    assert model.config.param_dtype == "float32"
    checkpoints = str(tmp_path / "run" / "checkpoints")
    training_checkpoint(model, checkpoints, {"data": {"tokenizer": src}, "model": {"init_from": src}})
    convert.convert(checkpoints, str(tmp_path / "bf16"))
    convert.convert(checkpoints, str(tmp_path / "fp32"), "float32")
    for name, want, kind in (("bf16", "bfloat16", "BF16"), ("fp32", "float32", "F32")):
        assert json.load(open(tmp_path / name / "config.json"))["dtype"] == want
        with safe_open(str(tmp_path / name / "model.safetensors"), "numpy") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {kind}


def test_a_runs_model_folder_is_stored_in_its_compute_dtype_with_the_started_models_pixel_bounds(source, tmp_path):
    from robust_r1_jax.model.processor import ImageProcessor
    from robust_r1_jax.train import run, sft
    _, _, src, _ = source
    model = loading.with_runtime_settings(loading.load_model(src, "float32"), dtype="bfloat16")
    config = sft.default_config()
    config.model.init_from, config.model.dtype = src, "bfloat16"
    training_bounds = ImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16)
    run.export(config, model, str(tmp_path / "model"), training_bounds)
    saved = json.load(open(tmp_path / "model" / orbax_io.CONFIG_FILE))
    assert saved["param_dtype"] == "bfloat16"
    assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(orbax_io.restore(str(tmp_path / "model")),
                                                             nnx.Param))} == {"bfloat16"}
    processor = json.load(open(tmp_path / "model" / "preprocessor_config.json"))
    assert (processor["min_pixels"], processor["max_pixels"]) == (3136, 50176)  # the source's, not the training's
    config.train.export_dtype = "float32"
    run.export(config, model, str(tmp_path / "fp32"), training_bounds)
    assert json.load(open(tmp_path / "fp32" / orbax_io.CONFIG_FILE))["param_dtype"] == "float32"
    config.model.init_from = ""   # trained from scratch: the only bounds there are are the training data's
    run.export(config, model, str(tmp_path / "scratch"), training_bounds)
    processor = json.load(open(tmp_path / "scratch" / "preprocessor_config.json"))
    assert processor["max_pixels"] == 28 * 28 * 16


def test_transformers_loads_the_export_without_the_regex_warning_and_tokenises_as_the_source(
        source, tmp_path, qwen2_vocabulary_dir):
    """transformers >= 5 takes a local folder whose config.json lacks ``transformers_version`` for a Mistral one
    with a broken pre-tokenizer regex; its advice (``fix_mistral_regex=True``) would change Qwen's tokenisation."""
    import logging
    from transformers import AutoTokenizer
    from robust_r1_jax.data.tokenizer import build_qwen2_tokenizer
    _, _, src, _ = source
    tokenizer_dir = str(tmp_path / "qwen2")
    build_qwen2_tokenizer(qwen2_vocabulary_dir, tokenizer_dir)
    hf.save(loading.load_model(src, None), str(tmp_path / "hf"), asset_sources=(tokenizer_dir,))
    assert json.load(open(tmp_path / "hf" / "config.json"))["transformers_version"] == hf.TRANSFORMERS_VERSION
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        exported = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "regex" in r.getMessage()], [r.getMessage() for r in records]
    text = "iPhone McDonald"
    want = AutoTokenizer.from_pretrained(tokenizer_dir)(text)["input_ids"]
    assert exported(text)["input_ids"] == want and exported.decode(want) == text


def test_the_recorded_transformers_version_is_the_pinned_one():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pins = dict(line.split("#")[0].strip().split("==") for line in open(os.path.join(root, "requirements.txt"))
                if "==" in line)
    assert pins["transformers"] == hf.TRANSFORMERS_VERSION
