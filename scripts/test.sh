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
# Two workers (CI's machines have two cores), each given whole files (--dist loadfile), so a
# module's running bot (`world`, `world_on`) starts once; each worker has its own embedded
# PostgreSQL. TEST_WORKERS=0 runs every test in this one process.
.venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
