"""Rollout throughput: generated tokens/s of ``robust_r1_jax.model.generate.generate`` for a model preset.

    python benchmarks/rollout.py --preset 3b                     # 8 prompts x 8 samples, 320 + 256 tokens
    python benchmarks/rollout.py --preset tiny --batch 2 --samples 2 --prompt-len 96 --new-tokens 32 \
        --image-side 224

Random weights (speed does not depend on them), one ``--image-side`` square image per prompt, every
completion forced to ``--new-tokens`` tokens (no stop ids, as PyTorch's ``min_new_tokens`` in
../shared/bench/hf_baseline.py), sampling at temperature 1 like that baseline. The first call compiles;
then ``--warmup`` untimed and ``--repeats`` timed calls; the rate uses the median. Prints one JSON line
(``"what": "jax_rollout"``), as hf_baseline.py does, and writes it to ``--out`` when given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from robust_r1_jax import atomic  # noqa: E402
from robust_r1_jax.model import config as model_config  # noqa: E402
from robust_r1_jax.model import generate as gen  # noqa: E402
from robust_r1_jax.model.vlm import Qwen25VL  # noqa: E402

# SPEC section 7: transformers `generate`, 3B, bf16, one H100, 8 prompts x 8 samples, 320 + 256 tokens.
PEER_TOKENS_PER_S = {"3b": 580.0}


def random_model(config: model_config.ModelConfig, seed: int) -> Qwen25VL:
    """Every weight is a window of one N(0, 0.02^2) draw: one random program instead of one per parameter
    shape, which keeps start-up short (the values do not change the speed)."""
    abstract = nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    leaves, treedef = jax.tree.flatten(state)
    largest = max(leaf.size for leaf in leaves)

    @jax.jit
    def draw(key):
        pool = 0.02 * jax.random.normal(key, (2 * largest,), jnp.float32)
        starts = [(i * 7919) % largest for i in range(len(leaves))]
        return [jax.lax.dynamic_slice_in_dim(pool, s, leaf.size).reshape(leaf.shape).astype(leaf.dtype)
                for s, leaf in zip(starts, leaves)]

    return nnx.merge(graphdef, jax.tree.unflatten(treedef, draw(jax.random.key(seed))))


def synthetic_prompts(config: model_config.ModelConfig, batch: int, prompt_len: int, image_side: int, seed: int):
    """Prompts of exactly ``prompt_len`` tokens, each with one image in the data pipeline's batched layout."""
    vision = config.vision
    unit = vision.patch_size * vision.spatial_merge_size
    if image_side % unit:
        raise ValueError(f"--image-side must be a multiple of {unit}, got {image_side}")
    side = image_side // vision.patch_size
    image_tokens = (side // vision.spatial_merge_size) ** 2
    if prompt_len < image_tokens + 3:
        raise ValueError(f"--prompt-len {prompt_len} cannot hold a {image_side}px image ({image_tokens} tokens "
                         f"plus its two markers and one text token)")
    rng = np.random.default_rng(seed)
    text_vocab = min(config.bos_token_id, config.vision_start_token_id, config.image_token_id)
    ids = rng.integers(0, text_vocab, (batch, prompt_len)).astype(np.int32)
    ids[:, 1] = config.vision_start_token_id
    ids[:, 2:2 + image_tokens] = config.image_token_id
    ids[:, 2 + image_tokens] = config.vision_end_token_id
    mask = np.ones_like(ids)
    pixels = rng.standard_normal((batch, side * side, vision.patch_dim)).astype(np.float32)
    grid = np.tile(np.array([[[1, side, side]]], np.int32), (batch, 1, 1))
    return (ids, mask, pixels, grid), image_tokens


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    out = jax.block_until_ready(call())
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(model_config.PRESETS))
    parser.add_argument("--batch", type=int, default=8, help="prompts per call")
    parser.add_argument("--samples", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--prompt-len", type=int, default=320)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--dtype", default=None, help="compute and parameter dtype; default bfloat16 on "
                        "accelerators, float32 on CPU")
    parser.add_argument("--attention", default="xla", choices=["xla", "cudnn", "auto"])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if min(args.batch, args.samples, args.new_tokens, args.repeats) < 1 or args.warmup < 0:
        parser.error("--batch, --samples, --new-tokens and --repeats must be >= 1, --warmup >= 0")

    backend = jax.default_backend()
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    config = model_config.preset(args.preset).replace(dtype=dtype, param_dtype=dtype,
                                                      attention_impl=args.attention)
    start = time.perf_counter()
    model = random_model(config, args.seed)
    jax.block_until_ready(nnx.state(model))
    init_s = time.perf_counter() - start
    prompts, image_tokens = synthetic_prompts(config, args.batch, args.prompt_len, args.image_side, args.seed)
    sampling = gen.SamplerConfig(max_new_tokens=args.new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, top_k=args.top_k, num_samples=args.samples,
                                 stop_token_ids=(), pad_token_id=config.bos_token_id)
    call = lambda i: gen.generate(model, *prompts, sampling, jax.random.key(args.seed + i))

    first_s, rollout = timed(lambda: call(0))
    for i in range(args.warmup):
        timed(lambda: call(1 + i))
    seconds = []
    for i in range(args.repeats):
        elapsed, rollout = timed(lambda: call(1 + args.warmup + i))
        seconds.append(elapsed)
    generated = int(np.asarray(rollout.mask).sum())
    sequences = args.batch * args.samples
    if generated != sequences * args.new_tokens or int(rollout.steps) != args.new_tokens:
        raise RuntimeError(f"expected {sequences} x {args.new_tokens} generated tokens, got {generated} "
                           f"in {int(rollout.steps)} steps")
    median = statistics.median(seconds)
    result = dict(
        what="jax_rollout", preset=args.preset, backend=backend, device=jax.devices()[0].device_kind,
        device_count=jax.device_count(), jax=jax.__version__, dtype=dtype, attention=args.attention,
        prompts=args.batch, samples=args.samples, sequences=sequences, prompt_len=args.prompt_len,
        image_side=args.image_side, image_tokens=image_tokens, new_tokens=args.new_tokens,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        init_s=init_s, first_call_s=first_s, seconds=median, seconds_all=seconds,
        gen_tokens_per_s=generated / median, compilations=gen.trace_count("generate"),
        peer_gen_tokens_per_s=PEER_TOKENS_PER_S.get(args.preset),
        peer="transformers generate, bf16, one H100 (SPEC section 7)" if args.preset in PEER_TOKENS_PER_S
        else None,
    )
    print(json.dumps(result), flush=True)
    if args.out:
        atomic.write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
