#!/usr/bin/env bash
# SmolLM2-135M-Instruct on 2 threads: emollama vs llama.cpp (llama-cpp-python) on the same weights, prompt and
# thread count, at two precisions: the Q4_1 GGUF (emollama: q4_1 weights, q8_0 activations, as llama.cpp) and
# f32 (emollama dequantizes the Q4_1 file; llama.cpp runs an F32 GGUF written from it by llama.cpp's own
# quantize API, the same values). emollama f32 is shown with candle's matmuls and with the oneDNN path
# generation uses for frozen weights. Needs `just fetch-models`; installs the pinned llama-cpp-python
# (compiles llama.cpp, a few minutes, once) into ~/.cache/emollama-py. Writes the table to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${THREADS:-2}"; NEW="${NEW_TOKENS:-64}"
VENV="${EMOLLAMA_PY:-$HOME/.cache/emollama-py}"
GGUF="${EMOLLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emollama}/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$GGUF" ]] || bash tools/fetch_models.sh
bash tools/install_llama_cpp.sh
F32="${GGUF%.Q4_1.gguf}.F32.gguf"
if [[ ! -f "$F32" ]]; then
  "$VENV/bin/python" - "$GGUF" "$F32.tmp" <<'PY'
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
params.allow_requantize = True
if llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)) != 0:
    sys.exit("llama_model_quantize failed")
PY
  mv "$F32.tmp" "$F32"
fi
ours=$(RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" cargo run --quiet --release --example bench_llm -- "$NEW")
# llama.cpp with its default OpenMP waiting: the justfile's OMP_WAIT_POLICY=passive (for emollama's oneDNN)
# made its threads sleep at every barrier (SmolLM2 q4_1 decode 19.6 instead of 81.4 tok/s on a 2-core Xeon).
theirs=$(env -u OMP_WAIT_POLICY "$VENV/bin/python" tools/bench/llama_cpp_bench.py "$GGUF" "$THREADS" "$NEW" q4_1; env -u OMP_WAIT_POLICY "$VENV/bin/python" tools/bench/llama_cpp_bench.py "$F32" "$THREADS" "$NEW" f32)
python3 - "$ours" "$theirs" <<'PY' | python3 tools/bench/write_section.py BENCHMARKS.md
import json, sys, datetime
rows = [json.loads(l) for a in sys.argv[1:] for l in a.splitlines() if l.strip()]
ref = {r["mode"]: r for r in rows if r["engine"] == "llama.cpp"}
precision = lambda r: "f32" if r["mode"].startswith("f32") else "q4_1"
q = ref["q4_1"]
# The CPU in the title: one section per instruction-set level, so AVX2 and AVX-512 rows stay side by side.
sys.path.insert(0, "tools/bench")
from cpu_info import describe
model, level, have = describe()
lines = [f"## LLM inference: SmolLM2-135M-Instruct (GGUF), CPU with {level}", "",
         f"{datetime.date.today()}, {model} ({have}), {q['threads']} threads, "
         f"prompt {q['prompt_tokens']} tokens, {q['new_tokens']} greedy tokens, median of 3, one session "
         "(`just bench`, tools/bench/llm_vs_llamacpp.sh). Ratios are against llama.cpp at the same precision "
         "(> 1: emollama is faster); f32 = the Q4_1 weights dequantized (llama.cpp: an F32 GGUF written from "
         "the Q4_1 file by its own quantize API).", "",
         "| engine | weights | prompt tok/s | decode tok/s | prompt vs llama.cpp | decode vs llama.cpp |",
         "|---|---|---|---|---|---|"]
for r in rows:
    b = ref[precision(r)]
    lines.append(f"| {r['engine']} | {r['mode']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} | "
                 f"{r['prefill_tok_s'] / b['prefill_tok_s']:.2f}x | {r['decode_tok_s'] / b['decode_tok_s']:.2f}x |")
print("\n".join(lines) + "\n")
PY
