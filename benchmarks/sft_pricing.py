"""An SFT step's cost-model time and (useful) MFU on a TPU slice under a pricing and extra XLA options (no TPU).

    python benchmarks/sft_pricing.py --recipe configs/sft_qwen2_5_vl_3b.py:v6e8 --topology v6e-8 \
        --pricing streamed --override data.global_batch_size=16 \
        --xla-option xla_tpu_enable_windowed_einsum_for_all_gather=false \
        --xla-option xla_tpu_enable_windowed_einsum_for_reduce_scatter=false

The levers the aot mode (``configs/aot.py``) does not try: one pricing of ``aot.PROGRAM_PRICINGS`` ("default",
"unsliced": sliced prefetches off, "streamed": no memory space assignment) instead of the first that gives an
estimate, and XLA compiler options added to it. The step's cost variants are compiled at (1, 1), (2, 1) and (1, 2)
language layers and vision blocks and extrapolated to the recipe's depth (``aot.extrapolated_cost``; minutes per
compile for the 3B on a 2-core CPU). Prints one JSON line and writes it atomically to ``--out``. Not a measurement:
XLA's TPU cost model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import jax  # noqa: E402

from robust_r1_jax import aot, aot_programs, atomic, tpu_topology  # noqa: E402


def xla_option(text: str) -> tuple[str, bool | int | float | str]:
    """``name=value`` -> (name, value as a bool, int, float or string); ValueError without ``=``."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--xla-option {text!r}: expected name=value")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/sft_qwen2_5_vl_3b.py:v6e8")
    parser.add_argument("--topology", default="v6e-8")
    parser.add_argument("--pricing", default="unsliced", choices=[key for key, _ in aot.PROGRAM_PRICINGS])
    parser.add_argument("--override", action="append", default=[], help="recipe override dotted.key=value")
    parser.add_argument("--xla-option", action="append", default=[], help="XLA compiler option name=value")
    parser.add_argument("--out", default=None, help="also write the JSON line here")
    args = parser.parse_args(argv)
    extra = dict(map(xla_option, args.xla_option))
    options = dict(dict(aot.PROGRAM_PRICINGS)[args.pricing] or {}, **extra)
    recipe = aot.apply_overrides(aot.load_recipe(args.recipe), args.override)
    slice_ = tpu_topology.parse_slice(args.topology)
    mesh = aot.mesh_for(recipe, tpu_topology.devices(slice_))
    cfg = aot.recipe_model_config(recipe, mesh.devices.flat[0].platform)
    start = time.perf_counter()
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        step = next(p for p in aot_programs.for_recipe(recipe, cfg, mesh) if p.name == "sft_step")
        row = aot.measure(step, slice_, mesh, cfg, cost_estimate=True, memory=False,
                          pricings=((args.pricing, options or None),))
    result = dict(what="sft_step_pricing", recipe=args.recipe, topology=args.topology, overrides=args.override,
                  pricing=args.pricing, xla_options=extra,
                  **{k: row[k] for k in ("cost_model_s", "mfu", "useful_mfu", "tokens", "useful_tokens")},
                  compile_s=round(time.perf_counter() - start, 1),
                  note="XLA's TPU cost model, not a measurement; cost_model_s None: this pricing gave no estimate")
    print(json.dumps(result), flush=True)
    if args.out:
        atomic.write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
