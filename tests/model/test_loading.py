"""model/loading.py: one loader for the three checkpoint layouts, the tokenizer + image settings, their pairing."""
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
from hf_reference import hf_model, tiny_config  # noqa: E402

from robust_r1_jax.model import loading, orbax_io  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hf") / "tiny")
    hf_model(tiny_config(), seed=3).save_pretrained(path)
    return path


def test_hf_and_orbax_layouts_load_to_the_same_model(hf_dir, tmp_path):
    from_hf = loading.load_model(hf_dir)
    orbax_io.save(from_hf, str(tmp_path / "orbax"))
    assert loading.is_hf_dir(hf_dir) and loading.is_orbax_model(str(tmp_path / "orbax"))
    assert not loading.is_training_checkpoint(str(tmp_path / "orbax"))
    from_orbax = loading.load_model(str(tmp_path / "orbax"))
    ids = np.arange(10)[None]
    np.testing.assert_array_equal(np.asarray(from_hf(ids)), np.asarray(from_orbax(ids)))
    assert loading.read_config(hf_dir).text == loading.read_config(str(tmp_path / "orbax")).text
    # dtype None keeps what was saved; a dtype sets parameters and compute alike
    assert loading.load_model(str(tmp_path / "orbax"), None).config.param_dtype == "float32"
    half = loading.load_model(str(tmp_path / "orbax"), "bfloat16")
    assert (half.config.param_dtype, half.config.dtype) == ("bfloat16", "bfloat16")
    assert {x.dtype for x in jax.tree.leaves(nnx.state(half, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}


def test_what_is_not_a_model_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        loading.load_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="holds neither a Hugging Face checkpoint"):
        loading.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no tokenizer .* in .*'demo SFT'"):
        loading.load_processor(str(tmp_path), name="demo SFT")


def test_runtime_settings_keep_the_weights(hf_dir):
    model = loading.load_model(hf_dir)
    other = loading.with_runtime_settings(model, remat="full", attention_impl="xla")
    assert other.config.remat == "full" and other.config.param_dtype == model.config.param_dtype
    ids = np.arange(6)[None]
    np.testing.assert_array_equal(np.asarray(model(ids)), np.asarray(other(ids)))
    assert loading.with_runtime_settings(model, remat=model.config.remat) is model


class _Processor:
    def __init__(self, image_token_id, size, image_processor):
        self.image_token_id, self.tokenizer, self.image_processor = image_token_id, [0] * size, image_processor


def test_a_tokenizer_of_another_model_is_refused(hf_dir):
    model = loading.load_model(hf_dir)
    config = model.config
    v = config.vision
    cuts = types.SimpleNamespace(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                 merge_size=v.spatial_merge_size)
    loading.check_pairing(model, _Processor(config.image_token_id, config.text.vocab_size, cuts))
    with pytest.raises(ValueError, match=r"model 'x': .*<\|image_pad\|> is 1 in the tokenizer.*vocabulary only"):
        loading.check_pairing(model, _Processor(1, config.text.vocab_size + 1, cuts), "x")
    sixteen = types.SimpleNamespace(patch_size=16, temporal_patch_size=v.temporal_patch_size,
                                    merge_size=v.spatial_merge_size)
    with pytest.raises(ValueError, match=r"image processor cuts \(patch, temporal patch, merge\) = \(16,"):
        loading.check_pairing(model, _Processor(config.image_token_id, config.text.vocab_size, sixteen))


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_a_training_checkpoint_loads_in_its_layer_layout(hf_dir, tmp_path, scan):
    import orbax.checkpoint as ocp
    model = loading.with_runtime_settings(loading.load_model(hf_dir), scan_layers=scan)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    halves = {"trainable": {"language": params["language"]}, "frozen": {"visual": params["visual"]}}
    path = str(tmp_path / "ckpt")
    manager = ocp.CheckpointManager(path, item_names=(loading.STATE, loading.DATA, loading.META))
    meta = {"model_config": model.config.to_dict()}
    manager.save(3, args=ocp.args.Composite(**{loading.STATE: ocp.args.StandardSave(halves),
                                               loading.DATA: ocp.args.JsonSave({}),
                                               loading.META: ocp.args.JsonSave(meta)}))
    manager.wait_until_finished()
    manager.close()
    restored = loading.load_model(path)
    assert restored.config.scan_layers == scan
    ids = np.arange(6)[None]
    np.testing.assert_array_equal(np.asarray(restored(ids)), np.asarray(model(ids)))


def test_a_missing_tokenizer_names_the_field_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer .* in .*; set --config.tokenizer to a folder that "
                                                r"holds the model's tokenizer"):
        loading.load_processor(str(tmp_path), field="--config.tokenizer")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"has tokenizer_config.json but none of the vocabulary files it "
                                                r"needs \(tokenizer.json, vocab.json, tokenizer.model\); set "
                                                r"--config.data.tokenizer"):
        loading.load_processor(str(tmp_path), field="--config.data.tokenizer")


def test_generate_and_grpo_name_their_tokenizer_field(hf_dir, tmp_path):
    from PIL import Image
    from robust_r1_jax.eval import generate
    from robust_r1_jax.rl import grpo
    from robust_r1_jax.train import run
    Image.new("RGB", (56, 56), "red").save(tmp_path / "photo.png")  # generate reads the image before the model
    config = generate.default_config()
    config.checkpoint, config.image, config.question = hf_dir, str(tmp_path / "photo.png"), "what is it?"
    with pytest.raises(FileNotFoundError, match=r"\(model 'tiny'\); set --config.tokenizer to"):
        generate.run(config)
    config = grpo.default_config()
    config.model.init_from, config.data.tokenizer = hf_dir, ""
    with pytest.raises(FileNotFoundError, match=r"no tokenizer .*; set --config.data.tokenizer to"):
        run.load_processor(config)


def test_a_tokenizer_folder_of_the_other_family_names_both_folders_and_the_fix():
    """A Qwen2.5-VL tokenizer folder (14-px patches) with a Qwen3-VL model (16-px): one line, checked on the
    model's config before any weight loads."""
    from robust_r1_jax.model import config as model_config
    config = model_config.qwen3_vl_tiny()
    fourteen = types.SimpleNamespace(patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = _Processor(config.image_token_id, config.text.vocab_size, fourteen)
    processor.directory = "/runs/demo/tokenizer"
    with pytest.raises(model_config.ModelFolderError) as caught:
        loading.check_pairing(config, processor, model_dir="/models/Qwen3-VL-4B-Instruct",
                              field="--config.data.tokenizer")
    assert str(caught.value) == (
        "the tokenizer in /runs/demo/tokenizer does not belong to the model in /models/Qwen3-VL-4B-Instruct: the "
        "image processor cuts (patch, temporal patch, merge) = (14, 2, 2) but the model's vision tower takes "
        "(16, 2, 2); use the model's own processor: --config.data.tokenizer=/models/Qwen3-VL-4B-Instruct")


@pytest.mark.parametrize("template, why", [
    # Qwen3's text template calls string methods on the content, which an image turn gives as a list of parts
    ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.lstrip() }}<|im_end|>\n{%- endfor %}",
     r"UndefinedError: 'list object' has no attribute 'lstrip'"),
    # a template that prints the parts as text places no <|image_pad|>
    ("{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}",
     r"ValueError: the chat template rendered 0 <\|image_pad\|> for 1 images"),
])
def test_a_text_only_chat_template_is_one_line_naming_the_folder_and_field(tmp_path, template, why):
    from test_processor import save_tiny_tokenizer
    from robust_r1_jax.model import config as model_config
    save_tiny_tokenizer(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(template)
    with pytest.raises(model_config.ModelFolderError,
                       match=rf"^{tmp_path}: its chat template cannot render a user turn with an image \({why}\); a "
                             r"text-only model's tokenizer cannot tokenise these rows; set --config.inspect.tokenizer "
                             r"to a folder that holds the model's tokenizer$"):
        loading.load_processor(str(tmp_path), field="--config.inspect.tokenizer")
    (tmp_path / "chat_template.jinja").unlink()   # without a template of its own: Qwen2.5-VL's, which renders
    assert loading.load_processor(str(tmp_path)).prompt("q", [2]).count("<|image_pad|>") == 2
