#!/usr/bin/env bash
# Render the model repository from a deployment spec (default: the CPU spec, which model_repository/ is).
#   scripts/render.sh --spec deploy/specs/gpu-8.yaml --dry-run          # the placement plan as a table
#   scripts/render.sh --spec deploy/specs/gpu-1.yaml --output /srv/repo # a complete repository elsewhere
#   scripts/render.sh --check                                           # is model_repository/ still the rendering?
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TRITONRAG_VENV:-$ROOT/.venv}
[ -x "$VENV/bin/tritonrag" ] || { echo "no venv at $VENV: run scripts/setup.sh first" >&2; exit 1; }
cd "$ROOT"
exec "$VENV/bin/tritonrag" render "$@"
