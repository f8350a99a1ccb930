#include "cpu_features.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define FUSEPROP_X86 1
#endif

namespace fuseprop {

namespace {

#ifdef FUSEPROP_X86
// XCR0 says which register states the OS saves on a context switch.
unsigned long long read_xcr0() {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}
#endif

CpuLevel detect() {
#if defined(FUSEPROP_X86) && defined(FUSEPROP_SIMD_X86)  // the SIMD kernels exist only in x86 builds
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return CpuLevel::generic;
  const bool fma = ecx & (1u << 12), osxsave = ecx & (1u << 27), avx = ecx & (1u << 28);
  if (!(fma && osxsave && avx)) return CpuLevel::generic;
  const unsigned long long xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return CpuLevel::generic;  // XMM and YMM state
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return CpuLevel::generic;
  const bool avx2 = ebx & (1u << 5), avx512f = ebx & (1u << 16);
  if (!avx2) return CpuLevel::generic;
  if (avx512f && (xcr0 & 0xe6) == 0xe6) return CpuLevel::avx512;  // opmask, ZMM_Hi256, Hi16_ZMM state too
  return CpuLevel::avx2;
#else
  return CpuLevel::generic;
#endif
}

// The level at load time: the CPU's best, or FUSEPROP_CPU if set.
CpuLevel initial_level() {
  const CpuLevel best = detect();
  const char* env = std::getenv("FUSEPROP_CPU");
  if (!env || !*env) return best;
  CpuLevel wanted;
  if (!parse_cpu_level(env, &wanted)) {
    std::fprintf(stderr, "fuseprop: ignoring FUSEPROP_CPU=%s (expected generic, avx2 or avx512)\n", env);
    return best;
  }
  if (static_cast<int>(wanted) > static_cast<int>(best)) {
    std::fprintf(stderr, "fuseprop: FUSEPROP_CPU=%s is not supported by this CPU; using %s\n", env, cpu_level_name(best));
    return best;
  }
  return wanted;
}

std::atomic<int>& active() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

}  // namespace

const char* cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::avx512: return "avx512";
    case CpuLevel::avx2: return "avx2";
    default: return "generic";
  }
}

CpuLevel cpu_level_supported() {
  static const CpuLevel best = detect();
  return best;
}

CpuLevel cpu_level_active() { return static_cast<CpuLevel>(active().load(std::memory_order_relaxed)); }

bool set_cpu_level(CpuLevel level) {
  if (static_cast<int>(level) > static_cast<int>(cpu_level_supported())) return false;
  active().store(static_cast<int>(level), std::memory_order_relaxed);
  return true;
}

bool parse_cpu_level(const std::string& name, CpuLevel* level) {
  for (CpuLevel l : {CpuLevel::generic, CpuLevel::avx2, CpuLevel::avx512}) {
    if (name == cpu_level_name(l)) {
      *level = l;
      return true;
    }
  }
  return false;
}

std::vector<CpuLevel> cpu_levels_available() {
  std::vector<CpuLevel> levels;
  for (int l = 0; l <= static_cast<int>(cpu_level_supported()); ++l) levels.push_back(static_cast<CpuLevel>(l));
  return levels;
}

}  // namespace fuseprop
