"""SFT step throughput of robust_r1_jax on the devices at hand.

Mirrors ../shared/bench/hf_baseline.py's SFT measurement: batch x seqlen tokens with one side x side image
per row, vision tower frozen, AdamW, random init, bf16 compute with fp32 master weights. Prints one JSON line
and writes it atomically to ``--out`` (``auto``: benchmarks/results/<date>-<device>-sft.json).

    python benchmarks/sft_step.py --preset tiny --peer               # CPU: ours and PyTorch, same weights
    python benchmarks/sft_step.py --preset 3b --ceilings --peer-json peer.jsonl --out auto   # the GPU comparison

``--peer`` times a PyTorch step (benchmarks/peer.py: transformers, gradient checkpointing, AdamW) on the same
weights and batch in this process; ``--peer-json`` reads hf_baseline.py's ``hf_sft_step`` line instead.
``--ceilings`` measures the bf16 matmul ceiling through JAX; ``mfu`` is then 6·N·tokens / step time over it
(``mfu_datasheet`` uses the datasheet peak). ``ratio`` = ours / peer tokens/s.

``--length-profile robust_r1`` measures real tokens per second at SPEC §8's Robust-R1 rows (data/packing.py)
instead of full rows: the same examples (random tokens of the profile's lengths, one 448 x 448 image each) as
padded rows (one example per row) and as packed rows (first-fit, ``--image-slots`` images per row), same batch
shape, one run; ``packed_vs_padded`` is the ratio of real tokens/s:

    python benchmarks/sft_step.py --preset tiny --bsz 4 --seqlen 2048 --length-profile robust_r1
    python benchmarks/sft_step.py --preset demo --bsz 2 --seqlen 2048 --packed-seqlen 4096 --length-profile robust_r1

(the second: today's 2048-token rows against the 3B recipe's packed 4096-token rows, same slots per step)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import common  # noqa: E402
from robust_r1_jax import parallel  # noqa: E402
from robust_r1_jax.model import config as model_config  # noqa: E402
from robust_r1_jax.data import packing  # noqa: E402
from robust_r1_jax.data.rows import SFTExample, pack_examples  # noqa: E402
from robust_r1_jax.model.rope_index import host_mrope_position_ids, mrope_position_ids  # noqa: E402
from robust_r1_jax.model.vlm import Qwen25VL  # noqa: E402
from robust_r1_jax.train import metrics as mx  # noqa: E402
from robust_r1_jax.train import optim, state as train_state, step as sft  # noqa: E402


def synthetic_batch(cfg, batch: int, seqlen: int, side: int, seed: int = 0) -> dict:
    """Random tokens with one image per row at position 10, as the PyTorch baseline lays it out."""
    rng = np.random.default_rng(seed)
    grid = side // cfg.vision.patch_size
    n_img = grid * grid // cfg.vision.merge_unit
    ids = rng.integers(0, min(cfg.bos_token_id, 150000), (batch, seqlen)).astype(np.int32)
    ids[:, 10] = cfg.vision_start_token_id
    ids[:, 11:11 + n_img] = cfg.image_token_id
    ids[:, 11 + n_img] = cfg.vision_end_token_id
    mask = np.ones_like(ids)
    grids = np.tile(np.array([[[1, grid, grid]]], np.int32), (batch, 1, 1))
    pix = rng.normal(size=(batch, grid * grid, cfg.vision.patch_dim)).astype(np.float32)
    pos, _ = mrope_position_ids(ids, grids.reshape(-1, 3), mask, image_token_id=cfg.image_token_id,
                                spatial_merge_size=cfg.vision.spatial_merge_size)
    return dict(input_ids=ids, attention_mask=mask, loss_mask=mask.copy(), pixel_values=pix,
                image_grid_thw=grids, position_ids=np.moveaxis(np.asarray(pos), 0, 1).astype(np.int32)), n_img


def profile_batches(cfg, profile: dict, rows: int, seqlen: int, image_slots: int, seed: int = 0,
                    packed_seqlen: int = 0) -> dict:
    """{"padded": batch, "packed": batch} of the same stream of examples drawn from ``profile``: padded takes the
    first ``rows`` examples one per row, packed fills rows of ``packed_seqlen`` (default ``seqlen``) first-fit
    from the stream's start, as many as hold ``rows x seqlen`` token slots."""
    sizes = packing.sample_sizes(profile, 64 * rows, merge_unit=cfg.vision.merge_unit, seed=seed)
    packed_seqlen = packed_seqlen or seqlen
    packed_rows = rows * seqlen // packed_seqlen
    rng = np.random.default_rng(seed)

    def example(size) -> SFTExample:
        side = int(round((size.patches // max(size.images, 1)) ** 0.5))
        n_img = size.patches // cfg.vision.merge_unit
        ids = rng.integers(0, min(cfg.bos_token_id, 150000), size.tokens).astype(np.int32)
        ids[10], ids[11 + n_img] = cfg.vision_start_token_id, cfg.vision_end_token_id
        ids[11:11 + n_img] = cfg.image_token_id
        grid = np.array([[1, side, side]], np.int32)
        slots = np.zeros((image_slots, 3), np.int32)
        slots[:1] = grid
        pos, _ = host_mrope_position_ids(ids[None], slots, np.ones((1, len(ids)), np.int32),
                                         image_token_id=cfg.image_token_id,
                                         spatial_merge_size=cfg.vision.spatial_merge_size)
        loss = (np.arange(size.tokens) >= 12 + n_img).astype(np.int32)
        pixels = rng.normal(size=(size.patches, cfg.vision.patch_dim)).astype(np.float32)
        return SFTExample(ids, loss, pixels, grid, pos[:, 0], 0)

    budget = packing.RowBudget(packed_seqlen, image_slots * sizes[0].patches, image_slots)
    stream = [budget.clip(s) for s in sizes]
    built: dict[int, SFTExample] = {}

    def rows_of(groups, bucket: int, slots: int, seq_len: int) -> dict:
        rows_ = [pack_examples([built.setdefault(i, example(stream[i])) for i in group], seq_len=seq_len,
                               patch_bucket=bucket, image_slots=slots, patch_dim=cfg.vision.patch_dim,
                               pad_id=cfg.bos_token_id, image_major=slots > 1) for group in groups]
        batch = {k: np.stack([r[k] for r in rows_]) for k in rows_[0]}
        for key in ("example_index", "num_examples", "truncated_tokens"):
            del batch[key]
        return batch

    padded = rows_of([[i] for i in range(rows)], sizes[0].patches, 1, seqlen)
    del padded["segment_ids"]   # the unpacked layout
    packed = rows_of(next(packing.first_fit(iter(enumerate(stream)), packed_rows, budget)), budget.patch_bucket,
                     image_slots, packed_seqlen)
    return {"padded": padded, "packed": packed}


def sliced_preset(cfg, layers: int, vision_layers: int, vocab: int):
    """``cfg`` with ``layers`` language layers, ``vision_layers`` vision blocks and a ``vocab``-token vocabulary
    (each 0: unchanged), widths untouched. With the 3B preset, ``--layers 1 --vision-layers 1 --vocab 4221``
    (151,936 / 36) keeps one layer's matmuls, attention and lm-head share per token as in the whole model, so the
    padded-vs-packed ratio on a CPU weighs attention and the vision tower as the 3B step does (the tiny presets'
    64-wide layers make attention at 4096 tokens most of a step). Special tokens move to the top of a cut
    vocabulary, as the tiny presets place them."""
    text, vision, ids = cfg.text, cfg.vision, {}
    if layers:
        text = dataclasses.replace(text, num_hidden_layers=layers)
    if vision_layers:
        vision = dataclasses.replace(vision, depth=vision_layers, fullatt_block_indexes=tuple(
            i for i in vision.fullatt_block_indexes if i < vision_layers))
    if vocab:
        text = dataclasses.replace(text, vocab_size=vocab)
        ids = dict(bos_token_id=vocab - 7, vision_start_token_id=vocab - 6, vision_end_token_id=vocab - 5,
                   image_token_id=vocab - 4, video_token_id=vocab - 3, eos_token_id=vocab - 2)
    return cfg.replace(text=text, vision=vision, **ids)


def peak_memory_gib() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # host RSS (KiB -> GiB) on CPU


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny", choices=sorted(model_config.PRESETS))
    p.add_argument("--bsz", type=int, default=4)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--side", type=int, default=448)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dtype", default=None, help="compute dtype (default bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--remat", default="dots", choices=["none", "full", "dots"])
    p.add_argument("--attention", default="auto", choices=["xla", "cudnn", "auto"])
    p.add_argument("--ce-chunk", type=int, default=512)
    p.add_argument("--fsdp", type=int, default=-1)
    p.add_argument("--peer", action="store_true", help="also time a PyTorch step on the same model, in-process")
    p.add_argument("--peer-threads", type=int, default=0, help="torch threads for --peer (0: torch's)")
    p.add_argument("--peer-json", default=None, help="hf_baseline.py's output: read the peer's figure")
    p.add_argument("--ceilings", action="store_true", help="measure the matmul and copy ceilings via JAX")
    p.add_argument("--out", default=None, help="write the JSON here ('auto': benchmarks/results/)")
    p.add_argument("--length-profile", default="", choices=["", "robust_r1"],
                   help="real tokens/s of padded vs packed rows at this length profile (data/packing.py)")
    p.add_argument("--image-slots", type=int, default=5, help="images per packed row (--length-profile)")
    p.add_argument("--packed-seqlen", type=int, default=0,
                   help="packed rows' length (--length-profile; default --seqlen), same token slots per step")
    p.add_argument("--layers", type=int, default=0,
                   help="keep this many of the preset's language layers (0: all): a slice of a big model that "
                        "keeps its per-token FLOP mix at CPU cost (see sliced_preset)")
    p.add_argument("--vision-layers", type=int, default=0, help="vision blocks kept with --layers (0: all)")
    p.add_argument("--vocab", type=int, default=0, help="vocabulary size with --layers (0: the preset's)")
    args = p.parse_args(argv)

    on_cpu = jax.default_backend() == "cpu"
    dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
    cfg = model_config.preset(args.preset, dtype=dtype, param_dtype="float32", remat=args.remat,
                              attention_impl=args.attention)
    cfg = sliced_preset(cfg, args.layers, args.vision_layers, args.vocab)
    mesh = parallel.make_mesh(data=1, fsdp=args.fsdp, tensor=1)
    model = _materialise(cfg, mesh)
    torch_model = None
    if args.peer:  # converted now: init_state below takes the model's arrays over
        import peer
        peer.set_threads(args.peer_threads)
        torch_model = peer.from_ours(model, dtype)
    n_vision = train_state.count(nnx.state(model.visual, nnx.Param))
    tx = optim.optimizer(optim.OptimConfig(learning_rate=1e-5, total_steps=1000))
    parts, state = train_state.init_state(model, tx, ("^visual\\.",), mesh)
    n_trained = train_state.count(state.trainable)
    del model
    if args.length_profile:
        return _profile_run(args, cfg, mesh, parts, state, tx, n_trained, n_vision)
    batch, n_img = synthetic_batch(cfg, args.bsz, args.seqlen, args.side)
    step = sft.compile_step(parts, tx, optim.schedule(optim.OptimConfig()), sft.StepConfig(1, args.ce_chunk),
                            state, mesh, batch)
    device_batch = sft.global_batch(mesh, batch)
    times = []
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        state, metrics = step(state, device_batch)
        jax.block_until_ready(metrics["loss"])
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    med = float(np.median(times))
    tokens = args.bsz * args.seqlen
    flops = mx.step_flops(batch, n_trained, n_vision, vision_trained=False)
    r = mx.rates(med, tokens, flops, jax.device_count())
    result = dict(
        what="jax_sft_step", preset=args.preset, device=jax.devices()[0].device_kind, devices=jax.device_count(),
        dtype=dtype, remat=args.remat, attention=args.attention, bsz=args.bsz, seqlen=args.seqlen,
        image_tokens=n_img, step_s=med, step_s_all=times, tokens_per_s=r["tokens_per_s"],
        ours_tokens_per_s=r["tokens_per_s"], model_tflops=r["tflops"],
        lm_tflops=6 * n_trained * tokens / med / 1e12, mfu=None, mfu_datasheet=r.get("mfu"),
        trained_params=n_trained, vision_params=n_vision, peak_gib=peak_memory_gib(), loss=float(metrics["loss"]))
    del state, step, device_batch
    if args.ceilings:
        result.update(common.ceilings(small=on_cpu))
        result["mfu"] = result["lm_tflops"] / result["matmul_tflops"]
    if torch_model is not None:
        result["peer"] = dict(source="in-process PyTorch step (transformers, gradient checkpointing, AdamW), "
                              "same weights and batch", device=peer.device(), dtype=dtype,
                              **peer.sft_rate(torch_model, batch["input_ids"], batch["pixel_values"],
                                              batch["image_grid_thw"], args.warmup, args.steps))
    else:
        result["peer"] = common.read_peer(args.peer_json, "hf_sft_step") if args.peer_json else None
    result["peer_tokens_per_s"] = result["peer"]["tokens_per_s"] if result["peer"] else None
    result["peer_peak_gib"] = result["peer"].get("peak_mem_gib") if result["peer"] else None
    result["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    common.finish(result, common.results_path("sft") if args.out == "auto" else args.out)


def _timed_steps(step, state, device_batch, warmup: int, steps: int):
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        state, metrics = step(state, device_batch)
        jax.block_until_ready(metrics["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return state, metrics, times


def _profile_run(args, cfg, mesh, parts, state, tx, n_trained: int, n_vision: int) -> None:
    """Padded and packed rows of the same examples, their steps alternating on the same state: real tokens/s."""
    profile = packing.robust_r1_profile()
    batches = profile_batches(cfg, profile, args.bsz, args.seqlen, args.image_slots,
                              packed_seqlen=args.packed_seqlen)
    result = dict(what="jax_sft_step_length_profile", preset=args.preset, device=jax.devices()[0].device_kind,
                  devices=jax.device_count(), dtype=str(cfg.dtype), remat=args.remat, attention=args.attention,
                  bsz=args.bsz, seqlen=args.seqlen, length_profile=args.length_profile, profile=profile,
                  trained_params=n_trained, vision_params=n_vision)
    steps = {name: sft.compile_step(parts, tx, optim.schedule(optim.OptimConfig()), sft.StepConfig(1, args.ce_chunk),
                                    state, mesh, batch) for name, batch in batches.items()}
    device_batches = {name: sft.global_batch(mesh, batch) for name, batch in batches.items()}
    times = {name: [] for name in batches}
    last_metrics = {}
    # Alternate padded and packed steps so that a change in the host's load weighs on both alike.
    for i in range(args.warmup + args.steps):
        for name in batches:
            state, last_metrics[name], step_times = _timed_steps(steps[name], state, device_batches[name], 0, 1)
            if i >= args.warmup:
                times[name] += step_times
    for name, batch in batches.items():
        metrics = last_metrics[name]
        med = float(np.median(times[name]))
        real = int(np.sum(batch["attention_mask"]))
        result[name] = dict(step_s=med, step_s_all=times[name], examples=int(metrics["examples"]), real_tokens=real,
                            row_slots=int(batch["input_ids"].size), padding_fraction=1 - real / batch["input_ids"].size,
                            patch_bucket=int(np.prod(batch["pixel_values"].shape[1:-1])), real_tokens_per_s=real / med,
                            slot_tokens_per_s=batch["input_ids"].size / med, loss=float(metrics["loss"]))
    result["packed_vs_padded"] = result["packed"]["real_tokens_per_s"] / result["padded"]["real_tokens_per_s"]
    result["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    common.finish(result, common.results_path("sft-profile") if args.out == "auto" else args.out)


def _materialise(cfg, mesh) -> Qwen25VL:
    """Random init straight into the sharding (never a full unsharded copy on one device)."""
    abstract = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)
    shardings = parallel.param_shardings(abstract, mesh)
    state = jax.jit(lambda: nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0)))[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


if __name__ == "__main__":
    main()
