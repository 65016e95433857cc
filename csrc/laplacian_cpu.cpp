// Fused graph-Laplacian loss + gradient on the CPU: one row-parallel pass over the symmetric
// operand CSR S (Graph._grad_csr), no atomics. With y = s * z (s optional, else 1) and g an
// optional per-row weight (else 1):
//   rows[i] = 1/2 sum_j S_ij ||y_i - y_j||^2
//   grad[i] = grad_scale * s_i * sum_j S_ij (g_i + g_j) (y_i - y_j)
// Each thread owns a contiguous block of rows and writes only those rows: deterministic.
//
// Memory safety for direct callers (torch.ops.pyaeplus.laplacian_loss): indptr is checked in one
// O(n) pass before the kernel (indptr[0] == 0, non-decreasing, indptr[n] == nnz), and every index
// while it is read (an index outside [0, n) is skipped and reported: the call raises ValueError).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
namespace {

// Row r of z as an accumulation-type pointer: direct for float/double, converted into `buf`
// for the 16-bit storage types.
template <typename T, typename A>
inline const A* row_as(const T* z, int64_t stride0, int64_t r, int64_t d, A* buf) {
  const T* p = z + r * stride0;
  for (int64_t k = 0; k < d; ++k) buf[k] = load_as<A>(p, k);
  return buf;
}
template <>
inline const float* row_as<float, float>(const float* z, int64_t stride0, int64_t r, int64_t, float*) {
  return z + r * stride0;
}
template <>
inline const double* row_as<double, double>(const double* z, int64_t stride0, int64_t r, int64_t, double*) {
  return z + r * stride0;
}

constexpr int64_t kPrefetch = 4;

// indptr [n + 1] must describe rows of a CSR with nnz entries.
void check_indptr(const int64_t* indptr, int64_t n, int64_t nnz) {
  PYAEPLUS_CHECK(indptr[0] == 0 && indptr[n] == nnz,
                 "laplacian_rows_grad: indptr must start at 0 and end at nnz=" + std::to_string(nnz) + ", got " +
                     std::to_string(indptr[0]) + " and " + std::to_string(indptr[n]));
  for (int64_t i = 0; i < n; ++i)
    PYAEPLUS_CHECK(indptr[i] <= indptr[i + 1],
                   "laplacian_rows_grad: indptr must be non-decreasing (row " + std::to_string(i) + ")");
}

template <typename T>
void laplacian_rows_grad_impl(const T* z, int64_t n, int64_t d, int64_t sz0,  // z: [n, d] (row stride sz0, unit inner)
                              const int64_t* indptr,                          // [n + 1], checked
                              const int64_t* indices,                         // [nnz]
                              const float* weights,                           // [nnz] S_ij
                              const float* scale,                             // [n] or null
                              const acc_t<T>* row_weight,                     // [n] or null
                              double grad_scale,
                              acc_t<T>* rows,                                 // [n] or null
                              T* grad) {                                      // [n, d] contiguous, or null
  using A = acc_t<T>;
  const bool want_grad = grad != nullptr;
  // Work ~ (nnz + n) * d: a chunk gets at least ~32k element-ops so that small graphs (one
  // mini-batch subgraph) run on one thread instead of paying the OpenMP fork/barrier.
  const int64_t work = (indptr[n] + n) * (d > 0 ? d : 1);
  const int64_t grain = work < (int64_t(1) << 16) ? n : std::max<int64_t>(16, n * (int64_t(1) << 15) / work);
  std::atomic<bool> bad{false};
  parallel_for(n, grain, [&](int64_t b, int64_t e) {
    std::vector<A> yi(d), acc(d), bi(d), bj(d);
    const int64_t p_lim = indptr[e];  // prefetching runs on into the next rows of this chunk
    for (int64_t i = b; i < e; ++i) {
      const A si = scale ? static_cast<A>(scale[i]) : A(1);
      const A* zi = row_as<T, A>(z, sz0, i, d, bi.data());
      for (int64_t k = 0; k < d; ++k) yi[k] = si * zi[k];
      if (want_grad)
        for (int64_t k = 0; k < d; ++k) acc[k] = A(0);
      const A gi = row_weight ? row_weight[i] : A(1);
      A row_sum = A(0);
      const int64_t p_end = indptr[i + 1];
      for (int64_t p = indptr[i]; p < p_end; ++p) {
        // The gathers of z rows are random: prefetch the row kPrefetch edges ahead so that
        // several cache misses are in flight at once (a hint: never faults).
        if (p + kPrefetch < p_lim) {
          const int64_t jn = indices[p + kPrefetch];
          if (static_cast<uint64_t>(jn) < static_cast<uint64_t>(n)) {
            const char* nxt = reinterpret_cast<const char*>(z + jn * sz0);
            for (int64_t off = 0; off < d * static_cast<int64_t>(sizeof(T)); off += 64) __builtin_prefetch(nxt + off);
          }
        }
        const int64_t j = indices[p];
        if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n)) {  // also catches j < 0
          bad.store(true, std::memory_order_relaxed);
          continue;
        }
        const A w = static_cast<A>(weights[p]);
        const A sj = scale ? static_cast<A>(scale[j]) : A(1);
        const A* __restrict zj = row_as<T, A>(z, sz0, j, d, bj.data());
        const A* __restrict yp = yi.data();
        A sq = A(0);
        if (want_grad) {
          const A c = row_weight ? w * (gi + row_weight[j]) : A(2) * w;
          A* __restrict ap = acc.data();
#pragma omp simd reduction(+ : sq)
          for (int64_t k = 0; k < d; ++k) {
            const A t = yp[k] - sj * zj[k];
            sq += t * t;
            ap[k] += c * t;
          }
        } else {
#pragma omp simd reduction(+ : sq)
          for (int64_t k = 0; k < d; ++k) {
            const A t = yp[k] - sj * zj[k];
            sq += t * t;
          }
        }
        row_sum += w * sq;
      }
      if (rows) rows[i] = A(0.5) * row_sum;
      if (want_grad) {
        const A f = static_cast<A>(grad_scale) * si;
        T* gp = grad + i * d;
        for (int64_t k = 0; k < d; ++k) store_from<T, A>(gp, k, f * acc[k]);
      }
    }
  });
  PYAEPLUS_CHECK(!bad.load(), "laplacian_rows_grad: an index is outside [0, N) (N = " + std::to_string(n) + ")");
}

void laplacian_rows_grad(uintptr_t z, int64_t n, int64_t d, int64_t sz0, uintptr_t indptr, uintptr_t indices,
                         int64_t nnz, uintptr_t weights, uintptr_t scale, uintptr_t row_weight, double grad_scale,
                         uintptr_t rows, uintptr_t grad, int dtype) {
  PYAEPLUS_CHECK(n >= 0 && d >= 0 && nnz >= 0 && sz0 >= d, "laplacian_rows_grad: bad sizes");
  PYAEPLUS_CHECK(z && indptr && (nnz == 0 || (indices && weights)), "laplacian_rows_grad: null pointer");
  check_indptr(as_ptr<const int64_t>(indptr), n, nnz);
  PYAEPLUS_DISPATCH_FLOATING(dtype, "laplacian_rows_grad", [&] {
    using A = acc_t<scalar_t>;
    laplacian_rows_grad_impl<scalar_t>(as_ptr<const scalar_t>(z), n, d, sz0, as_ptr<const int64_t>(indptr),
                                       as_ptr<const int64_t>(indices), as_ptr<const float>(weights),
                                       as_ptr<const float>(scale), as_ptr<const A>(row_weight), grad_scale,
                                       as_ptr<A>(rows), as_ptr<scalar_t>(grad));
  });
}

void bind_laplacian(py::module_& m) {
  m.def("laplacian_rows_grad", &laplacian_rows_grad, py::call_guard<py::gil_scoped_release>(),
        "Fused Laplacian row losses + gradient over a symmetric CSR (pointers as ints; null = absent)",
        py::arg("z"), py::arg("n"), py::arg("d"), py::arg("stride0"), py::arg("indptr"), py::arg("indices"),
        py::arg("nnz"), py::arg("weights"), py::arg("scale"), py::arg("row_weight"), py::arg("grad_scale"),
        py::arg("rows"), py::arg("grad"), py::arg("dtype"));
}

}  // namespace

PYAEPLUS_REGISTER(laplacian, bind_laplacian);

}  // namespace pyaeplus
