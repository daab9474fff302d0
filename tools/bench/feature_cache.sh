#!/usr/bin/env bash
# Times the two epochs of recipes/bench/feature_cache.toml from a cold feature cache (epoch 1: decode +
# encode every clip; epoch 2: cached features) and writes the "Feature cache" section of BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${CARGO_TARGET_DIR:-target}/release/emollama"
cache="$(mktemp -d)"
trap 'rm -rf "$cache"' EXIT
# The synthetic clips are generated into the (temporary) cache first; that is not part of an epoch.
"$bin" run recipes/bench/feature_cache.toml --no-progress --set "runtime.cache_dir=\"$cache\"" --set runtime.threads=2 > /dev/null
run="$(ls -d target/bench-runs/bench-feature-cache-* | sort | tail -1)"
python3 - "$run" <<'PY'
import json, sys, pathlib
run = pathlib.Path(sys.argv[1])
lines = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
train = [l for l in lines if l.get("kind") == "train"]
# Steps whose batch came from the second pass over the data.
first = [l for l in train if l["epoch"] <= 1.0]
second = [l for l in train if l["epoch"] > 1.0]
t1 = first[-1]["elapsed_s"]
t2 = second[-1]["elapsed_s"] - t1
m = json.loads((run / "metrics.json").read_text())
c = m.get("feature_cache") or {}
body = (
    f"## Feature cache (frozen encoders)\n\n"
    f"`tools/bench/feature_cache.sh`: Emotion-LLaMA layout, four tiny frozen encoders (64x64 input), LoRA + projectors trained, 256 synthetic clips of 640x360, 25 fps, 4 s (16 frames sampled), batch 16, 2 threads, cold cache.\n\n"
    f"| epoch | steps | seconds | per step |\n|---|---|---|---|\n"
    f"| 1 (decode + encode, cache misses) | {len(first)} | {t1:.1f} | {t1/len(first):.2f} |\n"
    f"| 2 (cached features) | {len(second)} | {t2:.1f} | {t2/len(second):.2f} |\n\n"
    f"Second epoch {t1/t2:.1f}x faster. Cache: {c.get('misses')} misses, {c.get('hits')} hits.\n"
)
print(body)
import subprocess
subprocess.run([sys.executable, "tools/bench/write_section.py", "BENCHMARKS.md"], input=body.encode(), check=True)
PY
