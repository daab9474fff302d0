#!/usr/bin/env bash
# LoRA training steps of SmolLM2-135M on 2 threads: emollama (examples/bench_lora_step.rs) against PyTorch + PEFT
# (tools/bench/lora_step_torch.py) on the same model shape, adapter, batch, sequence lengths and thread count.
# Needs `just fetch-models` and a venv with torch, transformers 4.46.3 and peft 0.13.2 (EMOLLAMA_TORCH_PY,
# default ~/.cache/emollama-torch). Writes the table to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${THREADS:-2}"; LENGTHS="${LENGTHS:-128 192}"
VENV="${EMOLLAMA_TORCH_PY:-$HOME/.cache/emollama-torch}"
if ! "$VENV/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
  echo "error: $VENV lacks torch/transformers/peft; install: python3 -m venv $VENV && $VENV/bin/pip install torch==2.5.1 transformers==4.46.3 peft==0.13.2" >&2
  exit 1
fi
CFG="$(mktemp -d)"; trap 'rm -rf "$CFG"' EXIT
# shellcheck disable=SC2086
ours=$(RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" cargo run --quiet --release --example bench_lora_step -- "$CFG" $LENGTHS)
# PyTorch without the justfile's OMP_WAIT_POLICY=passive (meant for emollama's oneDNN).
# shellcheck disable=SC2086
theirs=$(env -u OMP_WAIT_POLICY "$VENV/bin/python" tools/bench/lora_step_torch.py "$CFG" "$THREADS" $LENGTHS)
python3 - "$ours" "$theirs" <<'PY' | python3 tools/bench/write_section.py BENCHMARKS.md
import json, sys, datetime
rows = [json.loads(l) for a in sys.argv[1:] for l in a.splitlines() if l.strip()]
sys.path.insert(0, "tools/bench")
from cpu_info import describe
model, level, have = describe()
torch = {r["seq_len"]: r for r in rows if r["engine"] != "emollama"}
ref = next(iter(torch.values()))
lines = [f"## LoRA training step: SmolLM2-135M, emollama vs PyTorch + PEFT, CPU with {level}", "",
         f"{datetime.date.today()}, {model} ({have}), {ref['threads']} threads, batch {ref['batch']}, median of 3 steps "
         "after a warm-up (`just bench`, tools/bench/lora_step_vs_peft.sh). SmolLM2-135M's shape (30 layers, hidden 576, "
         "vocab 49152, tied embeddings) frozen in f32, the manifest's adapter (r 16, alpha 32, dropout 0.05 on q_proj "
         "and v_proj; the same trainable count on both sides), `labels = input_ids` (loss over every position), "
         "backward, clipping at 1, AdamW. emollama's base weights are the GGUF dequantized, PyTorch's random "
         f"(a step's time does not depend on the values); {ref['engine']} with {ref['attention']} attention. "
         "Ratio > 1: emollama is slower.", "",
         "| sequence length | trainable | emollama s/step | PyTorch + PEFT s/step | ratio |", "|---|---|---|---|---|"]
for r in rows:
    if r["engine"] == "emollama":
        t = torch[r["seq_len"]]
        lines.append(f"| {r['seq_len']} | {r['trainable']} | {r['step_s']:.2f} | {t['step_s']:.2f} | {r['step_s'] / t['step_s']:.2f}x |")
print("\n".join(lines) + "\n")
PY
