// Runs one kernel launch on the host: blocks one after another, the threads of a block as fibers
// of the calling host thread. A fiber runs until it finishes or reaches a barrier (__syncthreads,
// or the warp barrier of a shuffle) and hands over to the next ready lane of its warp; the last
// lane of a warp to reach the warp barrier opens it, and a warp that can go no further returns
// to the scheduler, which opens __syncthreads once every live thread of the block has reached it.
// A block where no thread can go on (a barrier some threads never reach: a divergent
// __syncthreads) is reported as a hang, with the kernel's name.
#include "scheduler.hpp"

#if !defined(__x86_64__)
#error "the CUDA emulator's fiber switch (cuda_emu_switch) is written for x86-64 only"
#endif

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_emu.hpp"

namespace cuda_emu {
namespace {

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

// Switches fibers: saves the callee-saved registers on the current stack, stores its pointer in
// *save, and resumes the stack `next` (saved the same way). The floating-point control words are
// left alone: no kernel changes them, so all fibers share the host thread's. A few instructions,
// where ucontext's swapcontext makes a system call (the signal mask) each time: a warp meets at a
// barrier twice per shuffle, and a GEMV block reduces 32 sums with five shuffles each.
extern "C" void cuda_emu_switch(void** save, void* next);
asm(R"(
    .text
    .globl cuda_emu_switch
    .hidden cuda_emu_switch
    .type cuda_emu_switch, @function
cuda_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cuda_emu_switch, .-cuda_emu_switch
)");

struct Fiber {
    void* stack_pointer;
    uint3 index;
    State state;
    void* barrier_site;  // where a thread at __syncthreads called it
};

// 256 KiB of stack a thread: the kernels keep small arrays in registers on a GPU (e.g. a GEMV's
// 8 × 4 accumulators), which live on this stack here. Mapped once, grown as blocks grow.
constexpr std::size_t kStackBytes = 256 * 1024;

struct Block {
    dim3 grid, block;
    uint3 block_index;
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    std::vector<unsigned long long> warp_slots;  // 32 per warp: lane i's at i
    Fiber* current = nullptr;
    void* scheduler = nullptr;
    Entry entry = nullptr;
    void** params = nullptr;
};

Block run;

// The lanes [begin, end) of the warp of fiber i.
std::size_t warp_begin(std::size_t i) { return i / 32 * 32; }
std::size_t warp_end(std::size_t i) { return std::min(run.fibers.size(), warp_begin(i) + 32); }

// The next fiber of `self`'s warp to run, opening the warp barrier if every live lane has reached
// it; null when the warp can go no further (its lanes are done or at __syncthreads, or stuck).
Fiber* next_in_warp(Fiber* self) {
    const std::size_t at = std::size_t(self - run.fibers.data()), begin = warp_begin(at), end = warp_end(at);
    for (std::size_t i = at + 1; i < end; ++i)
        if (run.fibers[i].state == State::Ready) return &run.fibers[i];
    for (std::size_t i = begin; i <= at; ++i)
        if (run.fibers[i].state == State::Ready) return &run.fibers[i];
    bool live = false;
    for (std::size_t i = begin; i < end; ++i) {
        const State s = run.fibers[i].state;
        if (s == State::Done) continue;
        if (s != State::AtWarpBarrier) return nullptr;
        live = true;
    }
    if (!live) return nullptr;
    Fiber* first = nullptr;
    for (std::size_t i = begin; i < end; ++i) {
        if (run.fibers[i].state != State::AtWarpBarrier) continue;
        run.fibers[i].state = State::Ready;
        if (!first) first = &run.fibers[i];
    }
    return first;
}

void wait(State at) {
    Fiber* self = run.current;
    self->state = at;
    Fiber* next = next_in_warp(self);
    if (next == self) {  // the last lane to arrive, and the first to leave
        return;
    }
    if (next) {
        run.current = next;
        cuda_emu_switch(&self->stack_pointer, next->stack_pointer);
    } else {
        cuda_emu_switch(&self->stack_pointer, run.scheduler);
    }
}

// A fiber's first frame: the kernel, then on to the next lane for good.
[[noreturn]] void fiber_main() {
    run.entry(run.params);
    wait(State::Done);
    std::abort();  // a finished fiber is never resumed
}

// A new fiber's stack as cuda_emu_switch leaves a suspended one: six zero registers, then
// fiber_main as the return address (entered as if called: rsp ≡ 8 mod 16).
void* initial_stack(char* stack) {
    auto top = reinterpret_cast<std::uintptr_t>(stack + kStackBytes) & ~std::uintptr_t(15);
    auto* slot = reinterpret_cast<std::uint64_t*>(top);
    *--slot = 0;  // fiber_main's own return address: it never returns
    *--slot = reinterpret_cast<std::uint64_t>(&fiber_main);
    for (int i = 0; i < 6; ++i) *--slot = 0;
    return slot;
}

void ensure_stacks(std::size_t n) {
    while (run.stacks.size() < n) {
        void* stack = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
        if (stack == MAP_FAILED) {
            std::fprintf(stderr, "cuda emulator: cannot map a thread stack\n");
            std::abort();
        }
        run.stacks.push_back(static_cast<char*>(stack));
    }
}

bool run_block(const char* name) {
    for (std::size_t i = 0; i < run.fibers.size(); ++i) {
        run.fibers[i].state = State::Ready;
        run.fibers[i].stack_pointer = initial_stack(run.stacks[i]);
    }
    for (;;) {
        bool ran = false;
        for (std::size_t w = 0; w < run.fibers.size(); w += 32) {
            for (std::size_t i = w; i < warp_end(w); ++i) {
                if (run.fibers[i].state != State::Ready) continue;
                run.current = &run.fibers[i];
                cuda_emu_switch(&run.scheduler, run.current->stack_pointer);  // back when the warp stops
                ran = true;
                break;
            }
        }
        bool done = true, all_at_block = true;
        for (const Fiber& f : run.fibers) {
            done = done && f.state == State::Done;
            all_at_block = all_at_block && (f.state == State::Done || f.state == State::AtBlockBarrier);
        }
        if (done) return true;
        if (all_at_block) {
            // Stricter than a GPU, which counts arrivals: the threads must meet at one __syncthreads,
            // not at two that happen to balance (CUDA leaves that undefined).
            void* site = nullptr;
            for (Fiber& f : run.fibers) {
                if (f.state != State::AtBlockBarrier) continue;
                if (site && f.barrier_site != site) {
                    std::fprintf(stderr,
                                 "cuda emulator: kernel %s, block (%u, %u, %u): threads wait at different "
                                 "__syncthreads (a barrier in divergent code)\n",
                                 name, run.block_index.x, run.block_index.y, run.block_index.z);
                    return false;
                }
                site = f.barrier_site;
                f.state = State::Ready;
            }
        } else if (!ran) {
            std::fprintf(stderr,
                         "cuda emulator: kernel %s hangs in block (%u, %u, %u): some threads wait at a barrier "
                         "others never reach\n",
                         name, run.block_index.x, run.block_index.y, run.block_index.z);
            return false;
        }
    }
}

}  // namespace

const uint3& thread_idx() { return run.current->index; }
const uint3& block_idx() { return run.block_index; }
const dim3& block_dim() { return run.block; }
const dim3& grid_dim() { return run.grid; }
void sync_block() {
    run.current->barrier_site = __builtin_return_address(0);
    wait(State::AtBlockBarrier);
}
void sync_warp() { wait(State::AtWarpBarrier); }
int lane_id() { return int((run.current - run.fibers.data()) % 32); }
unsigned long long* warp_slots() { return &run.warp_slots[warp_begin(std::size_t(run.current - run.fibers.data()))]; }

bool run_kernel(const char* name, Entry entry, void** params, dim3 grid, dim3 block) {
    const std::size_t threads = std::size_t(block.x) * block.y * block.z;
    run.grid = grid;
    run.block = block;
    run.entry = entry;
    run.params = params;
    ensure_stacks(threads);
    run.fibers.assign(threads, Fiber{});
    run.warp_slots.assign(32 * ((threads + 31) / 32), 0);
    for (unsigned z = 0, i = 0; z < block.z; ++z)
        for (unsigned y = 0; y < block.y; ++y)
            for (unsigned x = 0; x < block.x; ++x, ++i) run.fibers[i].index = uint3{x, y, z};
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                run.block_index = uint3{x, y, z};
                if (!run_block(name)) return false;
            }
    return true;
}

}  // namespace cuda_emu
