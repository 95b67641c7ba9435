// The emulated launch (scheduler.cpp), for the driver (driver.cpp).
#pragma once

#include "cuda_emu.hpp"

namespace cuda_emu {
// Runs `entry` over the grid; false if a block hangs at a barrier (already reported on stderr).
bool run_kernel(const char* name, Entry entry, void** params, dim3 grid, dim3 block);
// The kernel registered under `name`, or null.
Entry find_kernel(const char* name);
}  // namespace cuda_emu
