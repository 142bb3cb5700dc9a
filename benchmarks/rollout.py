"""Rollout throughput: generated tokens/s of ``robust_r1_jax.model.generate.generate`` for a model preset.

    python benchmarks/rollout.py --preset 3b                     # 8 prompts x 8 samples, 320 + 256 tokens
    python benchmarks/rollout.py --preset tiny --batch 2 --samples 2 --prompt-len 96 --new-tokens 32 \
        --image-side 224

Random weights (speed does not depend on them), one ``--image-side`` square image per prompt, every
completion forced to ``--new-tokens`` tokens (no stop ids, as PyTorch's ``min_new_tokens`` in
../shared/bench/hf_baseline.py), sampling at temperature 1 like that baseline. The first call compiles;
then ``--warmup`` untimed and ``--repeats`` timed calls; the rate uses the median. Prints one JSON line
(``"what": "jax_rollout"``), as hf_baseline.py does, and writes it to ``--out`` when given (``auto``:
benchmarks/results/<date>-<device>-rollout.json).

The peer: ``--peer`` runs transformers' ``generate`` in this process on the same weights, prompts and lengths
(benchmarks/peer.py, hf_baseline.py's method); ``--peer-json FILE`` reads hf_baseline.py's output instead. Both
give ``peer_tokens_per_s`` and ``ratio`` = ours / peer. ``--ceilings`` measures the card's matmul and copy
ceilings; ``--hbm-shape 16x8x2048`` (prompts x samples x new tokens, implies ``--ceilings``) also times the decode
step at that shape, (full call - prefill-only call) / (T - 1), and reports its bytes (language weights + the KV
actually attended, the minimum) over that time as ``hbm_share`` of the copy bandwidth.
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

import common  # noqa: E402
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


def measure(model, prompts, sampling, warmup: int, repeats: int, seed: int, check: bool = True):
    """(first call's seconds, the timed calls' seconds); every row must run ``max_new_tokens`` steps."""
    call = lambda i: gen.generate(model, *prompts, sampling, jax.random.key(seed + i))
    first_s, rollout = timed(lambda: call(0))
    for i in range(warmup):
        timed(lambda: call(1 + i))
    seconds = []
    for i in range(repeats):
        elapsed, rollout = timed(lambda: call(1 + warmup + i))
        seconds.append(elapsed)
    expected = rollout.mask.shape[0] * sampling.max_new_tokens
    generated = int(np.asarray(rollout.mask).sum())
    if check and (generated != expected or int(rollout.steps) != sampling.max_new_tokens):
        raise RuntimeError(f"expected {expected} generated tokens, got {generated} in {int(rollout.steps)} steps")
    return first_s, seconds


def hbm_share(model, config, args, copy_gb_per_s: float) -> dict:
    """Decode step at PROMPTSxSAMPLESxT: (one full call - one prefill-and-first-token call on the same cache
    size) / (T - 1), against the bytes a decode step must read at least."""
    batch, samples, horizon = (int(x) for x in args.hbm_shape.lower().split("x"))
    prompts, _ = synthetic_prompts(config, batch, args.prompt_len, args.image_side, args.seed)
    cache_len = args.prompt_len + horizon
    sampler = lambda t: gen.SamplerConfig(max_new_tokens=t, temperature=args.temperature, num_samples=samples,
                                          stop_token_ids=(), pad_token_id=config.bos_token_id, cache_len=cache_len,
                                          decode_bucket=args.decode_bucket)
    small = jax.default_backend() == "cpu"  # tiny calls on a shared CPU are noisy: the fastest of three
    _, full = measure(model, prompts, sampler(horizon), 0, 3 if small else 1, args.seed)
    _, prefill = measure(model, prompts, sampler(1), 0, 3, args.seed)
    full, prefill = min(full), min(prefill)
    step_s = (full - prefill) / (horizon - 1)
    if step_s <= 0:
        return dict(hbm_share=None, full_call_s=full, prefill_call_s=prefill, note="decode time not resolved")
    nbytes = lambda module: sum(x.nbytes for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    weight_bytes = nbytes(model) - nbytes(model.visual)  # everything the decode step reads (lm head included)
    t = config.text
    kv_row_token = t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * jnp.dtype(config.dtype).itemsize
    rows = batch * samples
    kv_useful = rows * kv_row_token * (args.prompt_len + (horizon - 1) / 2)
    step_bytes = weight_bytes + kv_useful
    achieved = step_bytes / step_s / 1e9
    return dict(shape=dict(prompts=batch, samples=samples, new_tokens=horizon, prompt_len=args.prompt_len,
                           cache_len=cache_len), full_call_s=full, prefill_call_s=prefill,
                decode_step_s=step_s, decode_tokens_per_s=rows / step_s, weight_bytes=weight_bytes,
                kv_bytes_attended_mean=kv_useful, kv_bytes_whole_cache=rows * kv_row_token * cache_len,
                achieved_gb_per_s=achieved, hbm_share=achieved / copy_gb_per_s)


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
    parser.add_argument("--decode-bucket", type=int, default=gen.SamplerConfig.decode_bucket,
                        help="SamplerConfig.decode_bucket: new tokens per length bucket (0: whole cache every step)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the compiling one")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the JSON result here ('auto': benchmarks/results/)")
    parser.add_argument("--peer", action="store_true", help="also time transformers' generate, in this process")
    parser.add_argument("--peer-threads", type=int, default=0, help="torch threads for --peer (0: torch's)")
    parser.add_argument("--peer-json", default=None, help="hf_baseline.py's output: read the peer's figure")
    parser.add_argument("--ceilings", action="store_true", help="measure matmul and copy ceilings via JAX")
    parser.add_argument("--hbm-shape", default=None, help="PROMPTSxSAMPLESxNEW_TOKENS: decode-step HBM share")
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
                                 stop_token_ids=(), pad_token_id=config.bos_token_id,
                                 decode_bucket=args.decode_bucket)
    first_s, seconds = measure(model, prompts, sampling, args.warmup, args.repeats, args.seed)
    median = statistics.median(seconds)
    sequences = args.batch * args.samples
    generated = sequences * args.new_tokens
    result = dict(
        what="jax_rollout", preset=args.preset, backend=backend, device=jax.devices()[0].device_kind,
        device_count=jax.device_count(), jax=jax.__version__, dtype=dtype, attention=args.attention,
        prompts=args.batch, samples=args.samples, sequences=sequences, prompt_len=args.prompt_len,
        image_side=args.image_side, image_tokens=image_tokens, new_tokens=args.new_tokens,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, decode_bucket=args.decode_bucket,
        init_s=init_s, first_call_s=first_s, seconds=median, seconds_all=seconds,
        gen_tokens_per_s=generated / median, compilations=gen.trace_count("generate"),
        ours_tokens_per_s=generated / median,
    )
    if args.ceilings or args.hbm_shape:
        result.update(common.ceilings(small=backend == "cpu"))
    if args.peer:
        import peer
        peer.set_threads(args.peer_threads)
        torch_model = peer.from_ours(model, dtype)
        result["peer"] = dict(source="in-process transformers generate, same weights and prompts",
                              device=peer.device(), dtype=dtype,
                              **peer.generate_rate(torch_model, *prompts, args.samples, args.new_tokens,
                                                   args.repeats))
        result["peer_tokens_per_s"] = result["peer"]["tokens_per_s"]
    elif args.peer_json and common.read_peer(args.peer_json, "hf_generate"):
        result["peer"] = common.read_peer(args.peer_json, "hf_generate")
        result["peer_tokens_per_s"] = result["peer"]["gen_tokens_per_s"]
    else:
        result["peer_tokens_per_s"] = PEER_TOKENS_PER_S.get(args.preset)
        result["peer"] = dict(source="SPEC section 7: transformers generate, bf16, one H100 (not this card)"
                              ) if result["peer_tokens_per_s"] else None
    result["settings"] = {k: v for k, v in vars(args).items() if k not in ("out",)}
    out = common.results_path("rollout") if args.out == "auto" else args.out
    result["hbm_share"] = None
    common.finish(result, out)  # written before the long GRPO-shape measurement, and again after it
    if args.hbm_shape:
        try:
            result["hbm"] = hbm_share(model, config, args, result["copy_gb_per_s"])
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: the main figure stays written
            result["hbm"] = dict(hbm_share=None, error=repr(e)[:500])
        result["hbm_share"] = result["hbm"]["hbm_share"]
        common.finish(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
