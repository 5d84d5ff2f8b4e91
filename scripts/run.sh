#!/usr/bin/env bash
# Sets up (first time only) and runs the bot with settings from .env / the environment.
# Arguments go to `python -m bot`: `run.sh check` checks the configuration without starting it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh  # a no-op in seconds when nothing changed
[ -f .env ] || { cp .env.example .env; echo "Created .env from .env.example: put your DISCORD_TOKEN in it." >&2; }
exec .venv/bin/python -m bot "$@"
