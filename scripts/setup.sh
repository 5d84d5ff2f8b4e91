#!/usr/bin/env bash
# Creates .venv and installs clipfind into it (with test tools when given "test").
# The package is installed editable, so code changes need no reinstall: only pyproject.toml (the
# dependencies), this script, the Python or the extra asked for can change what is installed. A
# stamp of those makes a second run with nothing changed a no-op in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[ "${1:-}" = "test" ] && extra="test"
# The OCR tests render captions in Debian's DejaVu and WenQuanYi Zen Hei (Chinese) fonts. Checked
# before the stamp, so a machine that lost them gets them back; where apt cannot run (not root,
# not Debian, offline) the tests that need them skip and say why.
if [ -n "$extra" ] && { [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
  || [ ! -e /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends fonts-dejavu-core fonts-wqy-zenhei > /dev/null; } \
      || echo "setup: could not install fonts-dejavu-core fonts-wqy-zenhei; OCR tests will skip" >&2
  else
    echo "setup: install fonts-dejavu-core fonts-wqy-zenhei for the OCR tests (needs root)" >&2
  fi
fi
digest=$({ cat pyproject.toml scripts/setup.sh; python3 --version; } \
  | python3 -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
# One stamp per extra; the test install includes the plain one, so it writes both.
stamp=".venv/.clipfind-installed${extra:+-$extra}"
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$digest" ]; then
  exit 0
fi
rm -f .venv/.clipfind-installed*  # a failed install below must not leave a stamp behind
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extra:+[$extra]}"
echo "$digest" > .venv/.clipfind-installed
[ -z "$extra" ] || echo "$digest" > "$stamp"
