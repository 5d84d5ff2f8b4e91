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
# Two workers per core (at most 8), each given whole files (--dist loadfile), so a module's
# running bot (`world`, `world_on`) starts once; each worker has its own embedded PostgreSQL.
# The files go out longest first, in the order tests/conftest.py sorts them
# (--no-loadscope-reorder: pytest-xdist would otherwise hand out the files with the most tests
# first, and a one-test file of seconds came last, alone).
# Two per core because the tests wait (for processes to start, for the stand-in, for PostgreSQL)
# more than they compute: on 2 cores, 4 workers ran the suite in 0.71 of the time 2 took
# (benchmarks/RESULTS.md, "The test suite in folders"). TEST_WORKERS=0 runs every test in this
# one process.
workers=$(( $(nproc) * 2 ))  # before OMP_NUM_THREADS is set below: nproc reads it
# One thread for each worker's torch (and for the bots the tests start): the workers already keep
# every core busy, and torch's idle threads spin for the cores the others need (the quick set in
# 0.83 of the time, benchmarks/RESULTS.md).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Bytecode cached: every worker and every bot a test starts would otherwise compile the project
# (and pytest rewrite every test file) from source again, where the environment says not to write
# it (about 1 s of CPU per worker's collection, benchmarks/RESULTS.md).
unset PYTHONDONTWRITEBYTECODE
.venv/bin/python -m pytest -n "${TEST_WORKERS:-$(( workers < 8 ? workers : 8 ))}" --dist loadfile --no-loadscope-reorder "$@"
