#!/usr/bin/env bash
# The four Emotion-LLaMA encoders and VideoLLaMA2's SigLIP tower at their real sizes (random weights): emollama against PyTorch
# (transformers / timm) on the same input shapes and thread count, in f32 and bf16, plus the matmul
# micro-benchmark (machine peak and the large Linear layers) in the same session. Writes two sections of
# BENCHMARKS.md. Needs a venv with torch 2.5.1, transformers 4.46.3, timm 1.0.12 (EMOLLAMA_TORCH_PY, default
# ~/.cache/emollama-torch) and ~12 GB of RAM (EVA-g in both frameworks, one after the other).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${THREADS:-2}"; REPEATS="${REPEATS:-5}"
# bf16 columns only where the CPU multiplies bf16 natively (AMX / AVX512_BF16); elsewhere both frameworks
# emulate it slowly (PyTorch's bf16 2048³ matmul took minutes on the AVX2 development machine). BF16=1 forces.
if [[ -z "${BF16:-}" ]]; then
  if grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo 2>/dev/null; then BF16=1; else BF16=0; fi
fi
VENV="${EMOLLAMA_TORCH_PY:-$HOME/.cache/emollama-torch}"
if ! "$VENV/bin/python" -c "import torch, transformers, timm" 2>/dev/null; then
  echo "error: $VENV lacks torch/transformers/timm; install: python3 -m venv $VENV && $VENV/bin/pip install torch==2.5.1 transformers==4.46.3 timm==1.0.12" >&2
  exit 1
fi
export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS"
cargo build --quiet --release --example encoder_bench --example accel_bench
bin="${CARGO_TARGET_DIR:-target}/release/examples"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# CANDLE=0 skips the candle-only column (slow: minutes per encoder).
ours_modes=(f32); [[ "${CANDLE:-1}" == 1 ]] && ours_modes=(candle f32); torch_modes=(f32)
if [[ "$BF16" == 1 ]]; then ours_modes+=(bf16); torch_modes+=(bf16 autocast); fi
# Encoder by encoder, emollama then PyTorch back to back, so a slow spell of the machine hits both sides.
# VideoLLaMA2-AV's BEATs too when VL2_SRC names a VideoLLaMA2 checkout (audio_visual branch) to import it from.
# ENCODERS="a b" measures only those.
read -r -a names <<< "${ENCODERS:-hubert-large vit-mae-large videomae-large eva-vit-g siglip-so400m}"; vl2=()
if [[ -n "${VL2_SRC:-}" ]]; then names+=(beats-iter3-plus); vl2=(--vl2-src "$VL2_SRC"); fi
for name in "${names[@]}"; do
  # candle alone is the before-oneDNN reference column: two runs suffice.
  for p in "${ours_modes[@]}"; do r=$REPEATS; [[ "$p" == candle ]] && r=2; "$bin/encoder_bench" "$r" --precision "$p" "$name" >> "$tmp/ours-$p.jsonl"; done
  # PyTorch with its default OpenMP waiting (the justfile's OMP_WAIT_POLICY=passive is for emollama's oneDNN).
  for d in "${torch_modes[@]}"; do env -u OMP_WAIT_POLICY "$VENV/bin/python" tools/bench/encoders_torch.py --threads "$THREADS" --repeats "$REPEATS" --dtype "$d" --only "$name" ${vl2[@]+"${vl2[@]}"} >> "$tmp/torch-$d.jsonl"; done
done
"$bin/accel_bench" 10 > "$tmp/accel.jsonl"
env -u OMP_WAIT_POLICY "$VENV/bin/python" - "$THREADS" "$BF16" > "$tmp/torch-peak.json" <<'PY'
import json, statistics, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
out = {}
for name, dt in [("f32", torch.float32), ("bf16", torch.bfloat16)][: 2 if sys.argv[2] == "1" else 1]:
    a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
    for _ in range(2): a @ b
    runs = []
    for _ in range(10):
        t = time.perf_counter(); a @ b; runs.append(time.perf_counter() - t)
    out[name] = 2 * 2048 ** 3 / statistics.median(runs) / 1e9
# The encoders' attention (16 heads of 64) through sdpa, as accel_bench measures emollama's.
F = torch.nn.functional
for name, b, t in [("VideoMAE-L (16 frames)", 1, 1568), ("HuBERT-L (10 s)", 1, 499), ("ViT-MAE-L (16 crops)", 16, 197)]:
    q, k, v = torch.randn(b, t, 3, 16, 64).permute(2, 0, 3, 1, 4)
    for _ in range(2): F.scaled_dot_product_attention(q, k, v)
    runs = []
    for _ in range(10):
        t0 = time.perf_counter(); F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, 1024); runs.append(time.perf_counter() - t0)
    out["sdpa " + name] = 4 * b * 16 * t * t * 64 / statistics.median(runs) / 1e9
print(json.dumps(out))
PY
python3 - "$tmp" "$THREADS" "$REPEATS" <<'PY' | python3 tools/bench/write_section.py BENCHMARKS.md
import json, sys, datetime, pathlib
tmp, threads, repeats = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
# One pair of sections per instruction-set level, so the AVX2 and AVX-512 / AMX rows stay side by side.
sys.path.insert(0, "tools/bench")
from cpu_info import describe
model, level, have = describe()
ours = {}
for p in ["candle", "f32", "bf16"]:
    ours[p] = {}
    f = tmp / f"ours-{p}.jsonl"
    for line in (f.read_text().splitlines() if f.exists() else []):
        if line.strip():
            r = json.loads(line); ours[p][r["name"]] = r
torch = {}
for d in ["f32", "bf16", "autocast"]:
    f = tmp / f"torch-{d}.jsonl"
    torch[d] = {k: v for line in (f.read_text().splitlines() if f.exists() else []) if line.strip() for k, v in json.loads(line).items()}
na = lambda d, name: d.get(name, {}).get("median_s")
fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
backend = next(iter(ours["f32"].values()))["backend"]
tv = next(iter(torch["f32"].values()))["torch"]
arith = next(iter(ours["bf16"].values()), {}).get("bf16_arith")
bf16_arith = {"native": "in oneDNN's bf16 kernels", "rounded-f32": "as f32 FMAs on bf16-rounded operands (no AMX: faster than bf16 instructions)"}.get(arith, "")
L = [f"## Encoders at real size: emollama vs PyTorch, f32 and bf16, CPU with {level}", "",
     f"{datetime.date.today()}, {model} ({have}), {threads} threads, random weights, forward pass only, median of {repeats} after a warm-up (candle f32: of 2), "
     f"encoder by encoder with emollama and PyTorch back to back, one session (`just bench`, tools/bench/encoders_vs_torch.sh; emollama with {backend}; PyTorch {tv} with transformers "
     "4.46.3 / timm 1.0.12 on the same shapes). emollama bf16 = bf16 matmul operands with f32 accumulation and f32 activations "
     f"(like PyTorch's CPU autocast), its products {bf16_arith}; PyTorch bf16 = model and input in bfloat16. Ratio < 1: emollama is faster. Seconds.", "",
     "| encoder | input | candle f32 | emollama f32 | PyTorch f32 | f32 ratio | emollama bf16 | PyTorch bf16 | PyTorch autocast | bf16 ratio (vs faster) |",
     "|---|---|---|---|---|---|---|---|---|---|"]
for name, r in ours["f32"].items():
    c, f, b = na(ours["candle"], name), r["median_s"], na(ours["bf16"], name)
    tf, tb, ta = (na(torch[d], name) for d in ["f32", "bf16", "autocast"])
    ratio16 = f"{b / min(tb, ta):.2f}x" if None not in (b, tb, ta) else "n/a"
    L.append(f"| {name} | {r['input']} | {fmt(c)} | {f:.2f} | {fmt(tf)} | {f / tf:.2f}x | {fmt(b)} | {fmt(tb)} | {fmt(ta)} | {ratio16} |")
print("\n".join(L))
rows = [json.loads(l) for l in (tmp / "accel.jsonl").read_text().splitlines() if l.strip()]
attention = [r for r in rows if r.get("attention")]
rows = [r for r in rows if not r.get("attention")]
tp = json.loads((tmp / "torch-peak.json").read_text())
peak = {p: max(rows[0][f"emollama_{p}_gflops"], tp.get(p, 0.0)) for p in ["f32", "bf16"]}
print(f"\n## Matmul: machine peak and the encoders' large Linear layers, CPU with {level}\n")
print(f"Same session, {threads} threads, median of 10 (examples/accel_bench.rs). Peak = the faster of emollama (oneDNN, packed weights) and "
      f"PyTorch on a 2048³ product: f32 {peak['f32']:.0f} GFLOP/s (PyTorch {tp['f32']:.0f})" + (f", bf16 {peak['bf16']:.0f} GFLOP/s (PyTorch {tp.get('bf16', 0):.0f})" if "bf16" in tp else "") + ". "
      "Linear = x·Wᵀ + b at the layer's real shape.\n")
native = rows[0].get("cpu_native_bf16", False)
if native:
    print("| layer | M×K×N | candle f32 GFLOP/s | emollama f32 GFLOP/s | % of f32 peak | emollama bf16 GFLOP/s | % of bf16 peak |")
    print("|---|---|---|---|---|---|---|")
else:
    print("This CPU has no native bf16 (no AVX512_BF16 / AMX): bf16 runs emulated at f32 speed, so only f32 is shown.\n")
    print("| layer | M×K×N | candle f32 GFLOP/s | emollama f32 GFLOP/s | % of f32 peak |")
    print("|---|---|---|---|---|")
for r in rows:
    f, b = r["emollama_f32_gflops"], r["emollama_bf16_gflops"]
    row = f"| {r['name']} | {r['m']}×{r['k']}×{r['n']} | {r['candle_f32_gflops']:.0f} | {f:.0f} | {100 * f / peak['f32']:.0f}% |"
    print(row + (f" {b:.0f} | {100 * b / peak['bf16']:.0f}% |" if native else ""))
print(f"\n## Attention: the encoders' f32 attention, CPU with {level}\n")
print(f"Same session, {threads} threads, median of 10, 16 heads of 64, q/k/v read in place from the fused projection, output heads-merged. "
      "emollama = `accel::attention` (" + ("the AVX-512 kernel, `accel::attention_avx512`" if attention and attention[0].get("avx512_kernel") else "oneDNN's blocks: this CPU has no AVX-512")
      + "); oneDNN = three primitives per block of query rows (scores, softmax, values); PyTorch = `scaled_dot_product_attention` (its flash kernel). GFLOP/s = 4·b·h·t²·d / time.\n")
print("| shape | batch × tokens | emollama GFLOP/s | oneDNN GFLOP/s | PyTorch sdpa GFLOP/s | time ratio vs PyTorch |")
print("|---|---|---|---|---|---|")
for r in attention:
    sd = tp.get("sdpa " + r["name"])
    one = r.get("onednn_f32_gflops")
    print(f"| {r['name']} | {r['batch']} × {r['tokens']} | {r['emollama_f32_gflops']:.0f} | {'n/a' if one is None else f'{one:.0f}'} | {'n/a' if sd is None else f'{sd:.0f}'} | "
          + ("n/a" if sd is None else f"{sd / r['emollama_f32_gflops']:.2f}x") + " |")
PY
