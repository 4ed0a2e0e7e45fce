#!/usr/bin/env bash
# Set up (idempotent), then run the benchmark suite: perf_analyzer on every model, the end-to-end RAG
# pipeline against the Ray Serve + ChromaDB baseline (also over a share of repeated and paraphrased questions),
# the vLLM engine alone on the pipeline's prompts, locust, component limits and orchestration overhead.
#   scripts/bench.sh            # quick mode (~15 min): results in benchmarks/results/<date>-quick/
#   scripts/bench.sh --full     # full mode (~45 min on 2 cores): results in benchmarks/results/<date>/
# Other arguments go to benchmarks/suite.py (see --help), e.g. --skip baseline,locust.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
VENV=${TRITONRAG_VENV:-$ROOT/.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$VENV/bin/python" benchmarks/suite.py "$@"
