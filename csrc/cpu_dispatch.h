// Run-time CPU dispatch of the CPU kernels. A kernel header is compiled twice, once for the
// baseline ISA and once under `#pragma GCC target("avx2,fma")`, each in its own namespace;
// the op picks one per call with cpu_has_avx2() / cpu_has_avx2_fma(). The wheel is built
// without -march, so it runs on any x86-64 (other architectures take the baseline build only).
// PYAEPLUS_CPU_BASELINE=1 in the environment (read once) makes every op take the baseline
// build: the tests run both builds on an AVX2 machine that way.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYAEPLUS_X86_DISPATCH 1
#endif

namespace pyaeplus {

inline bool cpu_baseline_forced() {
  static const bool forced = [] {
    const char* v = std::getenv("PYAEPLUS_CPU_BASELINE");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  return forced;
}

inline bool cpu_has_avx2() {
#ifdef PYAEPLUS_X86_DISPATCH
  static const bool ok = !cpu_baseline_forced() && __builtin_cpu_supports("avx2");
  return ok;
#else
  return false;
#endif
}

inline bool cpu_has_avx2_fma() {
#ifdef PYAEPLUS_X86_DISPATCH
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace pyaeplus
