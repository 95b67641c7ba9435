// The CUDA C++ that kernels/*.cu use, for a host C++ compiler: each kernel becomes a plain function
// that cuLaunchKernel of the emulated driver (driver.cpp) runs once per CUDA thread, every thread a
// fiber of its own (scheduler.cpp). Included ahead of each kernel file (`g++ -include`).
//
// What this can and cannot check (DEVELOPERS.md, "The CUDA backend without a GPU"): the kernels'
// arithmetic, indexing, barriers and warp exchanges, and the Rust side's launches (grid, block,
// argument order, buffer sizes), all against the CPU backend. Not the GPU's memory model, not
// timing, not the PTX nvcc makes: only a GPU run checks those.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Blocks run one at a time (under the driver's launch lock), so a function-local static is the
// block's shared memory: one copy seen by all of the block's threads.
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct uint4 {
    unsigned x, y, z, w;
};
struct float4 {
    float x, y, z, w;
};
struct float2 {
    float x, y;
};
struct int4 {
    int x, y, z, w;
};

namespace cuda_emu {
const uint3& thread_idx();
const uint3& block_idx();
const dim3& block_dim();
const dim3& grid_dim();
// Barriers: every live thread of the block, or every live lane of the calling thread's warp.
void sync_block();
void sync_warp();
// The calling lane's index in its warp, and its warp's 32 exchange slots.
int lane_id();
unsigned long long* warp_slots();
}  // namespace cuda_emu

#define threadIdx (cuda_emu::thread_idx())
#define blockIdx (cuda_emu::block_idx())
#define blockDim (cuda_emu::block_dim())
#define gridDim (cuda_emu::grid_dim())
#define warpSize 32

inline void __syncthreads() { cuda_emu::sync_block(); }
inline void __syncwarp(unsigned = 0xffffffffu) { cuda_emu::sync_warp(); }

// Every lane publishes its value, the warp meets, each reads the slot of the lane `source(lane)`
// names, the warp meets again (so no lane overwrites a slot another has yet to read).
template <typename T, typename Source>
inline T warp_exchange(T v, Source source) {
    static_assert(sizeof(T) <= 8, "a warp exchange slot holds 8 bytes");
    unsigned long long* slots = cuda_emu::warp_slots();
    const int lane = cuda_emu::lane_id();
    std::memcpy(&slots[lane], &v, sizeof(T));
    cuda_emu::sync_warp();
    T out;
    std::memcpy(&out, &slots[source(lane)], sizeof(T));
    cuda_emu::sync_warp();
    return out;
}

// A source outside the lane's group of `width` lanes leaves the lane its own value, as CUDA does.
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    return warp_exchange(v, [&](int lane) { return (lane ^ lane_mask) / width == lane / width ? lane ^ lane_mask : lane; });
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
    return warp_exchange(v, [&](int lane) { return lane / width * width + src_lane % width; });
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    return warp_exchange(v, [&](int lane) { return lane % width + int(delta) < width ? lane + int(delta) : lane; });
}

// Bit casts and the rounding-mode intrinsics (round to nearest is the host's default mode).
template <typename To, typename From>
inline To bit_cast(From from) {
    static_assert(sizeof(To) == sizeof(From), "a bit cast keeps the size");
    To to;
    std::memcpy(&to, &from, sizeof(To));
    return to;
}
inline float __uint_as_float(unsigned u) { return bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return bit_cast<unsigned>(f); }
inline float __int_as_float(int i) { return bit_cast<float>(i); }
inline int __float_as_int(float f) { return bit_cast<int>(f); }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

using std::isfinite;
using std::isinf;
using std::isnan;
using std::max;
using std::min;

// Atomics: the block's threads are fibers of one host thread, so a plain read-modify-write is
// already indivisible. Each returns the old value, as CUDA's do.
template <typename T, typename F>
inline T atomic_update(T* p, F f) {
    const T old = *p;
    *p = f(old);
    return old;
}
template <typename T>
inline T atomicAdd(T* p, T v) {
    return atomic_update(p, [&](T old) { return old + v; });
}
template <typename T>
inline T atomicMax(T* p, T v) {
    return atomic_update(p, [&](T old) { return old > v ? old : v; });
}
template <typename T>
inline T atomicMin(T* p, T v) {
    return atomic_update(p, [&](T old) { return old < v ? old : v; });
}
template <typename T>
inline T atomicExch(T* p, T v) {
    return atomic_update(p, [&](T) { return v; });
}
template <typename T>
inline T atomicCAS(T* p, T compare, T v) {
    return atomic_update(p, [&](T old) { return old == compare ? v : old; });
}

// Registration: build.sh compiles each kernel file followed by one CUDA_EMU_KERNEL(name) per
// `extern "C" __global__` function in it, so the driver's cuModuleGetFunction finds it by name and
// cuLaunchKernel can unpack its parameter array (pointers to the arguments, as on a GPU).
namespace cuda_emu {
using Entry = void (*)(void** params);
void register_kernel(const char* name, Entry entry);

template <typename... A, std::size_t... I>
inline void call_unpacked(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(params[I])...);
}
template <typename... A>
constexpr std::size_t arity(void (*)(A...)) {
    return sizeof...(A);
}
template <auto Kernel>
void entry(void** params) {
    call_unpacked(Kernel, params, std::make_index_sequence<arity(Kernel)>{});
}
}  // namespace cuda_emu

#define CUDA_EMU_KERNEL(name) \
    static const bool cuda_emu_registered_##name = (cuda_emu::register_kernel(#name, &cuda_emu::entry<&name>), true);
