#!/usr/bin/env bash
# Sets up a test environment from scratch if needed, then runs lint, the format check and the whole
# test suite; with --quick first, only the tests that start no bot (tests/unit, tests/db and the
# stand-in's own). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ]; then
  shift
  set -- tests/unit tests/db tests/fakediscord/tests "$@"
fi
./scripts/setup.sh test  # a no-op in seconds when nothing changed
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
