#!/usr/bin/env bash
# Start a multi-process robust_r1_jax job without torchrun or SLURM: one process per host (or per GPU) over
# ssh, or N processes on this machine over loopback. The first host is the coordinator; every process gets
# JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which robust_r1_jax.distributed.initialize reads.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/multinode_gpu.sh (--hosts H1,H2,... | --hostfile FILE | --local N) [options] [-- COMMAND...]

  --hosts H1,H2,...     hosts to ssh into ([user@]host); the first one is the coordinator
  --hostfile FILE       one host per line ('#' comments and blank lines ignored)
  --local N             N processes on this machine over 127.0.0.1 (for testing)
  --per-gpu             one process per GPU (JAX_LOCAL_DEVICE_IDS=k) instead of one per host
  --gpus-per-host G     GPUs per host for --per-gpu (default 8)
  --port PORT           coordinator port (default $ROBUST_R1_COORDINATOR_PORT or 12355)
  --config PATH         config to run: python -m robust_r1_jax.main --config=PATH
  --config-args "ARGS"  extra overrides, e.g. "--config.seed=1"
  --workdir PATH        passed on as --config.workdir
  --remote-dir DIR      repository directory on the hosts (default: this checkout's path)
  --python PYTHON       interpreter (default python3)
  --install             first run PYTHON -m pip install -r requirements-gpu.txt (jax[cuda12] at the jax pin)
                        once on every host, in --remote-dir
  --requirements FILE   the requirements file --install uses (default requirements-gpu.txt)
  --timeout SECONDS     stop every process after this long (default 600 with --local, else unlimited)
  --dry-run             print the commands instead of running them
  -h, --help            show this help
  -- COMMAND...         run COMMAND in every process instead of robust_r1_jax.main

All processes stop as soon as one fails. Exit code: the first failing process's, 2 for bad arguments.
EOF
}

die_usage() {
  echo "multinode_gpu.sh: $1" >&2
  usage >&2
  exit 2
}

# Quote arguments for a POSIX shell, leaving plain words bare so printed commands stay readable.
shell_quote() {
  local out=() arg q="'"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//$q/$q\\$q$q}'")
    fi
  done
  printf '%s' "${out[*]}"
}

need_value() {
  [[ $# -ge 2 && -n $2 && $2 != --* ]] || die_usage "$1 needs a value"
}

hosts_arg="" hostfile="" local_count="" per_gpu=0 gpus_per_host=8 config="" config_args="" workdir=""
port=${ROBUST_R1_COORDINATOR_PORT:-12355} python=python3 timeout_s="" dry_run=0 install=0
requirements="requirements-gpu.txt"
remote_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command=()

while [[ $# -gt 0 ]]; do
  case $1 in
    --hosts) need_value "$@"; hosts_arg=$2; shift 2 ;;
    --hostfile) need_value "$@"; hostfile=$2; shift 2 ;;
    --local) need_value "$@"; local_count=$2; shift 2 ;;
    --per-gpu) per_gpu=1; shift ;;
    --gpus-per-host) need_value "$@"; gpus_per_host=$2; shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --config) need_value "$@"; config=$2; shift 2 ;;
    --config-args) [[ $# -ge 2 ]] || die_usage "--config-args needs a value"; config_args=$2; shift 2 ;;
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --remote-dir) need_value "$@"; remote_dir=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --timeout) need_value "$@"; timeout_s=$2; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --install) install=1; shift ;;
    --requirements) need_value "$@"; requirements=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; command=("$@"); break ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done

sources=0
for given in "$hosts_arg" "$hostfile" "$local_count"; do
  [[ -n $given ]] && sources=$((sources + 1))
done
[[ $sources == 1 ]] || die_usage "give exactly one of --hosts, --hostfile, --local"
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
  die_usage "--port must be 1..65535, got '$port'"
fi
[[ $gpus_per_host =~ ^[1-9][0-9]*$ ]] || die_usage "--gpus-per-host must be a positive integer"
[[ -z $timeout_s || $timeout_s =~ ^[0-9]+$ ]] || die_usage "--timeout must be whole seconds, got '$timeout_s'"
if [[ ${#command[@]} -eq 0 ]]; then
  [[ -n $config ]] || die_usage "give --config PATH or a command after --"
  extra_args=()
  if [[ -n $config_args ]]; then
    xargs printf '' <<<"$config_args" 2>/dev/null || die_usage "--config-args has an unmatched quote: $config_args"
    mapfile -d '' -t extra_args < <(xargs printf '%s\0' <<<"$config_args")
  fi
  command=("$python" -m robust_r1_jax.main --config="$config")
  [[ -n $workdir ]] && command+=(--config.workdir="$workdir")
  command+=("${extra_args[@]}")
elif [[ -n $config || -n $config_args || -n $workdir ]]; then
  die_usage "--config, --config-args and --workdir do not apply to a command given after --"
fi

# One entry per process: the host it runs on ("" = this machine) and its local device id ("" = all devices).
proc_hosts=() proc_devices=()
if [[ -n $local_count ]]; then
  [[ $local_count =~ ^[1-9][0-9]*$ ]] || die_usage "--local needs a positive process count, got '$local_count'"
  coordinator_host=127.0.0.1
  for ((k = 0; k < local_count; k++)); do
    proc_hosts+=("")
    if [[ $per_gpu == 1 ]]; then proc_devices+=("$k"); else proc_devices+=(""); fi
  done
  timeout_s=${timeout_s:-600}
else
  host_list=()
  if [[ -n $hosts_arg ]]; then
    IFS=',' read -r -a host_list <<<"$hosts_arg"
  else
    [[ -r $hostfile ]] || die_usage "cannot read host file '$hostfile'"
    while read -r line; do
      line=${line%%#*}
      line=${line//[[:space:]]/}
      [[ -n $line ]] && host_list+=("$line")
    done <"$hostfile"
  fi
  [[ ${#host_list[@]} -gt 0 ]] || die_usage "no hosts given"
  coordinator_host=${host_list[0]#*@}
  for host in "${host_list[@]}"; do
    [[ -n $host ]] || die_usage "empty host name in '$hosts_arg'"
    if [[ $per_gpu == 1 ]]; then
      for ((k = 0; k < gpus_per_host; k++)); do proc_hosts+=("$host"); proc_devices+=("$k"); done
    else
      proc_hosts+=("$host")
      proc_devices+=("")
    fi
  done
fi

num_processes=${#proc_hosts[@]}
coordinator="$coordinator_host:$port"
limit=()
[[ -n $timeout_s && $timeout_s != 0 ]] && limit=(timeout --foreground --kill-after=10 "$timeout_s")

# The full argv of process $1 on this machine (an ssh call for remote hosts).
process_argv() {
  local k=$1
  local env_vars=(JAX_COORDINATOR_ADDRESS="$coordinator" JAX_NUM_PROCESSES="$num_processes" JAX_PROCESS_ID="$k")
  [[ -n ${proc_devices[k]} ]] && env_vars+=(JAX_LOCAL_DEVICE_IDS="${proc_devices[k]}")
  if [[ -z ${proc_hosts[k]} ]]; then
    argv=("${limit[@]}" env "${env_vars[@]}" "${command[@]}")
  else
    # Killing the local ssh does not always reach the remote process; JAX's heartbeat then ends it.
    argv=("${limit[@]}" ssh -o BatchMode=yes "${proc_hosts[k]}"
      "cd $(shell_quote "$remote_dir") && exec env $(shell_quote "${env_vars[@]}" "${command[@]}")")
  fi
}

# The install command for host $1 ("" = this machine), once per host.
install_argv() {
  local pip=("$python" -m pip install -r "$requirements")
  if [[ -z $1 ]]; then
    argv=("${pip[@]}")
  else
    argv=(ssh -o BatchMode=yes "$1" "cd $(shell_quote "$remote_dir") && $(shell_quote "${pip[@]}")")
  fi
}

install_hosts=()
if [[ $install == 1 ]]; then
  for host in "${proc_hosts[@]}"; do
    seen=0
    for done_host in "${install_hosts[@]}"; do [[ $done_host == "$host" ]] && seen=1; done
    [[ $seen == 0 ]] && install_hosts+=("$host")
  done
fi

if [[ $dry_run == 1 ]]; then
  for host in "${install_hosts[@]}"; do
    install_argv "$host"
    printf '%s\n' "$(shell_quote "${argv[@]}")"
  done
  for ((k = 0; k < num_processes; k++)); do
    process_argv "$k"
    printf '%s\n' "$(shell_quote "${argv[@]}")"
  done
  exit 0
fi

for host in "${install_hosts[@]}"; do
  install_argv "$host"
  echo "multinode_gpu.sh: installing $requirements on ${host:-this machine}" >&2
  "${argv[@]}" || { echo "multinode_gpu.sh: the install on ${host:-this machine} failed" >&2; exit 1; }
done

# Each process starts as its own job (own process group), so stopping one stops its whole pipeline;
# monitor mode is switched off again afterwards so the shell does not print job notices.
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM -- "-$pid" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT TERM

set -m
for ((k = 0; k < num_processes; k++)); do
  process_argv "$k"
  ( set -o pipefail; "${argv[@]}" 2>&1 | sed -u "s/^/[p$k] /" ) &
  pids+=("$!")
done
set +m
echo "multinode_gpu.sh: started $num_processes processes, coordinator $coordinator" >&2

status=0
for ((left = num_processes; left > 0; left--)); do
  rc=0
  wait -n || rc=$?
  if [[ $rc != 0 && $status == 0 ]]; then
    status=$rc
    echo "multinode_gpu.sh: a process exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
