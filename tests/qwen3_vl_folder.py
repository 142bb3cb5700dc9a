"""A tiny random Qwen3-VL model folder, as a user's Hugging Face download is laid out (config.json, safetensors,
tokenizer, preprocessor_config.json with Qwen3-VL's patching), for the modes that take a folder; and transformers'
greedy decoding on that folder, the reference those modes' outputs are held to."""
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from unit_scale_model import unit_scale_model  # noqa: E402


def preprocessor_config(min_pixels: int, max_pixels: int) -> dict:
    """Qwen3-VL's image settings (16-px patches, mean and std 0.5) between ``min_pixels`` and ``max_pixels``."""
    return {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}, "patch_size": 16,
            "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessor"}


def write(directory, tokenizer, seed: int = 0, side: int = 64) -> str:
    """The folder at ``directory``: ``qwen3_vl_tiny`` at the tokenizer's vocabulary with unit-scale random weights
    and its own output head (tied to the embeddings, its greedy chain repeats one token; untied it varies token by
    token), every image resized to ``side`` x ``side`` px. Returns the path."""
    from robust_r1_jax.model import config as model_config
    from robust_r1_jax.model import hf
    directory = str(directory)
    cfg = model_config.qwen3_vl_tiny(vocab_size=len(tokenizer))
    model, _ = unit_scale_model(cfg.replace(text=dataclasses.replace(cfg.text, tie_word_embeddings=False)), seed)
    hf.save(model, directory)   # replaces the folder
    tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as f:
        json.dump(preprocessor_config(side * side, side * side), f)
    return directory


def transformers_greedy(directory: str, encoded: dict, max_new_tokens: int) -> tuple[list[int], np.ndarray]:
    """transformers' ``Qwen3VLForConditionalGeneration`` loaded from the folder, greedy on one encoded prompt
    (``Processor.encode``'s ids, flat pixels and grids) with the project sampler's defaults: the vision tokens
    suppressed, stopping at ``<|im_end|>`` / ``<|endoftext|>`` (kept as the last token, as the sampler keeps it).
    Returns the generated ids and the raw logits float32 [generated, vocab] each was chosen from."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from robust_r1_jax.model import generate as gen
    from robust_r1_jax.model import loading
    config = loading.read_config(directory)
    model = Qwen3VLForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.tensor(np.asarray(encoded["input_ids"])[None], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids),
            pixel_values=torch.tensor(np.asarray(encoded["pixel_values"]), dtype=torch.float32),
            image_grid_thw=torch.tensor(np.asarray(encoded["image_grid_thw"]), dtype=torch.long),
            mm_token_type_ids=(ids == config.image_token_id).int(), do_sample=False,
            max_new_tokens=max_new_tokens, eos_token_id=list(gen.default_stop_token_ids(config)),
            pad_token_id=config.bos_token_id, suppress_tokens=list(gen.vision_token_ids(config)),
            return_dict_in_generate=True, output_logits=True)
    return out.sequences[0, ids.shape[1]:].tolist(), torch.cat(out.logits).float().numpy()


def check_logits(directory: str, encoded: dict, generated: list[int], logits: np.ndarray, tol: float = 1e-4):
    """The folder's model as the modes load it (``loading.load_model``), run over the prompt and ``generated``,
    gives transformers' ``logits`` at each generated position within ``tol`` of max(1, max |logit|): the
    prompt's image features and DeepStack additions landed where transformers puts them."""
    from robust_r1_jax.model import loading
    model = loading.load_model(directory)
    ids = np.concatenate([np.asarray(encoded["input_ids"]), np.asarray(generated[:-1], np.int32)])[None]
    ours = np.asarray(model(ids, encoded["pixel_values"], encoded["image_grid_thw"]))[0, -len(generated):]
    err = np.max(np.abs(ours - logits)) / max(1.0, float(np.max(np.abs(logits))))
    assert err < tol, err
