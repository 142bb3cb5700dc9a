#!/usr/bin/env bash
# Run robust_r1_jax on a Cloud TPU slice: create (or reuse) it, install the project on every worker, start
# `python -m robust_r1_jax.main` on all workers, stream worker 0's log, and tear down on request.
set -euo pipefail

readonly REMOTE_DIR="robust_r1_jax"          # relative to each worker's home directory
readonly REMOTE_LOG="robust_r1_jax.log"      # one per worker, on that worker's disk
readonly REMOTE_PID="robust_r1_jax.pid"
readonly JAX_TPU_RELEASES="https://storage.googleapis.com/jax-releases/libtpu_releases.html"

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --name NAME --zone ZONE [options]

  --name NAME              TPU VM (or queued resource) name                       (required)
  --zone ZONE              e.g. us-east5-a                                        (required)
  --project PROJECT        Google Cloud project (default: gcloud's configured project)
  --accelerator-type TYPE  e.g. v5p-8, v6e-8                     (required unless only tearing down)
  --version RUNTIME        TPU software version, e.g. v2-alpha-tpuv6e   (required unless only tearing down)
  --queued                 request a queued resource instead of a plain TPU VM
  --spot                   use spot capacity
  --wait-minutes N         how long to wait for a queued resource to become ACTIVE (default 120)
  --config PATH            config under configs/ to run; without it the slice is only created and set up
  --config-args "ARGS"     extra overrides passed on, e.g. "--config.sft.steps=100 --config.seed=1"
  --repo URL|PATH          git URL to clone, or local checkout to copy (default: this checkout)
  --workdir PATH|gs://...  passed on as --config.workdir
  --teardown               delete the slice after the run; with no --config, only delete it
  --dry-run                print every command instead of running it
  -h, --help               show this help

Exit codes: 0 done, 1 a command failed, 2 bad arguments or gcloud missing.
EOF
}

die_usage() {
  echo "tpu_pod.sh: $1" >&2
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

run() {
  if [[ $dry_run == 1 ]]; then
    printf '%s\n' "$(shell_quote "$@")"
  else
    printf '+ %s\n' "$(shell_quote "$@")" >&2
    "$@"
  fi
}

name="" zone="" project="" accelerator_type="" runtime_version="" config="" config_args="" workdir=""
queued=0 spot=0 teardown=0 dry_run=0 wait_minutes=120
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

need_value() {
  [[ $# -ge 2 && -n $2 && $2 != --* ]] || die_usage "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --name) need_value "$@"; name=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --accelerator-type) need_value "$@"; accelerator_type=$2; shift 2 ;;
    --version) need_value "$@"; runtime_version=$2; shift 2 ;;
    --config) need_value "$@"; config=$2; shift 2 ;;
    --config-args) [[ $# -ge 2 ]] || die_usage "--config-args needs a value"; config_args=$2; shift 2 ;;
    --repo) need_value "$@"; repo=$2; shift 2 ;;
    --workdir) need_value "$@"; workdir=$2; shift 2 ;;
    --wait-minutes) need_value "$@"; wait_minutes=$2; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --teardown) teardown=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done

[[ -n $name ]] || die_usage "--name is required"
[[ -n $zone ]] || die_usage "--zone is required"
teardown_only=0
[[ $teardown == 1 && -z $config ]] && teardown_only=1
if [[ $teardown_only == 0 ]]; then
  [[ -n $accelerator_type ]] || die_usage "--accelerator-type is required"
  [[ -n $runtime_version ]] || die_usage "--version is required"
fi
[[ $wait_minutes =~ ^[0-9]+$ ]] || die_usage "--wait-minutes must be a whole number, got '$wait_minutes'"
[[ -z $config || $config == configs/* ]] || die_usage "--config must be a path under configs/, got '$config'"
if [[ -d $repo ]]; then
  repo_kind=local
elif [[ $repo =~ ^(https?|ssh|git):// || $repo =~ ^[A-Za-z0-9._-]+@[^:]+: || $repo == *.git ]]; then
  repo_kind=git
else
  die_usage "--repo '$repo' is neither a local directory nor a git URL"
fi
# Split --config-args like a shell would (quotes group words) without evaluating anything in it.
extra_args=()
if [[ -n $config_args ]]; then
  xargs printf '' <<<"$config_args" 2>/dev/null ||
    die_usage "--config-args has an unmatched quote: $config_args"
  mapfile -d '' -t extra_args < <(xargs printf '%s\0' <<<"$config_args")
fi

if [[ $dry_run == 0 ]] && ! command -v gcloud >/dev/null 2>&1; then
  echo "tpu_pod.sh: gcloud not found on PATH; install the Google Cloud CLI" \
    "(https://cloud.google.com/sdk/docs/install) or use --dry-run to see the commands" >&2
  exit 2
fi

location=(--zone="$zone")
[[ -n $project ]] && location+=(--project="$project")
if [[ $queued == 1 ]]; then
  resource=(gcloud compute tpus queued-resources)
else
  resource=(gcloud compute tpus tpu-vm)
fi
ssh_all=(gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=all)

slice_exists() {
  if [[ $dry_run == 1 ]]; then
    run "${resource[@]}" describe "$name" "${location[@]}"
    return 1  # a dry run shows the path that creates the slice
  fi
  "${resource[@]}" describe "$name" "${location[@]}" >/dev/null 2>&1
}

wait_until_active() {
  local state deadline=$((SECONDS + wait_minutes * 60))
  while true; do
    state=$(run "${resource[@]}" describe "$name" "${location[@]}" --format='value(state.state)')
    [[ $dry_run == 1 ]] && { echo "$state"; return 0; }
    case $state in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED) echo "tpu_pod.sh: queued resource $name is $state" >&2; exit 1 ;;
    esac
    if ((SECONDS >= deadline)); then
      echo "tpu_pod.sh: queued resource $name still $state after $wait_minutes minutes; it stays queued" \
        "(delete it with --teardown)" >&2
      exit 1
    fi
    echo "tpu_pod.sh: queued resource $name is $state; waiting" >&2
    sleep 30
  done
}

create_slice() {
  if slice_exists; then
    echo "tpu_pod.sh: reusing existing $name" >&2
    return 0
  fi
  local spot_flag=()
  [[ $spot == 1 ]] && spot_flag=(--spot)
  if [[ $queued == 1 ]]; then
    run "${resource[@]}" create "$name" --node-id="$name" "${location[@]}" \
      --accelerator-type="$accelerator_type" --runtime-version="$runtime_version" "${spot_flag[@]}"
    wait_until_active
  else
    run "${resource[@]}" create "$name" "${location[@]}" \
      --accelerator-type="$accelerator_type" --version="$runtime_version" "${spot_flag[@]}"
  fi
}

install_project() {
  local fetch
  if [[ $repo_kind == local ]]; then
    local archive="${TMPDIR:-/tmp}/robust_r1_jax-$name.tgz"
    run tar -C "$repo" --exclude=.git --exclude=__pycache__ -czf "$archive" .
    run gcloud compute tpus tpu-vm scp "$archive" "$name:$REMOTE_DIR.tgz" "${location[@]}" --worker=all
    run rm -f "$archive"
    fetch="mkdir -p $REMOTE_DIR && tar -xzf $REMOTE_DIR.tgz -C $REMOTE_DIR"
  else
    local url
    url=$(shell_quote "$repo")
    fetch="if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR pull --ff-only; else git clone $url $REMOTE_DIR; fi"
  fi
  # requirements-tpu.txt: requirements.txt plus jax[tpu] at the jax pin, which pulls the matching libtpu.
  run "${ssh_all[@]}" --command="set -e; $fetch; cd $REMOTE_DIR && python3 -m pip install -r requirements-tpu.txt -f $JAX_TPU_RELEASES"
}

start_run() {
  local args=(--config="$config")
  [[ -n $workdir ]] && args+=(--config.workdir="$workdir")
  args+=("${extra_args[@]}")
  run "${ssh_all[@]}" --command="cd $REMOTE_DIR || exit 1; nohup python3 -m robust_r1_jax.main $(shell_quote "${args[@]}") > ../$REMOTE_LOG 2>&1 < /dev/null & echo \$! > ../$REMOTE_PID"
  # tail stops by itself once worker 0's process exits.
  run gcloud compute tpus tpu-vm ssh "$name" "${location[@]}" --worker=0 \
    --command="tail -n +1 --pid=\"\$(cat $REMOTE_PID)\" -F $REMOTE_LOG"
}

delete_slice() {
  if [[ $queued == 1 ]]; then
    run "${resource[@]}" delete "$name" "${location[@]}" --force --quiet
  else
    run "${resource[@]}" delete "$name" "${location[@]}" --quiet
  fi
}

if [[ $teardown_only == 0 ]]; then
  create_slice
  install_project
  [[ -n $config ]] && start_run
fi
if [[ $teardown == 1 ]]; then
  delete_slice
fi
exit 0
