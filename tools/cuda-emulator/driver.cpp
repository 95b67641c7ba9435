// An emulated CUDA driver (libcuda.so): the driver API calls cudarc makes for clover-engine's
// CUDA backend, over host memory, with kernels/*.cu compiled for the host (cuda_emu.hpp) and run
// by scheduler.cpp. One device, "cuda:0"; every call completes before it returns, so streams and
// events are bookkeeping only.
//
// It also checks what a GPU would not report: every allocation is poisoned on creation (0xff
// bytes: NaN as f32, so a read of memory no one wrote shows up in a parity test) and followed by a
// guard zone, checked after every launch and copy, so a kernel writing past a buffer's end fails
// with its name.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "scheduler.hpp"

namespace {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
constexpr CUresult kSuccess = 0, kInvalidValue = 1, kOutOfMemory = 2, kInvalidDevice = 101,
                   kInvalidHandle = 400, kNotFound = 500, kLaunchFailed = 719, kNotSupported = 801;

constexpr std::size_t kGuard = 256;
constexpr unsigned char kGuardByte = 0xa5;

std::recursive_mutex lock;  // one launch (and its static __shared__ arrays) at a time
std::map<CUdeviceptr, std::size_t> allocations;
// A CUfunction is a pointer to its kernel's entry here (map nodes do not move).
struct Kernel {
    std::string name;
    cuda_emu::Entry entry;
};
std::map<std::string, Kernel>& kernels() {
    static std::map<std::string, Kernel> table;
    return table;
}
int context_token, module_token, pool_token;
thread_local void* current_context = nullptr;

struct Event {
    std::chrono::steady_clock::time_point at;
};

// The allocation holding [p, p + n), if any.
bool inside_allocation(CUdeviceptr p, std::size_t n) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second;
}

// Reports the first allocation whose guard zone was written, after `what`.
bool guards_intact(const char* what) {
    for (const auto& [base, size] : allocations) {
        unsigned char* guard = reinterpret_cast<unsigned char*>(base + size);
        for (std::size_t i = 0; i < kGuard; ++i) {
            if (guard[i] != kGuardByte) {
                std::fprintf(stderr, "cuda emulator: %s wrote past the end of a %zu-byte buffer (byte %zu after it)\n",
                             what, size, i);
                std::memset(guard, kGuardByte, kGuard);  // reported once, by the launch that did it
                return false;
            }
        }
    }
    return true;
}

CUresult allocate(CUdeviceptr* out, std::size_t bytes) {
    if (!out) return kInvalidValue;
    std::lock_guard<std::recursive_mutex> g(lock);
    unsigned char* p = static_cast<unsigned char*>(std::malloc(bytes + kGuard));
    if (!p) return kOutOfMemory;
    std::memset(p, 0xff, bytes);
    std::memset(p + bytes, kGuardByte, kGuard);
    *out = reinterpret_cast<CUdeviceptr>(p);
    allocations[*out] = bytes;
    return kSuccess;
}

CUresult release(CUdeviceptr p) {
    std::lock_guard<std::recursive_mutex> g(lock);
    auto it = allocations.find(p);
    if (it == allocations.end()) return kInvalidValue;
    if (!guards_intact("a kernel or copy")) return kLaunchFailed;
    allocations.erase(it);
    std::free(reinterpret_cast<void*>(p));
    return kSuccess;
}

// A copy touching device memory must stay inside one allocation.
CUresult copy(void* dst, const void* src, std::size_t bytes, bool dst_device, bool src_device) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (bytes == 0) return kSuccess;
    if (dst_device && !inside_allocation(reinterpret_cast<CUdeviceptr>(dst), bytes)) {
        std::fprintf(stderr, "cuda emulator: a copy of %zu bytes to device memory outside any allocation\n", bytes);
        return kInvalidValue;
    }
    if (src_device && !inside_allocation(reinterpret_cast<CUdeviceptr>(src), bytes)) {
        std::fprintf(stderr, "cuda emulator: a copy of %zu bytes from device memory outside any allocation\n", bytes);
        return kInvalidValue;
    }
    std::memmove(dst, src, bytes);
    return kSuccess;
}

CUresult fill(CUdeviceptr dst, const void* value, std::size_t element, std::size_t count) {
    std::lock_guard<std::recursive_mutex> g(lock);
    if (count == 0) return kSuccess;
    if (!inside_allocation(dst, element * count)) {
        std::fprintf(stderr, "cuda emulator: a memset of %zu bytes outside any allocation\n", element * count);
        return kInvalidValue;
    }
    unsigned char* p = reinterpret_cast<unsigned char*>(dst);
    for (std::size_t i = 0; i < count; ++i) std::memcpy(p + i * element, value, element);
    return kSuccess;
}

}  // namespace

namespace cuda_emu {
void register_kernel(const char* name, Entry entry) { kernels()[name] = Kernel{name, entry}; }
}  // namespace cuda_emu

extern "C" {

CUresult cuInit(unsigned) { return kSuccess; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return kSuccess;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return kSuccess;
}
CUresult cuDeviceGet(CUdevice* d, int ordinal) {
    if (ordinal != 0) return kInvalidDevice;
    *d = 0;
    return kSuccess;
}
CUresult cuDeviceGetName(char* name, int len, CUdevice) {
    std::snprintf(name, len, "clover-engine CUDA emulator (host CPU)");
    return kSuccess;
}
CUresult cuDeviceTotalMem_v2(std::size_t* bytes, CUdevice) {
    *bytes = std::size_t(16) << 30;
    return kSuccess;
}
CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice) {
    switch (attribute) {
        case 1: *value = 1024; break;     // max threads per block
        case 2: *value = 1024; break;     // max block dim x
        case 3: *value = 1024; break;     // max block dim y
        case 4: *value = 64; break;       // max block dim z
        case 5: *value = 2147483647; break;  // max grid dim x
        case 6: *value = 65535; break;    // max grid dim y
        case 7: *value = 65535; break;    // max grid dim z
        case 8: *value = 49152; break;    // shared memory per block
        case 10: *value = 32; break;      // warp size
        case 16: *value = 1; break;       // multiprocessors: one host thread runs the launch
        case 75: *value = 9; break;       // compute capability 9.0, the build's target
        case 76: *value = 0; break;
        case 115: *value = 1; break;      // memory pools: cudarc then allocates stream-ordered
        default: *value = 0; break;
    }
    return kSuccess;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, CUdevice) {
    *ctx = &context_token;
    return kSuccess;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice) { return kSuccess; }
CUresult cuCtxSetCurrent(void* ctx) {
    current_context = ctx;
    return kSuccess;
}
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = current_context;
    return kSuccess;
}
CUresult cuCtxPushCurrent_v2(void* ctx) { return cuCtxSetCurrent(ctx); }
CUresult cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = current_context;
    return kSuccess;
}
CUresult cuCtxSynchronize() { return kSuccess; }
CUresult cuCtxGetDevice(CUdevice* d) {
    *d = 0;
    return kSuccess;
}
CUresult cuMemGetInfo_v2(std::size_t* free_bytes, std::size_t* total) {
    *free_bytes = std::size_t(15) << 30;
    *total = std::size_t(16) << 30;
    return kSuccess;
}
CUresult cuDeviceGetMemPool(void** pool, CUdevice) {
    *pool = &pool_token;
    return kSuccess;
}
CUresult cuDeviceGetDefaultMemPool(void** pool, CUdevice) { return cuDeviceGetMemPool(pool, 0); }
CUresult cuMemPoolSetAttribute(void*, int, void*) { return kSuccess; }
CUresult cuMemPoolGetAttribute(void*, int, void*) { return kNotSupported; }

CUresult cuStreamCreate(void** stream, unsigned) {
    *stream = new int(0);
    return kSuccess;
}
CUresult cuStreamCreateWithPriority(void** stream, unsigned, int) { return cuStreamCreate(stream, 0); }
CUresult cuStreamDestroy_v2(void* stream) {
    delete static_cast<int*>(stream);
    return kSuccess;
}
CUresult cuStreamSynchronize(void*) { return kSuccess; }
CUresult cuStreamQuery(void*) { return kSuccess; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return kSuccess; }

CUresult cuEventCreate(void** event, unsigned) {
    *event = new Event{std::chrono::steady_clock::now()};
    return kSuccess;
}
CUresult cuEventDestroy_v2(void* event) {
    delete static_cast<Event*>(event);
    return kSuccess;
}
CUresult cuEventRecord(void* event, void*) {
    static_cast<Event*>(event)->at = std::chrono::steady_clock::now();
    return kSuccess;
}
CUresult cuEventRecordWithFlags(void* event, void* stream, unsigned) { return cuEventRecord(event, stream); }
CUresult cuEventSynchronize(void*) { return kSuccess; }
CUresult cuEventQuery(void*) { return kSuccess; }
CUresult cuEventElapsedTime(float* ms, void* start, void* end) {
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(end)->at - static_cast<Event*>(start)->at)
              .count();
    return kSuccess;
}
CUresult cuEventElapsedTime_v2(float* ms, void* start, void* end) { return cuEventElapsedTime(ms, start, end); }

CUresult cuMemAlloc_v2(CUdeviceptr* p, std::size_t bytes) { return allocate(p, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr* p, std::size_t bytes, void*) { return allocate(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return release(p); }

CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, std::size_t n) {
    return copy(reinterpret_cast<void*>(dst), src, n, true, false);
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, std::size_t n, void*) {
    return cuMemcpyHtoD_v2(dst, src, n);
}
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, std::size_t n) {
    return copy(dst, reinterpret_cast<const void*>(src), n, false, true);
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, std::size_t n, void*) { return cuMemcpyDtoH_v2(dst, src, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, std::size_t n) {
    return copy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n, true, true);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, std::size_t n, void*) {
    return cuMemcpyDtoD_v2(dst, src, n);
}
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, std::size_t n) { return fill(dst, &v, 1, n); }
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, std::size_t n, void*) { return fill(dst, &v, 1, n); }
CUresult cuMemsetD16_v2(CUdeviceptr dst, unsigned short v, std::size_t n) { return fill(dst, &v, 2, n); }
CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short v, std::size_t n, void*) { return fill(dst, &v, 2, n); }
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, std::size_t n) { return fill(dst, &v, 4, n); }
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, std::size_t n, void*) { return fill(dst, &v, 4, n); }

// Page-locked host memory is ordinary host memory here.
CUresult cuMemHostAlloc(void** p, std::size_t bytes, unsigned) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? kSuccess : kOutOfMemory;
}
CUresult cuMemAllocHost_v2(void** p, std::size_t bytes) { return cuMemHostAlloc(p, bytes, 0); }
CUresult cuMemFreeHost(void* p) {
    std::free(p);
    return kSuccess;
}
CUresult cuMemHostRegister_v2(void*, std::size_t, unsigned) { return kSuccess; }
CUresult cuMemHostUnregister(void*) { return kSuccess; }
CUresult cuPointerGetAttribute(void*, int, CUdeviceptr) { return kNotSupported; }

// Modules: the image (nvcc's fatbin) is not run; every kernel of kernels/*.cu is already here.
CUresult cuModuleLoadData(void** module, const void*) {
    *module = &module_token;
    return kSuccess;
}
CUresult cuModuleLoad(void** module, const char*) { return cuModuleLoadData(module, nullptr); }
CUresult cuModuleUnload(void*) { return kSuccess; }
CUresult cuModuleGetFunction(void** function, void*, const char* name) {
    auto it = kernels().find(name);
    if (it == kernels().end()) return kNotFound;
    *function = &it->second;
    return kSuccess;
}
CUresult cuFuncGetAttribute(int* value, int, void*) {
    *value = 0;
    return kSuccess;
}
CUresult cuFuncSetAttribute(void*, int, int) { return kSuccess; }
CUresult cuFuncSetCacheConfig(void*, int) { return kSuccess; }

CUresult cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared_bytes, void*, void** params, void** extra) {
    const auto* f = static_cast<const Kernel*>(function);
    if (!f) return kInvalidHandle;
    if (extra) return kNotSupported;
    if (bx * by * bz == 0 || bx * by * bz > 1024 || bz > 64 || gy > 65535 || gz > 65535 || gx == 0 || gy == 0 ||
        gz == 0) {
        std::fprintf(stderr, "cuda emulator: kernel %s launched with grid (%u, %u, %u), block (%u, %u, %u)\n",
                     f->name.c_str(), gx, gy, gz, bx, by, bz);
        return kInvalidValue;
    }
    if (shared_bytes != 0) return kNotSupported;  // the kernels use static shared memory only
    std::lock_guard<std::recursive_mutex> g(lock);
    if (!cuda_emu::run_kernel(f->name.c_str(), f->entry, params, dim3{gx, gy, gz}, dim3{bx, by, bz}))
        return kLaunchFailed;
    const std::string what = "kernel " + f->name;
    return guards_intact(what.c_str()) ? kSuccess : kLaunchFailed;
}

CUresult cuGetErrorString(CUresult error, const char** text) {
    switch (error) {
        case kSuccess: *text = "no error"; break;
        case kInvalidValue: *text = "invalid argument (emulator)"; break;
        case kOutOfMemory: *text = "out of memory (emulator)"; break;
        case kNotFound: *text = "named symbol not found (emulator)"; break;
        case kLaunchFailed: *text = "launch failed (emulator: see its message on stderr)"; break;
        case kNotSupported: *text = "operation not supported by the emulator"; break;
        default: *text = "error (emulator)"; break;
    }
    return kSuccess;
}
CUresult cuGetErrorName(CUresult error, const char** text) { return cuGetErrorString(error, text); }

}  // extern "C"
