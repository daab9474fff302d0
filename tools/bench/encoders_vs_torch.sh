#!/usr/bin/env bash
# The four Emotion-LLaMA encoders at their real sizes (random weights, f32): emollama (candle) against
# PyTorch 2.5.1 (transformers / timm) on the same input shapes and thread count. Writes the table into
# BENCHMARKS.md. Needs the fixtures venv (~/.cache/emollama-py with torch 2.5.1, transformers 4.46.3, timm 1.0.12)
# and ~12 GB of RAM (EVA-g in both frameworks, one after the other).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${THREADS:-2}"; REPEATS="${REPEATS:-3}"
VENV="${EMOLLAMA_PY:-$HOME/.cache/emollama-py}"
if ! "$VENV/bin/python" -c "import torch, transformers, timm" 2>/dev/null; then
  echo "error: $VENV lacks torch/transformers/timm; install: $VENV/bin/pip install torch==2.5.1 transformers==4.46.3 timm==1.0.12" >&2
  exit 1
fi
ours=$(RAYON_NUM_THREADS="$THREADS" cargo run --quiet --release --example encoder_bench -- "$REPEATS")
theirs=$("$VENV/bin/python" tools/bench/encoders_torch.py --threads "$THREADS" --repeats "$REPEATS")
python3 - "$ours" "$theirs" "$THREADS" "$REPEATS" <<'PY' | python3 tools/bench/write_section.py BENCHMARKS.md
import json, sys, datetime, platform
ours = {r["name"]: r for r in (json.loads(l) for l in sys.argv[1].splitlines() if l.strip())}
theirs = json.loads(sys.argv[2])
threads, repeats = sys.argv[3], sys.argv[4]
torch_v = next(iter(theirs.values()))["torch"]
lines = ["## Encoders at real size: emollama (candle) vs PyTorch, CPU f32", "",
         f"{datetime.date.today()}, {platform.machine()}, {threads} threads, random weights, forward pass only, median of "
         f"{repeats} after a warm-up (`just bench`, tools/bench/encoders_vs_torch.sh; PyTorch {torch_v} with "
         "transformers 4.46.3 / timm 1.0.12 on the same shapes).", "",
         "| encoder | input | emollama s | PyTorch s | emollama / PyTorch |", "|---|---|---|---|---|"]
for name, r in ours.items():
    t = theirs[name]
    lines.append(f"| {name} | {r['input']} | {r['median_s']:.2f} | {t['median_s']:.2f} | {r['median_s'] / t['median_s']:.2f}x |")
print("\n".join(lines))
PY
cat BENCHMARKS.md
