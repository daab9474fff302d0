#!/usr/bin/env bash
# SmolLM2-135M-Instruct Q4_1 on 2 threads: emollama (quantized and f32) vs llama.cpp (llama-cpp-python) on the
# same file and prompt. Needs `just fetch-models`; installs the pinned llama-cpp-python (compiles llama.cpp,
# a few minutes, once) into ~/.cache/emollama-py. Writes the table to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${THREADS:-2}"; NEW="${NEW_TOKENS:-64}"
VENV="${EMOLLAMA_PY:-$HOME/.cache/emollama-py}"
GGUF="${EMOLLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emollama}/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$GGUF" ]] || bash tools/fetch_models.sh
bash tools/install_llama_cpp.sh
ours=$(RAYON_NUM_THREADS="$THREADS" cargo run --quiet --release --example bench_llm -- "$NEW")
theirs=$("$VENV/bin/python" tools/bench/llama_cpp_bench.py "$GGUF" "$THREADS" "$NEW")
python3 - "$ours" "$theirs" <<'PY' | python3 tools/bench/write_section.py BENCHMARKS.md
import json, sys, datetime, platform
rows = [json.loads(l) for a in sys.argv[1:] for l in a.splitlines() if l.strip()]
ref = next(r for r in rows if r["engine"] == "llama.cpp")
lines = ["## LLM inference: SmolLM2-135M-Instruct (GGUF Q4_1), CPU", "",
         f"{datetime.date.today()}, {platform.processor() or platform.machine()}, {ref['threads']} threads, "
         f"prompt {ref['prompt_tokens']} tokens, {ref['new_tokens']} greedy tokens, median of 3 "
         "(`just bench`, tools/bench/llm_vs_llamacpp.sh).", "",
         "| engine | weights | prompt tok/s | decode tok/s | decode vs llama.cpp |", "|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['engine']} | {r['mode']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
                 f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f}x |")
table = "\n".join(lines) + "\n"
print(table)
PY

