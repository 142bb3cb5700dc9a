"""Shared helpers for parity tests against transformers' Qwen2.5-VL (the numerical reference)."""
from __future__ import annotations

import numpy as np
import torch

from robust_r1_jax.model import config as model_config


def tiny_config(**kw):
    return model_config.tiny(**kw)


def unit_scale_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draws weights at unit scale: with the default 0.02 init attention is nearly uniform and a wrong
    rotary layout would hide inside any tolerance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "ln_q" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "pos_embed" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
    return model


def qwen3_vl_tiny_config(**kw):
    return model_config.qwen3_vl_tiny(**kw)


def hf_model(cfg, seed: int = 0, tie: bool | None = None):
    """transformers' model of ``cfg``'s family (Qwen2.5-VL or Qwen3-VL) with unit-scale random weights."""
    import transformers
    family = {"qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
              "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration")}[cfg.model_type]
    config_class, model_class = (getattr(transformers, name) for name in family)
    torch.manual_seed(seed)
    model = model_class(config_class(**cfg.to_hf())).eval()
    return unit_scale_(model, seed)


def saved_reference(tmp_path_factory, cfg, name: str, seed: int = 1, folder: str = "hf"):
    """``hf_model(cfg, seed)`` written by ``save_pretrained`` into a fresh ``folder``/``name``: (cfg, model, path)."""
    ref = hf_model(cfg, seed=seed)
    path = str(tmp_path_factory.mktemp(folder) / name)
    ref.save_pretrained(path)
    return cfg, ref, path


def loaded_reference(reference, scan_layers: bool):
    """A ``saved_reference`` loaded by ``hf.load`` in one layer layout (one module per layer, or stacked under
    lax.scan): (cfg, transformers' model, ours)."""
    from robust_r1_jax.model import hf
    cfg, ref, path = reference
    ours = hf.load(path, config_overrides={"scan_layers": scan_layers})
    assert ours.config.scan_layers == scan_layers
    return cfg, ref, ours


def random_pixels(rng, cfg, grids):
    """Normal float32 patches [sum of t * h * w over ``grids``, patch_dim] for ``cfg``'s tower."""
    n = sum(t * h * w for t, h, w in grids)
    return rng.normal(size=(n, cfg.vision.patch_dim)).astype(np.float32)


def image_tokens_prompt(rng, cfg, grids, text_lens):
    """Token ids: text, then for each image vision_start, n image tokens, vision_end, then text."""
    ids = []
    low, high = 0, cfg.bos_token_id
    ids += list(rng.integers(low, high, text_lens[0]))
    for i, (t, h, w) in enumerate(grids):
        n = t * h * w // cfg.vision.merge_unit
        ids += [cfg.vision_start_token_id] + [cfg.image_token_id] * n + [cfg.vision_end_token_id]
        ids += list(rng.integers(low, high, text_lens[i + 1]))
    return ids


def hf_logits(model, input_ids, attention_mask=None, pixel_values=None, grid=None):
    cfg_image = model.config.image_token_id
    ids = torch.tensor(np.asarray(input_ids), dtype=torch.long)
    kw = {}
    if attention_mask is not None:
        kw["attention_mask"] = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
    if pixel_values is not None:
        kw["pixel_values"] = torch.tensor(np.asarray(pixel_values), dtype=torch.float32)
        kw["image_grid_thw"] = torch.tensor(np.asarray(grid), dtype=torch.long)
        kw["mm_token_type_ids"] = (ids == cfg_image).int()
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits.float().numpy()


def rel_err(ours, ref, mask=None):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        ours, ref = ours[m], ref[m]
    return float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))
