#!/usr/bin/env bash
# Sets up a test environment from scratch if needed, then runs lint, the format check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh test  # a no-op in seconds when nothing changed
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
