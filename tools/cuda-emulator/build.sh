#!/usr/bin/env bash
# Builds the emulated CUDA driver and cuBLAS (DEVELOPERS.md, "The CUDA backend without a GPU"):
# kernels/*.cu compiled for the host, into OUT/libcuda.so and OUT/libcublas.so (OUT defaults to
# target/cuda-emulator). Then, with kernels in the build (build.rs found nvcc):
#   LD_LIBRARY_PATH=target/cuda-emulator CLOVER_REQUIRE_GPU=1 cargo test --release --test cuda_parity
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/tools/cuda-emulator"
out="${1:-$root/target/cuda-emulator}"
cxx="${CXX:-g++}"
mkdir -p "$out/src"

# -ffp-contract=off: a*b+c stays two roundings unless a kernel asks for fmaf, as the CPU backend.
flags=(-std=c++17 -O2 -march=native -fPIC -ffp-contract=off -Wall -Wno-unused-variable -Wno-unknown-pragmas -Wno-sign-compare -I "$root/kernels" -I "$here")

objects=()
for cu in "$root"/kernels/*.cu; do
    stem="$(basename "$cu" .cu)"
    unit="$out/src/$stem.cpp"
    {
        echo "#include \"$cu\""
        # One registration per kernel entry point.
        grep -oE 'extern "C" __global__ void [A-Za-z_][A-Za-z_0-9]*' "$cu" | awk '{print "CUDA_EMU_KERNEL(" $NF ")"}'
    } > "$unit"
    "$cxx" "${flags[@]}" -include "$here/cuda_emu.hpp" -c "$unit" -o "$out/src/$stem.o"
    objects+=("$out/src/$stem.o")
done
"$cxx" "${flags[@]}" -c "$here/scheduler.cpp" -o "$out/src/scheduler.o"
"$cxx" "${flags[@]}" -c "$here/driver.cpp" -o "$out/src/driver.o"
"$cxx" -shared -o "$out/libcuda.so" "${objects[@]}" "$out/src/scheduler.o" "$out/src/driver.o"
"$cxx" "${flags[@]}" -shared -o "$out/libcublas.so" "$here/cublas.cpp"
echo "emulated CUDA driver and cuBLAS in $out"
