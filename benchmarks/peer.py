"""The PyTorch peer, timed by ../shared/bench/hf_baseline.py's method, on OUR model's weights and batches.

SFT: vision tower frozen, gradient checkpointing, AdamW (lr 1e-5), ``labels = input_ids``, median step time.
Rollout: ``generate`` sampling at temperature 1 with ``min_new_tokens = max_new_tokens`` (no early stop), one
8-token warm-up call, then one timed call. As in that script, ``mm_token_type_ids`` is not passed (the speed
does not depend on it). bf16 on CUDA as there; on CPU the dtype of our run, so both sides do the same arithmetic.

``python benchmarks/peer.py`` with hf_baseline.py's flags is the fallback peer when that file is not at hand
(device_bench.sh): a random-init model of one of our presets, one JSON line per measurement, same names.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


def from_ours(model, dtype: str):
    """transformers' Qwen2_5_VLForConditionalGeneration holding our model's weights (written as a Hugging Face
    directory by robust_r1_jax.model.hf.save, read back by from_pretrained)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    from robust_r1_jax.model import hf
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model")
        hf.save(model, path, dtype="float32")
        peer = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch_dtype(dtype))
    return peer.to(device())


def _tensors(ids, pixels, grid, dev):
    """Our batched layout ([B, N, D] patches, [B, I, 3] grids) -> transformers' flat one."""
    pixels, grid = np.asarray(pixels), np.asarray(grid)
    return (torch.as_tensor(np.asarray(ids), dtype=torch.long, device=dev),
            torch.as_tensor(pixels.reshape(-1, pixels.shape[-1]), device=dev),
            torch.as_tensor(grid.reshape(-1, 3), dtype=torch.long, device=dev))


def sft_rate(model, ids, pixels, grid, warmup: int, steps: int) -> dict:
    dev = device()
    ids, pix, thw = _tensors(ids, pixels, grid, dev)
    pix = pix.to(next(model.parameters()).dtype)
    for name, p in model.named_parameters():
        p.requires_grad_("visual" not in name)
    model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        _sync(dev)
        t = time.perf_counter()
        out = model(input_ids=ids, pixel_values=pix, image_grid_thw=thw, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
        if step >= warmup:
            times.append(time.perf_counter() - t)
    model.gradient_checkpointing_disable()
    med = float(np.median(times))
    return dict(step_s=med, step_s_all=times, tokens_per_s=ids.numel() / med, loss=out.loss.item(),
                torch_threads=torch.get_num_threads(),
                peak_mem_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if dev == "cuda" else None)


@torch.no_grad()
def generate_rate(model, ids, mask, pixels, grid, samples: int, new_tokens: int, repeats: int = 1) -> dict:
    """hf_baseline.py times one call; ``repeats`` > 1 takes the median (a shared CPU is noisy)."""
    dev = device()
    ids, pix, thw = _tensors(ids, pixels, grid, dev)
    model.eval()
    kw = dict(input_ids=ids, attention_mask=torch.as_tensor(np.asarray(mask), dtype=torch.long, device=dev),
              pixel_values=pix.to(next(model.parameters()).dtype), image_grid_thw=thw, do_sample=True,
              temperature=1.0, top_p=1.0, num_return_sequences=samples, max_new_tokens=new_tokens,
              min_new_tokens=new_tokens, pad_token_id=0)
    model.generate(**{**kw, "max_new_tokens": 8, "min_new_tokens": 8})  # warm-up, as hf_baseline.py
    times = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        out = model.generate(**kw)
        _sync(dev)
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    generated = out.shape[0] * (out.shape[1] - ids.shape[1])
    return dict(seconds=seconds, seconds_all=times, generated=generated, tokens_per_s=generated / seconds,
                torch_threads=torch.get_num_threads())


def main(argv=None) -> None:
    """hf_baseline.py's CLI (``--tiny`` = our tiny preset, else 3b), timed by the functions above."""
    p = argparse.ArgumentParser(description="fallback PyTorch peer (hf_baseline.py's flags)")
    p.add_argument("--tiny", action="store_true")
    for flag, default in (("bsz", 4), ("seqlen", 2048), ("side", 448), ("warmup", 2), ("steps", 5),
                          ("prompts", 8), ("group", 8), ("prompt_len", 320), ("new_tokens", 256)):
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--skip", default="")
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the batch helpers import JAX: keep it off the GPU
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from robust_r1_jax.model import config as model_config
    import rollout
    import sft_step
    cfg = model_config.preset("tiny" if args.tiny else "3b")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    with torch.device(device()):
        model = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig(**cfg.to_hf()), dtype=dtype)
    print(json.dumps(dict(what="env", torch=torch.__version__, device=device(), peer="benchmarks/peer.py")))
    if "sft" not in args.skip:
        batch, n_img = sft_step.synthetic_batch(cfg, args.bsz, args.seqlen, args.side)
        r = sft_rate(model, batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"], args.warmup,
                     args.steps)
        print(json.dumps(dict(what="hf_sft_step", bsz=args.bsz, seqlen=args.seqlen, image_tokens=n_img, **r)),
              flush=True)
    if "gen" not in args.skip:
        (ids, mask, pix, grid), _ = rollout.synthetic_prompts(cfg, args.prompts, args.prompt_len, args.side, 0)
        r = generate_rate(model, ids, mask, pix, grid, args.group, args.new_tokens)
        print(json.dumps(dict(what="hf_generate", sequences=args.prompts * args.group,
                              prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                              gen_tokens_per_s=r["tokens_per_s"], **r)), flush=True)


if __name__ == "__main__":
    main()
