#!/usr/bin/env bash
# Set up (idempotent), then run lint and the whole test suite: unit tests and integration tests against a
# real tritonserver. Extra arguments go to pytest (e.g. scripts/test.sh -m "not integration").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
cd "$ROOT"
VENV=${TRITONRAG_VENV:-$ROOT/.venv}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$VENV/bin/ruff" check .
# the layers ([tool.importlinter] in pyproject.toml); --no-cache: nothing written into the checkout
"$VENV/bin/lint-imports" --no-cache --no-logo
# security lint of the package ([tool.bandit] in pyproject.toml: what is skipped and why); fails on medium or worse
"$VENV/bin/bandit" -c pyproject.toml -r src client -q --severity-level medium
exec "$VENV/bin/python" -m pytest "$@"
