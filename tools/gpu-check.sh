#!/usr/bin/env bash
# Every GPU check in one run, results in one file ($OUT/gpu-check.txt, default gpu-check-out/):
# the CUDA parity tests (each op against the CPU backend; whole-model and distillation parity),
# the kernel benchmarks (ratios to the device's copy bandwidth), and `clover-engine bench` on a
# Llama-7B-shaped model with random bf16 weights (per-step latency; τ means nothing there).
#
#   tools/gpu-check.sh prepare   # here: build, then strip the three binaries into gpu-bin/
#   tools/gpu-check.sh           # on the GPU machine (no Rust needed): run them from gpu-bin/
#
# The GPU machine needs the NVIDIA driver and cuBLAS libraries; the binaries say which is missing.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
  set -e
  tools/install-cuda-compiler.sh
  # Named explicitly: build.rs reruns when $NVCC changes, not when the compiler appears on disk, so
  # a build made before the install would otherwise be reused without kernels.
  export NVCC="${NVCC:-$PWD/.cuda/nvidia/cu13/bin/nvcc}"
  cargo build --release --bin clover-engine
  cargo test --release --test cuda_parity --no-run
  cargo bench --bench cuda_kernels --no-run
  rm -rf gpu-bin && mkdir -p gpu-bin
  newest() { ls -t target/release/deps/$1-* | grep -v '\.d$' | head -1; }
  for bin in target/release/clover-engine "$(newest cuda_parity)" "$(newest cuda_kernels)"; do
    grep -q gemv_rows_bf16 "$bin" || { echo "$bin was built without CUDA kernels" >&2; exit 1; }
  done
  strip -o gpu-bin/clover-engine target/release/clover-engine
  strip -o gpu-bin/cuda_parity "$(newest cuda_parity)"
  strip -o gpu-bin/cuda_kernels "$(newest cuda_kernels)"
  git rev-parse --short HEAD > gpu-bin/COMMIT
  du -sh gpu-bin
  echo "carry gpu-bin/ to the GPU machine and run tools/gpu-check.sh there"
  exit 0
fi

# The three steps' time limits add up to 460 s: under the 8 minutes the issue allows, inside one
# 600 s device command, with time left for the machine's start.
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
log="$OUT/gpu-check.txt"
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }
{
  echo "gpu-check of commit $(cat gpu-bin/COMMIT 2>/dev/null || echo unknown), $(date -u +%Y-%m-%d)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi failed"
  ldconfig -p | grep -E "libcuda\.so|libcublas\.so" || echo "libcuda / libcublas not in the linker cache"

  step "parity tests (each CUDA op against the CPU backend)"
  # CLOVER_REQUIRE_GPU: a GPU that cannot be opened fails every test instead of skipping it.
  # CUDA_LAUNCH_BLOCKING: a faulting kernel is named by its own launch, not by a later download.
  # CLOVER_TEST_TMPDIR: the tests' scratch folders (the build machine's target folder is not here).
  mkdir -p "$OUT/test-tmp"
  CLOVER_REQUIRE_GPU=1 CUDA_LAUNCH_BLOCKING=1 CLOVER_TEST_TMPDIR="$OUT/test-tmp" \
    timeout 200 gpu-bin/cuda_parity --nocapture --test-threads 1 2>&1
  rm -rf "$OUT/test-tmp"  # model files: too large to bring back

  step "kernel benchmarks (bytes/s; compare with cuda/copy_64MiB)"
  timeout 90 gpu-bin/cuda_kernels --bench --warm-up-time 1 --measurement-time 3 2>&1 | grep -vE "^(Benchmarking|Found|  [0-9]+ \()"

  step "bench: Llama-7B shape, random bf16 weights, plain vs untrained heads"
  timeout 170 gpu-bin/clover-engine --device cuda bench --random-weights tools/llama-7b-config.json \
    --drafts eagle:init,clover2:init:tree=eagle2:budget=25 --num-prompts 2 --steps 32 \
    --verify-latency 64 --json "$OUT/bench-7b.json" 2>&1 | grep -v "prompt done"
  step "done"
} 2>&1 | tee "$log"
