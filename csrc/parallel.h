// OpenMP helpers for the CPU kernels. Work is split over an outer index; the inner loops
// are written so that the compiler can vectorize them.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef PYAEPLUS_OPENMP
#include <omp.h>
#endif

namespace pyaeplus {

inline int max_threads() {
#ifdef PYAEPLUS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// f(begin, end) over [0, n) in chunks of at least `grain` items.
template <typename F>
inline void parallel_for(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
#ifdef PYAEPLUS_OPENMP
  if (n > grain && max_threads() > 1 && !omp_in_parallel()) {
    const int64_t nt = std::min<int64_t>(max_threads(), (n + grain - 1) / grain);
#pragma omp parallel num_threads(static_cast<int>(nt))
    {
      const int64_t t = omp_get_thread_num();
      const int64_t chunk = (n + nt - 1) / nt;
      const int64_t b = t * chunk;
      const int64_t e = std::min<int64_t>(n, b + chunk);
      if (b < e) f(b, e);
    }
    return;
  }
#endif
  f(0, n);
}

}  // namespace pyaeplus
