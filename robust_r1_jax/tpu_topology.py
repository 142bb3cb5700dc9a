"""Cloud TPU slices by name, as abstract devices a CPU host can compile for (no TPU attached).

``jax.experimental.topologies.get_topology_desc`` (with ``libtpu`` installed) describes the chips of a slice; a
mesh over them lets ``jax.jit(...).lower(...).compile()`` produce the TPU program, its exact per-chip memory and
XLA's cost model, on any machine. This is the method of MaxText's ``train_compile.py``.

Per-chip figures (Google Cloud TPU documentation, system architecture pages): HBM capacity and peak bf16 dense
matmul FLOP/s. A slice name counts TensorCores for v5p (two per chip: ``v5p-8`` is 4 chips) and chips for v5e
and v6e (``v6e-8`` is 8 chips).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
    prefix: str              # topology prefix understood by libtpu
    hbm_bytes: int           # per chip
    peak_bf16_flops: float   # per chip, dense matmul
    cores_per_chip: int      # TensorCores a slice name counts per chip
    dims: int                # torus dimensions
    single_host_chips: int   # chips of the largest one-host slice
    hbm_bytes_per_s: float = 0.0   # per chip, HBM bandwidth
    ici_bytes_per_s: float = 0.0   # per chip, inter-chip interconnect bandwidth (all links together)


# HBM bandwidth and ICI bandwidth per chip from the same pages: v5e 819 GB/s, 1,600 Gbit/s; v5p 2,765 GB/s,
# 4,800 Gbit/s; v6e 1,640 GB/s, 3,584 Gbit/s (decimal units).
GENERATIONS = {
    "v5e": Generation("v5e", 16 * GIB, 197e12, 1, 2, 8, 819e9, 1600e9 / 8),
    "v5p": Generation("v5p", 95 * GIB, 459e12, 2, 3, 4, 2765e9, 4800e9 / 8),
    "v6e": Generation("v6e", 32 * GIB, 918e12, 1, 2, 8, 1640e9, 3584e9 / 8),
}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str                 # e.g. "v5p-8"
    generation: Generation
    chips: int
    shape: tuple[int, ...]    # chips along each torus dimension
    chips_per_host: tuple[int, ...]

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host)

    @property
    def topology_name(self) -> str:
        return f"{self.generation.prefix}:{'x'.join(map(str, self.shape))}"


def _torus(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shapes Cloud TPU offers: sides powers of two, as square as possible, smallest side first."""
    if chips & (chips - 1):
        raise ValueError(f"{chips} chips is not a power of two")
    sides = [1] * dims
    for i in range(int(math.log2(chips))):
        sides[i % dims] *= 2
    if dims == 3 and chips >= 4:   # v5p: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4 ...
        sides = sorted(sides)
        if sides[0] == 1:
            sides = [2, 2, 1]
    return tuple(sorted(sides)) if dims == 2 else tuple(sides)


def parse_slice(name: str) -> Slice:
    """``"v5p-8"``, ``"v6e-16"``, ``"v5e-8"`` (``v5litepod-8`` too) -> the slice; a bad name is a ValueError."""
    match = re.fullmatch(r"(v5e|v5litepod|v5p|v6e)-(\d+)", name)
    if not match:
        raise ValueError(f"unknown TPU slice {name!r}; expected v5e-N, v5p-N or v6e-N (e.g. v5p-8, v6e-16)")
    gen = GENERATIONS["v5e" if match.group(1) == "v5litepod" else match.group(1)]
    count = int(match.group(2))
    if count % gen.cores_per_chip:
        raise ValueError(f"{name}: {gen.prefix} counts {gen.cores_per_chip} cores per chip")
    chips = count // gen.cores_per_chip
    shape = _torus(chips, gen.dims)
    if chips <= gen.single_host_chips:
        per_host = shape + (1,) * (3 - len(shape))
    else:
        per_host = (2, 2, 1)
    return Slice(name, gen, chips, shape, per_host)


def devices(slice_: Slice, num_slices: int = 1):
    """The slice's abstract TPU devices (needs ``libtpu``; no TPU is touched)."""
    # libtpu otherwise asks the GCE metadata server what it runs on, which hangs off Cloud.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", slice_.name)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # no chip is opened, so several compiling processes may share libtpu (it otherwise takes a lockfile)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("compiling for a TPU topology needs libtpu (pip install -r requirements.txt)") from e
    from jax.experimental import topologies
    topology = topologies.get_topology_desc(platform="tpu", topology_name=slice_.topology_name,
                                            chips_per_host_bounds=slice_.chips_per_host, num_slices=num_slices)
    return list(topology.devices)
