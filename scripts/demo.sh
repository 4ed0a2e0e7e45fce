#!/usr/bin/env bash
# Set up (idempotent), start Triton on the model repository, stream answers to the demo's three questions.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${TRITONRAG_VENV:-$ROOT/.venv}/bin/tritonrag" demo "$@"
