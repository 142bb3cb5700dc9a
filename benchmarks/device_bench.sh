#!/usr/bin/env bash
# One device call for issues 14 and 15: the peer (hf_baseline.py), then ours, JSON results beside the logs.
#
#   benchmarks/device_bench.sh [--dry] [peer] [sft] [rollout]      (no part named: all three, in that order)
#
# Full size (the lent GPU): SPEC section 7's workloads on Qwen2.5-VL-3B. SFT 4 x 2048 tokens, one 448 px image
# each, AdamW, vision frozen; rollout 8 prompts x 8 samples, 320 + 256 tokens, plus the GRPO shape 16 x 8 x 2048
# new tokens for the decode step's HBM share; the card's bf16 matmul and copy ceilings through JAX in each of
# ours' processes. The peer runs first, in its own process, so the two stacks never share the card's memory.
# --dry (or --preset tiny): everything at tiny size, peer included; runs on a CPU in a few minutes.
#
# Writes to $OUT (the device tool's folder; else /tmp/device_bench): peer.jsonl, sft.log, rollout.log and
# <date>-<device>-sft.json, <date>-<device>-rollout.json (copy those two into benchmarks/results/ and commit).
# The peer is ../shared/bench/hf_baseline.py (or $PEER_SCRIPT, shared/bench/, .peer/: the ../shared beside a
# checkout does not travel to the device, so copy it into .peer/ (git-ignored) and name .peer in `carry`);
# without it benchmarks/peer.py, which follows that script's method, stands in and the JSON says so.
# Nothing is installed: the import path of both benchmarks needs no grain, tensorflow-datasets or ml_collections.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

DRY=0
PARTS=()
for a in "$@"; do
  case "$a" in
    --dry|--preset=tiny|tiny) DRY=1 ;;
    --preset|--preset=3b|3b) ;;
    peer|sft|rollout) PARTS+=("$a") ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(peer sft rollout)
want() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

DEST=${OUT:-/tmp/device_bench}
mkdir -p "$DEST"
export BENCH_RESULTS_DIR="$DEST" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1
export BENCH_COMMIT=${BENCH_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
PY=${PYTHON:-python3}

PEER=benchmarks/peer.py
for c in "${PEER_SCRIPT:-}" ../shared/bench/hf_baseline.py ../../shared/bench/hf_baseline.py \
         shared/bench/hf_baseline.py .peer/hf_baseline.py; do
  if [[ -n "$c" && -f "$c" ]]; then PEER=$c; break; fi
done

if [[ $DRY == 1 ]]; then
  PRESET=tiny; TINY=--tiny
  SFT=(--bsz 2 --seqlen 64 --side 56 --warmup 1 --steps 2)
  GEN=(--batch 2 --samples 2 --prompt-len 32 --new-tokens 16 --image-side 56 --warmup 0 --repeats 2)
  HBM=2x2x16
  PEER_ARGS=(--bsz 2 --seqlen 64 --side 56 --warmup 1 --steps 2 --prompts 2 --group 2 --prompt_len 32
             --new_tokens 16)
else
  PRESET=3b; TINY=
  SFT=(--bsz 4 --seqlen 2048 --side 448 --warmup 2 --steps 5)
  GEN=(--batch 8 --samples 8 --prompt-len 320 --new-tokens 256 --image-side 448 --warmup 0 --repeats 2)
  HBM=16x8x2048
  PEER_ARGS=(--bsz 4 --seqlen 2048 --side 448 --warmup 2 --steps 5 --prompts 8 --group 8 --prompt_len 320
             --new_tokens 256)
fi
echo "device_bench: preset=$PRESET parts=${PARTS[*]} peer=$PEER out=$DEST commit=$BENCH_COMMIT" \
  "load=$(cut -d' ' -f1-3 /proc/loadavg)"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null || true

status=0
DEADLINE=$((SECONDS + ${BUDGET:-570}))  # the whole call; each part gets min(its cap, what is left)
left() { local l=$((DEADLINE - SECONDS)); (( l < $1 )) && echo $((l > 10 ? l : 10)) || echo "$1"; }
if want peer; then
  start=$SECONDS
  # shellcheck disable=SC2086
  timeout "$(left "${PEER_TIMEOUT:-200}")" "$PY" "$PEER" $TINY "${PEER_ARGS[@]}" --skip jax >"$DEST/peer.jsonl" \
    2>"$DEST/peer.err" || { echo "peer failed (rc $?)"; tail -20 "$DEST/peer.err"; status=1; }
  grep '"what"' "$DEST/peer.jsonl"; echo "peer: $((SECONDS - start)) s"
fi
PEER_FLAG=()
[[ -s "$DEST/peer.jsonl" ]] && PEER_FLAG=(--peer-json "$DEST/peer.jsonl")

if want sft; then
  start=$SECONDS
  timeout "$(left "${SFT_TIMEOUT:-240}")" "$PY" benchmarks/sft_step.py --preset $PRESET "${SFT[@]}" --ceilings \
    "${PEER_FLAG[@]}" --out auto >"$DEST/sft.log" 2>&1 || { echo "sft failed (rc $?)"; status=1; }
  tail -3 "$DEST/sft.log"; echo "sft: $((SECONDS - start)) s"
fi

if want rollout; then
  start=$SECONDS
  run_rollout() {
    timeout "$(left "${ROLLOUT_TIMEOUT:-360}")" "$PY" benchmarks/rollout.py --preset $PRESET "${GEN[@]}" \
      --attention "$1" --hbm-shape $HBM "${PEER_FLAG[@]}" --out auto >>"$DEST/rollout.log" 2>&1
  }
  run_rollout "${ROLLOUT_ATTENTION:-auto}"; rc=$?
  if [[ $rc != 0 && $rc != 124 ]]; then  # a kernel that would not compile, say: once more on the XLA path
    echo "rollout with --attention ${ROLLOUT_ATTENTION:-auto} failed (rc $rc); again with xla"
    tail -5 "$DEST/rollout.log"; run_rollout xla; rc=$?
  fi
  [[ $rc == 0 ]] || { echo "rollout failed (rc $rc)"; status=1; }
  tail -1 "$DEST/rollout.log"; echo "rollout: $((SECONDS - start)) s"
fi
rm -f "$DEST/peer.err"
ls -la "$DEST"
exit $status
