"""Degradation throughput: images/s per type at 448x448, intensity 0.45, beside the OpenCV reference.

    python benchmarks/degrade_throughput.py --repeats 20 --out /tmp/degrade_throughput.json

Each type runs ``--repeats`` times over a few procedural scenes with changing seeds, in one process
and one thread. Rates are 1 / median seconds per image, from wall-clock time and from this process's
CPU time: on an idle machine the two agree; on a shared one the CPU-time figure is the one to
compare with the reference (other processes inflate wall time, not our CPU time). "one random type
per image" draws a type uniformly per image, as the reference figure did, and is also given as the
rate implied by the per-type medians.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from robust_r1_jax import atomic, degrade  # noqa: E402
from robust_r1_jax.degrade.synthetic import textured_scene  # noqa: E402

# SPEC section 7: the released OpenCV code, 448x448 RGB at intensity 0.45, one 2-core CPU of this
# project's machine kind, images/s.
REFERENCE_IMAGES_PER_S: dict[str, float] = {
    "lens blur": 71, "lens flare": 526, "motion blur": 105, "dirty lens": 44, "saturation": 548,
    "jpeg compression": 391, "block exchange": 823, "mean shift": 0.6, "scan lines": 905,
    "darkness": 298, "atmospheric turbulence": 114, "noise": 74, "color diffusion": 130,
    "sharpness change": 759, "graffiti": 865, "watermark damage": 47,
}
REFERENCE_RANDOM_TYPE = 8.8
REFERENCE_RANDOM_TYPE_WITHOUT_MEAN_SHIFT = 133.9


def time_calls(images: list[np.ndarray], name_for_call, intensity: float, repeats: int
               ) -> tuple[list[float], list[float]]:
    """(wall seconds, CPU seconds) per call of ``degrade.apply`` for ``repeats`` calls, after a warm-up."""
    degrade.apply(images[0], name_for_call(0), intensity, 0)
    wall, cpu = [], []
    for i in range(repeats):
        image = images[i % len(images)]
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        degrade.apply(image, name_for_call(i), intensity, i + 1)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    return wall, cpu


def rates(wall: list[float], cpu: list[float]) -> dict[str, float]:
    return {"images_per_s": 1.0 / statistics.median(wall),
            "images_per_s_mean": len(wall) / sum(wall),
            "images_per_s_cpu": 1.0 / max(statistics.median(cpu), 1e-9)}


def harmonic_rate(per_type: dict[str, float]) -> float:
    """Images/s when each image gets one type drawn uniformly from ``per_type``."""
    return len(per_type) / sum(1.0 / r for r in per_type.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--intensity", type=float, default=0.45)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per type")
    parser.add_argument("--random-images", type=int, default=160, help="images in the random-type run")
    parser.add_argument("--out", required=True, help="JSON result path")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.random_images < 1 or args.size < 8:
        parser.error("--repeats and --random-images must be >= 1 and --size >= 8")

    images = [textured_scene(args.size, args.size, seed) for seed in range(4)]
    per_type = {}
    for name in degrade.NAMES:
        wall, cpu = time_calls(images, lambda i, n=name: n, args.intensity, args.repeats)
        per_type[name] = {**rates(wall, cpu), "reference_images_per_s": REFERENCE_IMAGES_PER_S[name]}

    draw = np.random.default_rng(0)
    names = [degrade.NAMES[int(k)] for k in draw.integers(0, len(degrade.NAMES), args.random_images)]
    random_wall, random_cpu = time_calls(images, lambda i: names[i], args.intensity, args.random_images)
    medians = {n: r["images_per_s_cpu"] for n, r in per_type.items()}
    without_ms = {n: r for n, r in medians.items() if n != "mean shift"}
    random_type = {
        "images_per_s_mean": len(random_wall) / sum(random_wall),
        "images_per_s_mean_cpu": len(random_cpu) / sum(random_cpu),
        "implied_by_cpu_medians": harmonic_rate(medians),
        "implied_by_cpu_medians_without_mean_shift": harmonic_rate(without_ms),
        "reference_images_per_s": REFERENCE_RANDOM_TYPE,
        "reference_without_mean_shift": REFERENCE_RANDOM_TYPE_WITHOUT_MEAN_SHIFT,
    }

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"images/s at {args.size}x{args.size}, intensity {args.intensity}, {args.repeats} calls per type "
          f"(1-min load average {load:.2f} on {os.cpu_count()} CPUs)")
    print(f"{'type':24s} {'ours CPU':>9s} {'ours wall':>10s} {'OpenCV ref':>11s} {'CPU/ref':>8s}")
    for name, r in per_type.items():
        ref = r["reference_images_per_s"]
        print(f"{name:24s} {r['images_per_s_cpu']:9.1f} {r['images_per_s']:10.1f} {ref:11.1f} "
              f"{r['images_per_s_cpu'] / ref:7.1f}x")
    print(f"{'one random type/image':24s} {random_type['images_per_s_mean_cpu']:9.1f} "
          f"{random_type['images_per_s_mean']:10.1f} {REFERENCE_RANDOM_TYPE:11.1f} "
          f"{random_type['images_per_s_mean_cpu'] / REFERENCE_RANDOM_TYPE:7.1f}x")
    print(f"{'  implied by medians':24s} {random_type['implied_by_cpu_medians']:9.1f}")
    print(f"{'  same, no mean shift':24s} {random_type['implied_by_cpu_medians_without_mean_shift']:9.1f} "
          f"{'':10s} {REFERENCE_RANDOM_TYPE_WITHOUT_MEAN_SHIFT:11.1f}")
    slower = [n for n, r in per_type.items() if r["images_per_s_cpu"] < r["reference_images_per_s"]]
    print("slower than the reference (CPU time):", ", ".join(slower) if slower else "none")

    atomic.write_text(args.out, json.dumps({
        "size": args.size, "intensity": args.intensity, "repeats": args.repeats, "load_average_1min": load,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "numpy": np.__version__},
        "reference_source": "SPEC.md section 7 (OpenCV reference, 448x448, intensity 0.45)",
        "per_type": per_type, "one_random_type_per_image": random_type, "slower_than_reference": slower,
    }, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
