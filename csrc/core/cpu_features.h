// Which SIMD kernels this CPU can run, and which ones are in use.
//
// One build runs on any x86-64: the SIMD kernels live in files compiled with their own flags
// (gemm/matmul_avx2.cpp, gemm/matmul_avx512.cpp) and are only called after CPUID (and XGETBV, for the OS
// saving the wide registers) says they can run. FUSEPROP_CPU=generic|avx2|avx512 in the
// environment, read once at load, forces a level (capped at what the CPU supports).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fuseprop {

enum class CpuLevel : int { generic = 0, avx2 = 1, avx512 = 2 };

const char* cpu_level_name(CpuLevel level);
// The highest level this CPU and OS support (generic on non-x86 machines).
CpuLevel cpu_level_supported();
// The level kernels dispatch to now.
CpuLevel cpu_level_active();
// Selects a level; returns false (and changes nothing) if the CPU does not support it.
bool set_cpu_level(CpuLevel level);
// Parses "generic", "avx2", "avx512"; returns false for anything else.
bool parse_cpu_level(const std::string& name, CpuLevel* level);
// Every level this machine can run, lowest first.
std::vector<CpuLevel> cpu_levels_available();

// The data caches one core sees, in bytes: L1d and L2 per core, L3 shared. Read once, from CPUID
// (the core's own view) or else the OS (sysconf on Linux); a level that cannot be read gets a conservative default
// (32 KiB, 512 KiB, 8 MiB). FUSEPROP_CACHES="l1d,l2,l3" (bytes) overrides them, for tests.
struct CacheSizes {
  int64_t l1d, l2, l3;
};
const CacheSizes& cpu_cache_sizes();

}  // namespace fuseprop
