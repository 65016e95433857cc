// Run-time CPU dispatch of the CPU kernels. A kernel header is compiled twice, once for the
// baseline ISA and once under `#pragma GCC target("avx2,fma")`, each in its own namespace;
// the op picks one per call with cpu_has_avx2_fma(). The wheel is built without -march, so
// it runs on any x86-64 (and other architectures take the baseline build only).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PYAEPLUS_X86_DISPATCH 1
#endif

namespace pyaeplus {

inline bool cpu_has_avx2_fma() {
#ifdef PYAEPLUS_X86_DISPATCH
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace pyaeplus
