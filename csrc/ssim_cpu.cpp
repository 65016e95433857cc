// SSIM statistics (pyaeplus::ssim_stats) and their gradient on the CPU.
//
// Every (n, c) plane, or row band of a plane when there are few planes, is filtered separably
// with a rolling buffer: each padded input row is read once, its four statistics (x, y,
// x*x + y*y, x*y: exx and eyy only enter SSIM as their sum) are filtered horizontally into a
// ring of K + 1 rows, and output rows are vertical combinations of the ring, two rows per pass.
// Nothing of image size is allocated; scratch is O(K * W) per thread. The filter passes keep
// the taps in registers (symmetric windows of length 3..15; other windows take run-time loops)
// and run on 32-byte vectors; ssim_cpu_kernels.h says how. Arithmetic in float32 (float64 for
// float64 inputs).
//
// Backward by recomputation, in row bands too: the same forward stream yields, per output row,
// the loss gradient w.r.t. the four filtered statistics; its transposed horizontal filter goes
// into a second ring of K + 1 rows, whose vertical combination (two rows per pass) is the
// gradient of each padded input row. That row is folded onto the source pixels it copies
// (padding modes) and turned into dx, dy. Source rows that several padded rows copy (the first
// and last r rows) are summed per band in a pending buffer and finished after all bands, in a
// fixed order (deterministic).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu_dispatch.h"
#include "parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {

// The kernels, compiled for the baseline ISA and, on x86-64 with GCC/Clang, for AVX2+FMA.
// Their 32-byte vector helpers take and return vectors: in the baseline build GCC notes that
// such an ABI differs from the AVX one (-Wpsabi); they are inline and never cross a build.
#pragma GCC diagnostic ignored "-Wpsabi"
namespace ssim_generic {
#include "ssim_cpu_kernels.h"
}  // namespace ssim_generic

#ifdef PYAEPLUS_X86_DISPATCH
#define PYAEPLUS_SSIM_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace ssim_avx2 {
#include "ssim_cpu_kernels.h"
}  // namespace ssim_avx2
#pragma GCC pop_options
#endif

namespace {

void check_common(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t padding) {
  PYAEPLUS_CHECK(N >= 0 && C >= 0, "ssim: N and C must be >= 0");
  PYAEPLUS_CHECK(K >= 3 && K % 2 == 1, "ssim: the window length must be odd and >= 3");
  PYAEPLUS_CHECK(H >= K && W >= K, "ssim: H and W must be >= the window length");
  PYAEPLUS_CHECK(padding >= 0 && padding <= 4, "ssim: padding code must be in 0..4");
}

void ssim_forward(uintptr_t x, int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw, uintptr_t y, int64_t syn,
                  int64_t syc, int64_t syh, int64_t syw, int64_t N, int64_t C, int64_t H, int64_t W, uintptr_t win,
                  int64_t K, double c1, double c2, int64_t padding, uintptr_t smap, uintptr_t ssim_sum, uintptr_t cs_sum,
                  uintptr_t l1_sum, int dtype) {
  check_common(N, C, H, W, K, padding);
  const int mode = static_cast<int>(padding);
  PYAEPLUS_DISPATCH_FLOATING(dtype, "ssim_forward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    auto f = &ssim_generic::forward_impl<T>;
#ifdef PYAEPLUS_SSIM_AVX2
    if (cpu_has_avx2_fma()) f = &ssim_avx2::forward_impl<T>;
#endif
    f(as_ptr<const T>(x), sxn, sxc, sxh, sxw, as_ptr<const T>(y), syn, syc, syh, syw, N, C, H, W, K, mode,
                    as_ptr<const A>(win), c1, c2, smap ? as_ptr<A>(smap) : nullptr, as_ptr<A>(ssim_sum),
                    as_ptr<A>(cs_sum), as_ptr<A>(l1_sum));
  });
}

void ssim_backward(uintptr_t gss, uintptr_t gcs, uintptr_t gl1, uintptr_t gmap, uintptr_t x, int64_t sxn, int64_t sxc,
                   int64_t sxh, int64_t sxw, uintptr_t y, int64_t syn, int64_t syc, int64_t syh, int64_t syw,
                   uintptr_t dx, int64_t dxn, int64_t dxc, int64_t dxh, int64_t dxw, uintptr_t dy, int64_t dyn,
                   int64_t dyc, int64_t dyh, int64_t dyw, int64_t N, int64_t C, int64_t H, int64_t W, uintptr_t win,
                   int64_t K, double c1, double c2, int64_t padding, int dtype) {
  check_common(N, C, H, W, K, padding);
  const int mode = static_cast<int>(padding);
  PYAEPLUS_DISPATCH_FLOATING(dtype, "ssim_backward", [&] {
    using T = scalar_t;
    using A = acc_t<T>;
    auto f = &ssim_generic::backward_impl<T>;
#ifdef PYAEPLUS_SSIM_AVX2
    if (cpu_has_avx2_fma()) f = &ssim_avx2::backward_impl<T>;
#endif
    f(as_ptr<const A>(gss), as_ptr<const A>(gcs), as_ptr<const A>(gl1),
                     gmap ? as_ptr<const A>(gmap) : nullptr, as_ptr<const T>(x), sxn, sxc, sxh, sxw,
                     as_ptr<const T>(y), syn, syc, syh, syw, as_ptr<T>(dx), dxn, dxc, dxh, dxw, as_ptr<T>(dy), dyn,
                     dyc, dyh, dyw, N, C, H, W, K, mode, as_ptr<const A>(win), c1, c2);
  });
}

void bind_ssim(py::module_& m) {
  m.def("ssim_forward", &ssim_forward, py::call_guard<py::gil_scoped_release>(),
        "SSIM statistics: x, y [N, C, H, W] (strided) -> ssim_sum, cs_sum, l1_sum [N, C], optional map "
        "[N, C, Ho, Wo] (contiguous, accumulation dtype)");
  m.def("ssim_backward", &ssim_backward, py::call_guard<py::gil_scoped_release>(),
        "Gradient of the SSIM statistics w.r.t. x and y by recomputation; dx, dy strided like x, y");
}

}  // namespace

PYAEPLUS_REGISTER(ssim, bind_ssim);

}  // namespace pyaeplus
