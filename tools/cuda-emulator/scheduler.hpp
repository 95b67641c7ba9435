// The emulated launch (scheduler.cpp), for the driver (driver.cpp).
#pragma once

#include "cuda_emu.hpp"

namespace cuda_emu {
// Runs `entry` over the grid; false if a block hangs at a barrier (already reported on stderr).
bool run_kernel(const char* name, Entry entry, void** params, dim3 grid, dim3 block);
}  // namespace cuda_emu
