#!/usr/bin/env bash
# The GPU check kit: pack here, run on a lent GPU machine, or dry-run on the CPU. See --help.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KIT=${GPU_CHECK_KIT:-$ROOT/.gpu_kit}

usage() {
  cat <<'EOF'
Usage: scripts/gpu_check.sh pack | run | dry-run | size [--help]

  pack      (here) build .gpu_kit/: the trimmed Triton 2.51 runtime, the wheels the lent machine lacks
            (numpy<2, faiss-cpu, tritonclient), the int8 embedder, a tiny generator's config and a small
            knowledge base; prints what would travel and refuses above 64 MiB. Idempotent (FORCE=1 rebuilds).
  run       (on the device) unpack the kit into a scratch folder, then run benchmarks/gpu_check.py --mode gpu:
            Triton on deploy/specs/gpu-check.yaml, in-stub device/cap probes, nvidia-smi per process, a RAG
            answer, embedder throughput, pytest -m gpu. Writes $OUT/gpu_check.{md,json,log}. Ends in < 9 min (unpack
            <= 90 s, checks <= GPU_CHECK_BUDGET_S + 60 s).
  dry-run   (here, CI) the same driver in CPU mode: renders the spec, checks the kit's size logic and the
            report's parsing and verdicts; every GPU step is "not checked: no GPU". No network, < 1 minute.
  size      print what would travel now (working tree + .gpu_kit) against the 64 MiB limit.

Examples:
  scripts/gpu_check.sh pack
  # then, with the device tool:  run  command="bash scripts/gpu_check.sh run"  carry=[".gpu_kit"]  timeout_s=600
  scripts/gpu_check.sh dry-run
  OUT=/tmp/gpu-report scripts/gpu_check.sh dry-run

Environment: OUT (report folder; run: the device's $OUT), PYTHON (run: default /opt/torch/.venv/bin/python3,
else python3), GPU_CHECK_SCRATCH (run: default /tmp/tritonrag-gpu-check), GPU_CHECK_BUDGET_S (run: 360).
EOF
}

venv_python() {
  local py=${TRITONRAG_VENV:-$ROOT/.venv}/bin/python
  [[ -x $py ]] || { echo "error: no venv at $py: run scripts/setup.sh first" >&2; exit 2; }
  echo "$py"
}

cmd_pack() {
  local py; py=$(venv_python)
  local force=()
  [[ ${FORCE:-0} == 1 ]] && force=(--force)
  "$py" "$ROOT/benchmarks/gpu_kit.py" pack --kit "$KIT" "${force[@]}"
}

cmd_run() {
  local py=${PYTHON:-}
  if [[ -z $py ]]; then
    if [[ -x /opt/torch/.venv/bin/python3 ]]; then py=/opt/torch/.venv/bin/python3; else py=python3; fi
  fi
  local out=${OUT:?set OUT to the report folder (the device tool sets it)}
  local scratch=${GPU_CHECK_SCRATCH:-/tmp/tritonrag-gpu-check}
  [[ -f $KIT/manifest.json ]] || { echo "error: no kit at $KIT: run scripts/gpu_check.sh pack here, then carry .gpu_kit" >&2; exit 2; }
  mkdir -p "$out" "$scratch"
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  echo "== unpack ($(date -u +%T))"
  local paths
  paths=$(timeout 90 "$py" "$ROOT/benchmarks/gpu_kit.py" unpack --kit "$KIT" --scratch "$scratch" | tail -1)
  echo "$paths"
  # unpack made a venv of this interpreter: the kit's numpy<2, faiss-cpu and tritonclient first, then this
  # interpreter's packages, then src/, client/, benchmarks/ (Triton's stubs ignore PYTHONPATH; they use this venv)
  local venv_py="$scratch/venv/bin/python3"
  export TRITONRAG_HOME="$scratch/home" TRITONRAG_USE_LOCAL_TRITON=1
  export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$scratch/home/triton/libpython-fallback"
  echo "== check ($(date -u +%T))"
  timeout -k 10 "$(( ${GPU_CHECK_BUDGET_S:-360} + 60 ))" "$venv_py" "$ROOT/benchmarks/gpu_check.py" --mode gpu \
    --out "$out" --scratch "$scratch" --paths "$paths" --budget-s "${GPU_CHECK_BUDGET_S:-360}" \
    --command-line "bash scripts/gpu_check.sh run (carry .gpu_kit)"
}

cmd_dry_run() {
  local py; py=$(venv_python)
  local out=${OUT:-$ROOT/benchmarks/results/tmp/gpu-check-dry-run}
  HF_HUB_OFFLINE=1 timeout 120 "$py" "$ROOT/benchmarks/gpu_check.py" --mode dry-run --out "$out" --budget-s 60 \
    --command-line "scripts/gpu_check.sh dry-run"
}

case ${1:-} in
  pack) cmd_pack ;;
  run) cmd_run ;;
  dry-run) cmd_dry_run ;;
  size) "$(venv_python)" "$ROOT/benchmarks/gpu_kit.py" size --kit "$KIT" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
