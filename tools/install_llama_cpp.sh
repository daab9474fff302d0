#!/usr/bin/env bash
# Installs llama.cpp's OpenAI-compatible server (PyPI `llama-cpp-python[server]`, pinned; compiles llama.cpp,
# a few minutes, once) into its own virtual environment: EMOLLAMA_PY (default ~/.cache/emollama-py). Used by
# the judge tests (an HTTP judge serving the SmolLM2 GGUF) and `just bench` (llama.cpp tokens/s).
set -euo pipefail

VERSION=0.3.16
VENV="${EMOLLAMA_PY:-$HOME/.cache/emollama-py}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import llama_cpp, uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  echo "llama-cpp-python: $VENV ($VERSION, with the server, installed)"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV" || { echo "error: '$PYTHON -m venv' failed; install python3-venv" >&2; exit 1; }
echo "llama-cpp-python: installing llama-cpp-python[server]==$VERSION into $VENV (compiles llama.cpp; a few minutes)"
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "llama-cpp-python[server]==$VERSION" numpy; then
  echo "error: could not install llama-cpp-python[server]==$VERSION from PyPI (network? a C++ compiler and cmake?)" >&2
  exit 1
fi
echo "llama-cpp-python: $VENV ($VERSION, with the server)"
