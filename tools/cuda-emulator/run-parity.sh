#!/usr/bin/env bash
# The CUDA parity tests (tests/cuda_parity.rs) on the emulated device, on a machine without a GPU:
# builds the emulated driver and cuBLAS, then runs the tests against them with CLOVER_REQUIRE_GPU
# (a device that does not open fails instead of skipping) and CLOVER_CUDA_EMULATOR (the largest
# cases skip themselves). Needs a build with kernels (build.rs found nvcc), and g++.
#   tools/cuda-emulator/run-parity.sh [extra cargo test arguments, e.g. -- --nocapture]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v "${CXX:-g++}" > /dev/null || { echo "run-parity.sh: no C++ compiler (${CXX:-g++}) to build the emulator" >&2; exit 1; }
tools/cuda-emulator/build.sh target/cuda-emulator
LD_LIBRARY_PATH="$PWD/target/cuda-emulator${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    CLOVER_REQUIRE_GPU=1 CLOVER_CUDA_EMULATOR=1 \
    cargo test --release --test cuda_parity "$@"
