"""Where a GRPO recipe's decode step goes on a TPU slice, by XLA's cost model (no TPU needed; libtpu compiles).

    python benchmarks/decode_breakdown.py --recipe configs/grpo_qwen2_5_vl_3b.py:v5p8 --topology v5p-8 \
        --out benchmarks/results/decode_breakdown_v5p8.json

For each variant of ``robust_r1_jax.aot_decode.breakdown_cases`` (the layout and attention before issue 24, with
attention off, half the cache, bf16 cache reads, the replicated bf16 rollout copy, half the rows, the token draw
alone; the "tensor" rollout copy on the rollout mesh (data = chips / rollout.tensor_parallel x tensor), with the
vocabulary split or whole, and its token draw; ``--only tensor`` runs just those) it prints the cost-model time of one decode step per chip next to its HBM roofline (the bytes the step must
read over HBM bandwidth), the roofline of XLA's own byte count, the FLOP roofline and the ICI roofline of the
compiled collectives. Each variant is compiled at one and two language layers and extrapolated to the real depth
(about 10-20 s per compile on a 2-core CPU). Not a measurement: XLA's TPU cost model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import jax  # noqa: E402

from robust_r1_jax import aot, aot_decode, atomic, tpu_topology  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/grpo_qwen2_5_vl_3b.py:v5p8")
    parser.add_argument("--topology", default="v5p-8")
    parser.add_argument("--override", action="append", default=[], help="recipe override dotted.key=value")
    parser.add_argument("--only", action="append", default=[], help="run only cases whose name contains this")
    parser.add_argument("--out", default=None, help="also write the JSON rows here")
    args = parser.parse_args(argv)
    recipe = aot.apply_overrides(aot.load_recipe(args.recipe), args.override)
    slice_ = tpu_topology.parse_slice(args.topology)
    mesh = aot.mesh_for(recipe, tpu_topology.devices(slice_))
    cfg = aot.recipe_model_config(recipe, mesh.devices.flat[0].platform)
    cases = [c for c in aot_decode.breakdown_cases(recipe) if not args.only or any(o in c.name for o in args.only)]
    rows = []
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        for case in cases:
            rows.extend(aot_decode.breakdown(recipe, cfg, mesh, slice_, [case]))
            print(aot_decode.table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{args.recipe} on {args.topology} (mesh {dict(mesh.shape)}), per chip and decode step; "
          "cost: XLA's TPU cost model, depth-extrapolated")
    print(aot_decode.table(rows))
    if args.out:
        atomic.write_text(args.out, json.dumps(dict(recipe=args.recipe, topology=args.topology,
                                                    overrides=args.override, rows=rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
