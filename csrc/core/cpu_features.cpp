#include "core/cpu_features.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

#if defined(__linux__)
#include <unistd.h>
#endif

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

// Cache sizes from CPUID's deterministic cache parameters (leaf 4 on Intel, 0x8000001D on AMD):
// ways * partitions * line size * sets of each data or unified cache, by level.
CacheSizes cpuid_caches() {
  CacheSizes c{0, 0, 0};
#ifdef FUSEPROP_X86
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return c;
  const bool amd = ebx == 0x68747541;  // "Auth"enticAMD
  const unsigned int leaf = amd ? 0x8000001D : 4;
  if (amd && (!__get_cpuid(0x80000000, &eax, &ebx, &ecx, &edx) || eax < leaf)) return c;
  if (!amd && eax < leaf) return c;
  for (unsigned int i = 0; i < 16; ++i) {
    __cpuid_count(leaf, i, eax, ebx, ecx, edx);
    const unsigned int type = eax & 0x1f, level = (eax >> 5) & 0x7;
    if (type == 0) break;
    if (type == 2) continue;  // instruction cache
    const int64_t bytes = int64_t((ebx >> 22) + 1) * (((ebx >> 12) & 0x3ff) + 1) * ((ebx & 0xfff) + 1) * (int64_t(ecx) + 1);
    if (level == 1) c.l1d = bytes;
    if (level == 2) c.l2 = bytes;
    if (level == 3) c.l3 = bytes;
  }
#endif
  return c;
}

CacheSizes detect_caches() {
  CacheSizes c{0, 0, 0};
  if (const char* env = std::getenv("FUSEPROP_CACHES")) {
    long long l1 = 0, l2 = 0, l3 = 0;
    if (std::sscanf(env, "%lld,%lld,%lld", &l1, &l2, &l3) == 3 && l1 > 0 && l2 > 0 && l3 > 0) return {l1, l2, l3};
    std::fprintf(stderr, "fuseprop: ignoring FUSEPROP_CACHES=%s (expected three byte counts: l1d,l2,l3)\n", env);
  }
  // CPUID first: it describes the caches one core shares (an AMD core's L3 is its CCX's, 32 MiB on a
  // Zen 5 EPYC, where sysconf reports every CCX's together, 384 MiB); the OS where CPUID cannot tell.
  c = cpuid_caches();
#if defined(__linux__) && defined(_SC_LEVEL1_DCACHE_SIZE)
  if (c.l1d <= 0) c.l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE);
  if (c.l2 <= 0) c.l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (c.l3 <= 0) c.l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  if (c.l1d <= 0) c.l1d = 32 << 10;
  if (c.l2 <= 0) c.l2 = 512 << 10;
  if (c.l3 <= 0) c.l3 = 8 << 20;
  return c;
}

}  // namespace

const CacheSizes& cpu_cache_sizes() {
  static const CacheSizes sizes = detect_caches();
  return sizes;
}

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
