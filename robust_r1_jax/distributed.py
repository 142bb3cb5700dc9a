"""Starting JAX's multi-controller runtime from whatever launched this process.

``initialize()`` decides whether and how to call ``jax.distributed.initialize``; the first source that
applies wins:

1. ``config``: explicit arguments (fields the config leaves unset may come from the sources below);
2. ``env``: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` (what
   ``launch/multinode_gpu.sh`` sets). These rank above SLURM and TPU because a deliberately set value must
   beat ambient scheduler variables, e.g. ``multinode_gpu.sh --local 2`` run inside an ``salloc`` shell;
3. ``slurm``: ``srun`` tasks (``SLURM_NTASKS``, ``SLURM_PROCID``, first node of the nodelist, port from
   ``ROBUST_R1_COORDINATOR_PORT``, or ``JAX_COORDINATOR_ADDRESS`` when ``launch/slurm_gpu.sbatch`` exported it);
4. ``tpu``: on a Cloud TPU VM, ``jax.distributed.initialize()`` with no arguments (JAX reads the TPU metadata);
5. ``single``: one process, nothing is called.

CPU collectives across processes (measured with jax 0.10.2): cross-process computations on the CPU backend
need ``jax_cpu_collectives_implementation`` set to ``"gloo"`` (or ``"mpi"``). 0.10.2 already defaults to
gloo, but with the option unset (None) the first cross-process jit fails with "Multiprocess computations
aren't implemented on the CPU backend", so ``enable_cpu_collectives()`` sets it explicitly; it must run
before the first JAX computation, and ``initialize()`` calls it.

Failure modes of ``jax.distributed.initialize`` in 0.10.2 (measured): when the coordinator never answers, or
some process never registers, JAX does not raise -- it aborts the whole process (SIGABRT, "DEADLINE_EXCEEDED
... RegisterTask") about 5 s after ``initialization_timeout`` runs out. So processes other than 0 first probe
the coordinator's TCP port and raise a clear ``RuntimeError`` at the deadline, and every process arms a
watchdog that says on stderr, at the time-out, what is missing before JAX aborts.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Mapping, Sequence

import jax

DEFAULT_COORDINATOR_PORT = 12355
COORDINATOR_PORT_ENV = "ROBUST_R1_COORDINATOR_PORT"

# Any of these in the environment means a Cloud TPU VM (GKE and multislice set them; GCE sets some).
_TPU_ENV_HINTS = ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "TPU_PROCESS_ADDRESSES",
                  "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES")


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """What ``initialize`` would do; ``None`` fields are left to JAX's own detection (TPU)."""
    mode: str
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None = None

    @property
    def needs_initialize(self) -> bool:
        return self.mode == "tpu" or (self.num_processes or 1) > 1


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """What ``initialize`` did."""
    mode: str
    process_index: int
    process_count: int
    coordinator_address: str | None
    initialized: bool


# ----------------------------------------------------------------------------------------------- parsing

def _expand_bracket(body: str, nodelist: str) -> list[str]:
    names = []
    for part in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"SLURM nodelist {nodelist!r}: bad range {part!r} inside [{body}]")
        start, stop = match.group(1), match.group(2) or match.group(1)
        if int(stop) < int(start):
            raise ValueError(f"SLURM nodelist {nodelist!r}: range {part!r} runs backwards")
        width = len(start)  # Slurm keeps the zero padding of the first bound: gpu[08-10] -> gpu08 .. gpu10
        names.extend(str(i).zfill(width) for i in range(int(start), int(stop) + 1))
    return names


def _expand_host_pattern(pattern: str, nodelist: str) -> list[str]:
    hosts = [""]
    for literal, bracket in re.findall(r"([^\[\]]*)(?:(\[[^\[\]]*)\])?", pattern):
        options = _expand_bracket(bracket[1:], nodelist) if bracket else [""]
        hosts = [h + literal + o for h in hosts for o in options]
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    items, depth, current = [], 0, []
    for ch in nodelist:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise ValueError(f"SLURM nodelist {nodelist!r}: unbalanced or nested brackets")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise ValueError(f"SLURM nodelist {nodelist!r}: unclosed '['")
    items.append("".join(current))
    return items


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand Slurm's compressed host list: ``"gpu[01-03,07],login"`` -> gpu01 gpu02 gpu03 gpu07 login."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("SLURM nodelist is empty")
    hosts = []
    for item in _split_top_level(nodelist):
        if not item:
            raise ValueError(f"SLURM nodelist {nodelist!r}: empty host name between commas")
        hosts.extend(_expand_host_pattern(item, nodelist))
    return hosts


def first_slurm_node(nodelist: str, scontrol: str | None = None) -> str:
    """First host of a nodelist: asks ``scontrol show hostnames`` when given, else parses it here."""
    if scontrol:
        try:
            done = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True,
                                  text=True, timeout=20, check=True)
            names = done.stdout.split()
            if names:
                return names[0]
        except (OSError, subprocess.SubprocessError):
            pass  # a broken scontrol should not stop a job whose nodelist we can read ourselves
    return parse_slurm_nodelist(nodelist)[0]


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port), with a clear error for anything else."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address {address!r} is not 'host:port' with a port in 1..65535")
    return host, int(port)


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _device_ids(text: str, source: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"{source}={text!r} is not a comma-separated list of device ids") from None


# --------------------------------------------------------------------------------------------- detection

def on_tpu_vm(environ: Mapping[str, str] | None = None) -> bool:
    """True on a Cloud TPU VM: TPU env hints, /dev/accel* (v2-v4), or /dev/vfio/N with libtpu (v5+)."""
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in _TPU_ENV_HINTS):
        return True
    if glob.glob("/dev/accel[0-9]*"):
        return True
    # /dev/vfio also appears on GPU hosts with device passthrough, so it only counts together with libtpu.
    return bool(glob.glob("/dev/vfio/[0-9]*")) and importlib.util.find_spec("libtpu") is not None


def _plan_from_env_vars(environ: Mapping[str, str]) -> DistributedPlan | None:
    num, pid = _env_int(environ, "JAX_NUM_PROCESSES"), _env_int(environ, "JAX_PROCESS_ID")
    if num is None and pid is None:
        return None
    address = environ.get("JAX_COORDINATOR_ADDRESS")
    missing = [name for name, value in (("JAX_COORDINATOR_ADDRESS", address), ("JAX_NUM_PROCESSES", num),
                                        ("JAX_PROCESS_ID", pid)) if value is None]
    if missing:
        raise ValueError(f"multi-process environment is incomplete: {', '.join(missing)} not set "
                         "(JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID go together)")
    local = environ.get("JAX_LOCAL_DEVICE_IDS")
    return DistributedPlan("env", address, num, pid, _device_ids(local, "JAX_LOCAL_DEVICE_IDS") if local else None)


def _slurm_nodelist(environ: Mapping[str, str]) -> str | None:
    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if environ.get(name):
            return environ[name]
    return None


def _plan_from_slurm(environ: Mapping[str, str], scontrol: str | None) -> DistributedPlan | None:
    pid = _env_int(environ, "SLURM_PROCID")
    nodes = next((n for n in (_env_int(environ, v) for v in ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES",
                                                                "SLURM_NNODES")) if n is not None), None)
    num = _env_int(environ, "SLURM_NTASKS")
    num = nodes if num is None else num
    nodelist = _slurm_nodelist(environ)
    if pid is None or num is None or nodelist is None:
        return None
    address = environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        port = _env_int(environ, COORDINATOR_PORT_ENV) or DEFAULT_COORDINATOR_PORT
        address = f"{first_slurm_node(nodelist, scontrol)}:{port}"
    nodes = nodes or len(parse_slurm_nodelist(nodelist))
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    slurm_bound_one_gpu = visible is not None and len(visible.split(",")) == 1
    local = None
    if environ.get("JAX_LOCAL_DEVICE_IDS"):
        local = _device_ids(environ["JAX_LOCAL_DEVICE_IDS"], "JAX_LOCAL_DEVICE_IDS")
    elif num > nodes and not slurm_bound_one_gpu:
        # Several tasks per node, each seeing all GPUs: task k drives GPU k (JAX's own Slurm convention).
        # When Slurm already bound one GPU to the task, that GPU is all it sees and there is nothing to pick.
        local_id = _env_int(environ, "SLURM_LOCALID")
        if local_id is None:
            raise ValueError(f"SLURM runs {num} tasks on {nodes} nodes but SLURM_LOCALID is not set")
        local = (local_id,)
    return DistributedPlan("slurm", address, num, pid, local)


def plan_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, local_device_ids: int | Sequence[int] | None = None,
                     environ: Mapping[str, str] | None = None, tpu_vm: bool | None = None,
                     scontrol: str | None = None) -> DistributedPlan:
    """Decide how this process joins the job (pure apart from reading ``environ`` and ``scontrol``).

    ``tpu_vm``: None asks ``on_tpu_vm``. ``scontrol``: its path; None looks it up on PATH, "" never uses it.
    """
    environ = os.environ if environ is None else environ
    if scontrol is None:
        scontrol = shutil.which("scontrol")
    if isinstance(local_device_ids, int):
        local_device_ids = (local_device_ids,)
    explicit = (coordinator_address, num_processes, process_id, local_device_ids)

    detected = _plan_from_env_vars(environ) or _plan_from_slurm(environ, scontrol)
    if detected is None and any(v is None for v in explicit[:3]):
        if on_tpu_vm(environ) if tpu_vm is None else tpu_vm:
            detected = DistributedPlan("tpu", None, None, None)
    if detected is None and environ.get("JAX_COORDINATOR_ADDRESS") and all(v is None for v in explicit[:3]):
        raise ValueError("JAX_COORDINATOR_ADDRESS is set but JAX_NUM_PROCESSES and JAX_PROCESS_ID are not")

    if all(v is None for v in explicit):
        plan = detected or DistributedPlan("single", None, 1, 0)
    else:
        base = detected or DistributedPlan("single", environ.get("JAX_COORDINATOR_ADDRESS") or None, None, None)
        plan = DistributedPlan(
            "config",
            coordinator_address if coordinator_address is not None else base.coordinator_address,
            num_processes if num_processes is not None else base.num_processes,
            process_id if process_id is not None else base.process_id,
            tuple(local_device_ids) if local_device_ids is not None else base.local_device_ids)
        if plan.num_processes == 1 and plan.process_id in (None, 0):
            plan = dataclasses.replace(plan, process_id=0)
        missing = [name for name, value in (("coordinator_address", plan.coordinator_address),
                                            ("num_processes", plan.num_processes),
                                            ("process_id", plan.process_id)) if value is None]
        if missing and plan.num_processes != 1:
            raise ValueError(f"distributed config sets only some of coordinator_address, num_processes, "
                             f"process_id; missing {', '.join(missing)} and the environment "
                             f"({base.mode}) does not supply them")
    return _validated(plan)


def _validated(plan: DistributedPlan) -> DistributedPlan:
    if plan.mode == "tpu":
        return plan
    if plan.num_processes < 1:
        raise ValueError(f"{plan.mode}: process count must be >= 1, got {plan.num_processes}")
    if not 0 <= plan.process_id < plan.num_processes:
        raise ValueError(f"{plan.mode}: process id {plan.process_id} is outside 0..{plan.num_processes - 1}")
    if plan.num_processes > 1:
        split_address(plan.coordinator_address)
    return plan


# --------------------------------------------------------------------------------------------- execution

def enable_cpu_collectives(implementation: str | None = None) -> str:
    """Make cross-process computations work on the CPU backend; call before the first JAX computation.

    Keeps an implementation the user already chose; otherwise (or when ``implementation`` is given) sets it.
    """
    current = jax.config.jax_cpu_collectives_implementation
    chosen = implementation or current or "gloo"
    if chosen != current:
        jax.config.update("jax_cpu_collectives_implementation", chosen)
    return chosen


def wait_for_coordinator(address: str, timeout_s: float, poll_s: float = 0.25) -> None:
    """Return once ``address`` accepts a TCP connection; RuntimeError after ``timeout_s`` seconds."""
    host, port = split_address(address)
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"could not reach coordinator {host}:{port} within {timeout_s:g}s (last error: {last_error}); "
                "check that process 0 is running, that every process was given the same coordinator address, "
                f"and that port {port} is open between the hosts")
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return
        except OSError as error:  # refused, unreachable, or a name that does not resolve (yet)
            last_error = error
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _arm_watchdog(plan: DistributedPlan, timeout_s: int) -> threading.Timer:
    # Past the time-out registration has failed and JAX is about to abort the process; say why in our words.
    def explain():
        sys.stderr.write(
            f"robust_r1_jax.distributed: process {plan.process_id} of {plan.num_processes} ({plan.mode}): not all "
            f"processes registered with coordinator {plan.coordinator_address} within {timeout_s}s; JAX will "
            f"abort this process. Check that all {plan.num_processes} processes were started with the same "
            "coordinator address and process count and that the coordinator port is reachable from every host.\n")
        sys.stderr.flush()

    timer = threading.Timer(timeout_s, explain)
    timer.daemon = True
    timer.start()
    return timer


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: int | Sequence[int] | None = None,
               timeout_s: float = 300) -> DistributedInfo:
    """Join the multi-process job the environment describes (see the module docstring); idempotent."""
    if jax.distributed.is_initialized():
        return DistributedInfo("preinitialized", jax.process_index(), jax.process_count(), None, True)
    plan = plan_distributed(coordinator_address, num_processes, process_id, local_device_ids)
    if not plan.needs_initialize:
        return DistributedInfo(plan.mode, 0, 1, None, False)

    enable_cpu_collectives()
    if plan.mode == "tpu":
        jax.distributed.initialize(initialization_timeout=max(1, math.ceil(timeout_s)))
        # On TPU the backend starts right after this anyway, so asking it for the process layout costs nothing.
        return DistributedInfo("tpu", jax.process_index(), jax.process_count(), None, True)

    start = time.monotonic()
    if plan.process_id != 0:
        wait_for_coordinator(plan.coordinator_address, timeout_s)
    remaining = max(1, math.ceil(timeout_s - (time.monotonic() - start)))
    watchdog = _arm_watchdog(plan, remaining)
    try:
        jax.distributed.initialize(
            coordinator_address=plan.coordinator_address, num_processes=plan.num_processes,
            process_id=plan.process_id,
            local_device_ids=list(plan.local_device_ids) if plan.local_device_ids is not None else None,
            # Everything is decided above; JAX's own Slurm detection would otherwise pin one GPU per task.
            cluster_detection_method="deactivate",
            initialization_timeout=remaining)
    finally:
        watchdog.cancel()
    # From the plan, not from jax.process_index(): asking the backend would start it, and callers may still
    # want to configure it (e.g. jax_num_cpu_devices) before the first computation.
    return DistributedInfo(plan.mode, plan.process_id, plan.num_processes, plan.coordinator_address, True)


def check_divisible(global_batch: int, num_processes: int) -> int:
    """Per-process batch size; a clear error before any step when processes cannot share the batch evenly."""
    if num_processes < 1:
        raise ValueError(f"process count must be >= 1, got {num_processes}")
    if global_batch < 1 or global_batch % num_processes:
        lower = global_batch // num_processes * num_processes
        suggestion = ", ".join(str(b) for b in (lower, lower + num_processes) if b > 0)
        raise ValueError(f"global batch size {global_batch} does not divide evenly over {num_processes} "
                         f"processes; use a multiple of {num_processes} (e.g. {suggestion})")
    return global_batch // num_processes


def is_primary() -> bool:
    """True in the process that writes reports and logs (process 0)."""
    return jax.process_index() == 0


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing listens on right now (for loopback test runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
