#!/usr/bin/env bash
# Installs moto's S3-compatible server (PyPI `moto[server]`, pinned) into its own virtual environment, once,
# for the S3 tests: EMOLLAMA_CACHE (default ~/.cache/emollama) / moto-venv / bin / moto_server.
# The tests (and .ci/run) find it there; `EMOLLAMA_MOTO_SERVER` names another binary.
set -euo pipefail

MOTO_VERSION=5.2.1
VENV="${EMOLLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emollama}/moto-venv"
PYTHON="${PYTHON:-python3}"

if [[ -x "$VENV/bin/moto_server" ]] && "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "moto_server: $VENV/bin/moto_server (moto $MOTO_VERSION, installed)"
  exit 0
fi
echo "moto_server: installing moto[server]==$MOTO_VERSION into $VENV"
rm -rf "$VENV"
if ! "$PYTHON" -m venv "$VENV"; then
  echo "error: '$PYTHON -m venv' failed; on Debian/Ubuntu install python3-venv (tools/setup.sh does)" >&2
  exit 1
fi
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"; then
  echo "error: could not install moto[server]==$MOTO_VERSION from PyPI (network? pip?)" >&2
  exit 1
fi
echo "moto_server: $VENV/bin/moto_server (moto $MOTO_VERSION)"
