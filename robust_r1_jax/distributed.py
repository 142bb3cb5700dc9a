"""Starting JAX's multi-controller runtime from whatever launched this process.

``initialize()`` decides whether and how to call ``jax.distributed.initialize``; the first source that
applies wins:

1. ``config``: explicit arguments (fields the config leaves unset may come from the sources below);
2. ``env``: ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` (what
   ``launch/multinode_gpu.sh`` sets). These rank above the schedulers and TPU because a deliberately set value
   must beat ambient scheduler variables, e.g. ``multinode_gpu.sh --local 2`` run inside an ``salloc`` shell;
3. ``ompi`` / ``slurm``: an ``mpirun`` or ``srun`` task, read by JAX's own cluster detection
   (``jax._src.clusters``, what ``jax.distributed.initialize`` would use). The coordinator is
   ``JAX_COORDINATOR_ADDRESS`` when set (``launch/slurm_gpu.sbatch`` exports the first node as ``scontrol``
   names it), else the scheduler's first host at port ``ROBUST_R1_COORDINATOR_PORT`` (default 12355);
4. ``tpu``: a Cloud TPU VM as JAX's GKE / GCE TPU detection sees it: ``jax.distributed.initialize()`` with
   no arguments (JAX reads the TPU metadata);
5. ``single``: one process, nothing is called.

Devices: a process drives every GPU it sees unless several of the job's processes share its host, each seeing
all of them; then process k of the host drives GPU k (JAX's own rule under a scheduler, which it would also
apply to one process per host). ``JAX_LOCAL_DEVICE_IDS`` or the config's ``local_device_ids`` override both.

CPU collectives across processes (measured with jax 0.10.2): cross-process computations on the CPU backend
need ``jax_cpu_collectives_implementation`` set to ``"gloo"`` (or ``"mpi"``). 0.10.2 already defaults to
gloo, but with the option unset (None) the first cross-process jit fails with "Multiprocess computations
aren't implemented on the CPU backend", so ``enable_cpu_collectives()`` sets it explicitly; it must run
before the first JAX computation, and ``initialize()`` calls it.

Failure modes of ``jax.distributed.initialize`` in 0.10.2 (measured): when the coordinator never answers, or
some process never registers, JAX does not raise -- it aborts the whole process (SIGABRT, "DEADLINE_EXCEEDED
... RegisterTask") about 5 s after ``initialization_timeout`` runs out. So processes other than 0 first probe
the coordinator's TCP port and raise a clear ``RuntimeError`` at the deadline, and every process arms a
watchdog that says on stderr, at the time-out, what is missing before JAX aborts. That probe needs the
coordinator before JAX starts, which is why the scheduler's layout is read here, with JAX's detection, and
then passed to ``jax.distributed.initialize`` explicitly.
"""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import sys
import threading
import time
from typing import Mapping, Sequence

import jax
from jax._src import clusters as jax_clusters  # JAX's scheduler detection; no public name exists for it

DEFAULT_COORDINATOR_PORT = 12355
COORDINATOR_PORT_ENV = "ROBUST_R1_COORDINATOR_PORT"

# JAX's detection order, less the opt-in mpi4py and Kubernetes (which needs the kubernetes package).
SCHEDULERS: tuple[type[jax_clusters.ClusterEnv], ...] = (jax_clusters.OmpiCluster, jax_clusters.SlurmCluster)
TPU_CLUSTERS: tuple[type[jax_clusters.ClusterEnv], ...] = (jax_clusters.GkeTpuCluster, jax_clusters.GceTpuCluster)


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

def on_tpu_vm() -> bool:
    """True where JAX's Cloud TPU detection (GKE worker variables, or the GCE metadata server) finds a TPU VM."""
    return any(cluster.is_env_present() for cluster in TPU_CLUSTERS)


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


def _processes_share_host(scheduler: str, num_processes: int, environ: Mapping[str, str]) -> bool:
    """Whether several of the job's processes run on this host (JAX's detection does not say)."""
    if scheduler == "ompi":
        return (_env_int(environ, "OMPI_COMM_WORLD_LOCAL_SIZE") or 1) > 1
    nodes = next((n for n in (_env_int(environ, v) for v in ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES",
                                                                "SLURM_NNODES")) if n is not None), None)
    if nodes is None:
        raise ValueError(f"SLURM runs {num_processes} tasks but SLURM_STEP_NUM_NODES is not set")
    return num_processes > nodes


def _plan_from_scheduler(environ: Mapping[str, str]) -> DistributedPlan | None:
    scheduler = next((cluster for cluster in SCHEDULERS if cluster.is_env_present()), None)
    if scheduler is None:
        return None
    name = scheduler.name
    try:
        num, pid = scheduler.get_process_count(), scheduler.get_process_id()
        address = environ.get("JAX_COORDINATOR_ADDRESS") or scheduler.get_coordinator_address(
            timeout_secs=None, override_coordinator_port=str(_env_int(environ, COORDINATOR_PORT_ENV)
                                                             or DEFAULT_COORDINATOR_PORT))
        local_id = scheduler.get_local_process_id()
    except (KeyError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name}: cannot read the job's process layout from the environment: {error}") from None
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    bound_one_gpu = visible is not None and len(visible.split(",")) == 1
    local = None
    if environ.get("JAX_LOCAL_DEVICE_IDS"):
        local = _device_ids(environ["JAX_LOCAL_DEVICE_IDS"], "JAX_LOCAL_DEVICE_IDS")
    elif not bound_one_gpu and _processes_share_host(name, num, environ):
        # When the scheduler already bound one GPU to the process, that GPU is all it sees: nothing to pick.
        local = (local_id,)
    return DistributedPlan(name, address, num, pid, local)


def plan_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, local_device_ids: int | Sequence[int] | None = None,
                     tpu_vm: bool | None = None) -> DistributedPlan:
    """Decide how this process joins the job from the arguments and the process environment (``os.environ``,
    which JAX's scheduler detection reads). ``tpu_vm``: None asks ``on_tpu_vm``."""
    environ = os.environ
    if isinstance(local_device_ids, int):
        local_device_ids = (local_device_ids,)
    explicit = (coordinator_address, num_processes, process_id, local_device_ids)

    detected = _plan_from_env_vars(environ) or _plan_from_scheduler(environ)
    if detected is None and any(v is None for v in explicit[:3]):
        if on_tpu_vm() if tpu_vm is None else tpu_vm:
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
            # Everything is decided above (with JAX's detection), so JAX must not redo it and pin one GPU per task.
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
