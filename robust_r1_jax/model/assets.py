"""The files of a model folder besides its weights: the tokenizer (with its chat template), the image processor's
settings and the generation config.

Every exported model folder (``convert`` either way, a training run's ``model/``) carries them over from its source,
so that transformers (``AutoTokenizer``, ``AutoImageProcessor``, ``GenerationConfig``), vLLM and this project's own
``generate`` / ``eval`` read the folder alone. Each group is copied whole from the first source that has it (mixing a
``vocab.json`` of one tokenizer with a ``tokenizer.json`` of another would be a third tokenizer); a source without a
``generation_config.json`` gets one built from the model config, and a tokenizer without a chat template (the
project's locally trained ones) gets Qwen2.5-VL's, the one ``Processor`` renders in Python for it.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterable, Sequence

from robust_r1_jax.model.config import ModelConfig
from robust_r1_jax.model.processor import QWEN2_5_VL_CHAT_TEMPLATE, folder_chat_template

# What transformers' tokenizers save_pretrained writes (byte-level BPE, sentencepiece) and the two chat template files.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model", "chat_template.json", "chat_template.jinja")
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")
PREPROCESSOR_FILE = "preprocessor_config.json"
GENERATION_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")


def has_tokenizer(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.json", "tokenizer_config.json"))


def has_chat_template(directory: str) -> bool:
    """Whether the folder's tokenizer or processor carries a chat template (``chat_template.jinja`` / ``.json`` or
    the ``chat_template`` field of ``tokenizer_config.json``)."""
    if folder_chat_template(directory) is not None:
        return True
    config = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(config):
        return False
    with open(config, encoding="utf-8") as f:
        return bool(json.load(f).get("chat_template"))


def _first_with(sources: Sequence[str], test) -> str | None:
    return next((s for s in sources if test(s)), None)


def _holds(name: str):
    return lambda directory: os.path.isfile(os.path.join(directory, name))


def _copy_group(source: str | None, names: Iterable[str], dst: str) -> list[str]:
    copied = []
    for name in names if source else ():
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(dst, name))  # contents only: the exported folder's own modes
            copied.append(name)
    return copied


def generation_config(config: ModelConfig) -> dict:
    """Greedy decoding that stops at ``<|im_end|>`` or ``<|endoftext|>`` (the ids Qwen2.5-VL-Instruct's
    generation_config.json names, here taken from the model config), for a source that ships none. Greedy is
    what this project's ``eval`` and ``generate`` use unless told otherwise."""
    return {"bos_token_id": config.bos_token_id, "eos_token_id": [config.eos_token_id, config.bos_token_id],
            "pad_token_id": config.bos_token_id, "do_sample": False}


def preprocessor_config(image_processor, base: dict | None = None) -> dict:
    """``preprocessor_config.json`` in transformers' Qwen2-VL image processor format, with the pixel bounds and
    patch settings of ``image_processor`` (a ``model.processor.ImageProcessor``) over ``base``'s other keys."""
    ip = image_processor
    settings = dict(base or {})
    settings.setdefault("image_processor_type", "Qwen2VLImageProcessor")
    settings.setdefault("processor_class", "Qwen2_5_VLProcessor")
    settings.update(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                    min_pixels=ip.min_pixels, max_pixels=ip.max_pixels,
                    size={"shortest_edge": ip.min_pixels, "longest_edge": ip.max_pixels},
                    patch_size=ip.patch_size, temporal_patch_size=ip.temporal_patch_size, merge_size=ip.merge_size,
                    image_mean=list(ip.image_mean), image_std=list(ip.image_std))
    return settings


def carry_over(dst: str, sources: Sequence[str], config: ModelConfig, image_processor=None,
               processor_source: str = "") -> list[str]:
    """Writes the non-weight files into the (staging) folder ``dst``; returns their names.

    ``sources``: local folders in order of preference (empty entries and non-folders are skipped): the tokenizer
    files come from the first that has a tokenizer, the processor files and the generation config each from the
    first that has them. ``image_processor``: the image settings the model was trained at, written over the
    source's ``preprocessor_config.json`` (the source's, or transformers' defaults, otherwise).
    ``processor_source``: a folder whose processor files win over ``sources``' (a training run's ``init_from``:
    the exported model keeps the pixel bounds of the model it started from, as released).
    """
    sources = [s for s in sources if s and "://" not in s and os.path.isdir(s)]
    processor_sources = [s for s in (processor_source,) if s and "://" not in s and os.path.isdir(s)] + sources
    written = _copy_group(_first_with(sources, has_tokenizer), TOKENIZER_FILES, dst)
    if written and not has_chat_template(dst):
        with open(os.path.join(dst, CHAT_TEMPLATE_FILE), "w", encoding="utf-8") as f:
            f.write(QWEN2_5_VL_CHAT_TEMPLATE)
        written.append(CHAT_TEMPLATE_FILE)
    written += _copy_group(_first_with(processor_sources, _holds(PREPROCESSOR_FILE)), PROCESSOR_FILES, dst)
    if image_processor is not None:
        path = os.path.join(dst, PREPROCESSOR_FILE)
        base = None
        if os.path.isfile(path):
            with open(path) as f:
                base = json.load(f)
        with open(path, "w") as f:
            json.dump(preprocessor_config(image_processor, base), f, indent=2)
        written.append(PREPROCESSOR_FILE)
    if not _copy_group(_first_with(sources, _holds(GENERATION_FILE)), (GENERATION_FILE,), dst):
        with open(os.path.join(dst, GENERATION_FILE), "w") as f:
            json.dump(generation_config(config), f, indent=2)
    return sorted(set(written) | {GENERATION_FILE})


def folder_contents(directory: str) -> dict[str, list[str]]:
    """What a model folder holds, by kind: ``weights`` (safetensors files and index, or orbax ``params/``),
    ``tokenizer``, ``processor``, ``generation`` and ``other``; empty kinds are left out."""
    kinds: dict[str, list[str]] = {kind: [] for kind in ("weights", "tokenizer", "processor", "generation", "other")}
    for name in sorted(os.listdir(directory)):
        if name.startswith("."):
            continue
        if name.endswith(WEIGHT_SUFFIXES) or name == "params":
            kind = "weights"
        elif name in TOKENIZER_FILES:
            kind = "tokenizer"
        elif name in PROCESSOR_FILES:
            kind = "processor"
        elif name == GENERATION_FILE:
            kind = "generation"
        else:
            kind = "other"
        kinds[kind].append(name + ("/" if os.path.isdir(os.path.join(directory, name)) else ""))
    return {kind: names for kind, names in kinds.items() if names}
