// topk_encode on the CPU: the backward of the fused top-k encoder (Linear + top-k). The forward
// is the BLAS matmul followed by the top-k kernel (Python side, ops/topk_encode.py); the
// backward reads only the selected entries, so it costs B*k*N multiply-adds instead of the
// 2*B*D*N of a dense Linear backward.
//
// The selected entries arrive in CSR form by batch row: crow [B+1], cols [E] (latent of each
// entry), grad [E] (d loss / d value, ReLU mask applied). Per-row top-k is crow = [0, k, 2k..];
// BatchTopK has a variable count per row. All tensors are contiguous (the Python side makes
// them so); crow and cols are int64 and checked here, because a bad entry would be an
// out-of-bounds read or write.
//
// grad_input: out[b] = sum_{p in row b} grad[p] * weight[cols[p]], parallel over batch rows.
// grad_weight: gw[i] = sum_{p: cols[p] == i} grad[p] * x[row(p)] and gb[i] = sum grad[p], parallel
// over latent rows after a counting sort of the entries by latent (a reverse index): each row is
// summed by one thread in increasing entry order, so the result is deterministic (independent
// of the thread count too) and needs no atomics.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "common.h"
#include "parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
namespace {

constexpr int64_t kGather = 64;  // entries whose rows are collected before one accumulation pass

// acc[0..N) += sum_q c[q] * src[q][0..N) for q < n: four source rows per sweep over acc, so acc
// is loaded and stored a quarter as often (vectorizable for every storage type).
template <typename T, typename A>
void accumulate(A* __restrict acc, const A* c, const T* const* src, int64_t n, int64_t N) {
  int64_t q = 0;
  for (; q + 4 <= n; q += 4) {
    const T* __restrict s0 = src[q];
    const T* __restrict s1 = src[q + 1];
    const T* __restrict s2 = src[q + 2];
    const T* __restrict s3 = src[q + 3];
    const A c0 = c[q], c1 = c[q + 1], c2 = c[q + 2], c3 = c[q + 3];
#pragma omp simd
    for (int64_t j = 0; j < N; ++j)
      acc[j] += c0 * load_as<A>(s0, j) + c1 * load_as<A>(s1, j) + c2 * load_as<A>(s2, j) + c3 * load_as<A>(s3, j);
  }
  for (; q < n; ++q) {
    const T* __restrict s = src[q];
    const A cq = c[q];
#pragma omp simd
    for (int64_t j = 0; j < N; ++j) acc[j] += cq * load_as<A>(s, j);
  }
}

// crow must be a valid row pointer over E entries: crow[0] == 0, non-decreasing, crow[B] == E.
void check_crow(const int64_t* crow, int64_t B, int64_t E) {
  bool ok = crow[0] == 0 && crow[B] == E;
  for (int64_t b = 0; ok && b < B; ++b) ok = crow[b] <= crow[b + 1];
  PYAEPLUS_CHECK(ok, "topk_encode: crow must rise from 0 to the number of entries");
}

// grad [E], crow [B+1], cols [E], weight [D, N] -> out [B, N] (every row written).
template <typename T>
void grad_input_impl(const T* grad, const int64_t* crow, const int64_t* cols, const T* weight, T* out, int64_t B,
                     int64_t E, int64_t D, int64_t N) {
  using A = acc_t<T>;
  check_crow(crow, B, E);
  std::atomic<bool> bad{false};
  const int64_t per_row = std::max<int64_t>(1, (E / std::max<int64_t>(B, 1)) * N);
  parallel_for(B, std::max<int64_t>(1, 32768 / per_row), [&](int64_t b0, int64_t b1) {
    std::vector<A> acc(N);
    A c[kGather];
    const T* src[kGather];
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t p = crow[b]; p < crow[b + 1]; p += kGather) {
        const int64_t n = std::min<int64_t>(kGather, crow[b + 1] - p);
        for (int64_t q = 0; q < n; ++q) {
          const int64_t i = cols[p + q];
          const bool ok = i >= 0 && i < D;
          if (!ok) bad.store(true, std::memory_order_relaxed);
          c[q] = ok ? load_as<A>(grad, p + q) : A(0);
          src[q] = weight + (ok ? i : 0) * N;
        }
        accumulate<T, A>(acc.data(), c, src, n, N);
      }
      for (int64_t j = 0; j < N; ++j) store_from<T, A>(out + b * N, j, acc[j]);
    }
  });
  PYAEPLUS_CHECK(!bad.load(), "topk_encode: a latent index is out of range [0, D)");
}

// grad [E], crow [B+1], cols [E], x [B, N] -> gw [D, N], gb [D] (every row written).
template <typename T>
void grad_weight_impl(const T* grad, const int64_t* crow, const int64_t* cols, const T* x, T* gw, T* gb, int64_t B,
                      int64_t E, int64_t D, int64_t N) {
  using A = acc_t<T>;
  check_crow(crow, B, E);
  // Reverse index: counting sort of the entries by latent (stable: increasing entry order).
  std::vector<int64_t> indptr(D + 1, 0), order(E), row_of(E);
  for (int64_t e = 0; e < E; ++e) {
    PYAEPLUS_CHECK(cols[e] >= 0 && cols[e] < D, "topk_encode: a latent index is out of range [0, D)");
    ++indptr[cols[e] + 1];
  }
  for (int64_t i = 0; i < D; ++i) indptr[i + 1] += indptr[i];
  {
    std::vector<int64_t> pos(indptr.begin(), indptr.end() - 1);
    for (int64_t e = 0; e < E; ++e) order[pos[cols[e]]++] = e;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t p = crow[b]; p < crow[b + 1]; ++p) row_of[p] = b;
  }
  // Latent rows in contiguous ranges of about equal cost (a row: N stores + N FMAs per entry).
  const int64_t total = E + D;
  const int nt = static_cast<int>(std::min<int64_t>(max_threads(), total * N / 65536 + 1));
  auto first_row = [&](int64_t cost) {  // first latent row whose prefix cost reaches `cost`
    int64_t lo = 0, hi = D;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (indptr[mid] + mid < cost) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  };
  parallel_for(nt, 1, [&](int64_t t0, int64_t t1) {
    std::vector<A> acc(N);
    A c[kGather];
    const T* src[kGather];
    for (int64_t i = first_row(total * t0 / nt); i < first_row(total * t1 / nt); ++i) {
      std::fill(acc.begin(), acc.end(), A(0));
      A bias_sum = 0;
      for (int64_t p = indptr[i]; p < indptr[i + 1]; p += kGather) {
        const int64_t n = std::min<int64_t>(kGather, indptr[i + 1] - p);
        for (int64_t q = 0; q < n; ++q) {
          const int64_t e = order[p + q];
          c[q] = load_as<A>(grad, e);
          src[q] = x + row_of[e] * N;
          bias_sum += c[q];
        }
        accumulate<T, A>(acc.data(), c, src, n, N);
      }
      for (int64_t j = 0; j < N; ++j) store_from<T, A>(gw + i * N, j, acc[j]);
      store_from<T, A>(gb, i, bias_sum);
    }
  });
}

void check_sizes(int64_t B, int64_t E, int64_t D, int64_t N) {
  PYAEPLUS_CHECK(B >= 0 && E >= 0 && D > 0 && N >= 0, "topk_encode: invalid sizes");
}

void grad_input(uintptr_t grad, uintptr_t crow, uintptr_t cols, uintptr_t weight, uintptr_t out, int64_t B,
                int64_t E, int64_t D, int64_t N, int dtype) {
  check_sizes(B, E, D, N);
  PYAEPLUS_DISPATCH_FLOATING(dtype, "topk_encode_grad_input", [&] {
    grad_input_impl<scalar_t>(as_ptr<const scalar_t>(grad), as_ptr<const int64_t>(crow), as_ptr<const int64_t>(cols),
                              as_ptr<const scalar_t>(weight), as_ptr<scalar_t>(out), B, E, D, N);
  });
}

void grad_weight(uintptr_t grad, uintptr_t crow, uintptr_t cols, uintptr_t x, uintptr_t gw, uintptr_t gb, int64_t B,
                 int64_t E, int64_t D, int64_t N, int dtype) {
  check_sizes(B, E, D, N);
  PYAEPLUS_DISPATCH_FLOATING(dtype, "topk_encode_grad_weight", [&] {
    grad_weight_impl<scalar_t>(as_ptr<const scalar_t>(grad), as_ptr<const int64_t>(crow), as_ptr<const int64_t>(cols),
                               as_ptr<const scalar_t>(x), as_ptr<scalar_t>(gw), as_ptr<scalar_t>(gb), B, E, D, N);
  });
}

void bind_topk_encode(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("topk_encode_grad_input", &grad_input, nogil,
        "grad_x[B,N] = sum over row b's entries of grad[E] * weight[D,N][cols[E]]; CSR crow[B+1]; contiguous",
        py::arg("grad"), py::arg("crow"), py::arg("cols"), py::arg("weight"), py::arg("out"), py::arg("B"),
        py::arg("E"), py::arg("D"), py::arg("N"), py::arg("dtype"));
  m.def("topk_encode_grad_weight", &grad_weight, nogil,
        "grad_weight[D,N] and grad_bias[D] by reverse index (deterministic, no atomics); contiguous",
        py::arg("grad"), py::arg("crow"), py::arg("cols"), py::arg("x"), py::arg("grad_weight"), py::arg("grad_bias"),
        py::arg("B"), py::arg("E"), py::arg("D"), py::arg("N"), py::arg("dtype"));
}

}  // namespace

PYAEPLUS_REGISTER(topk_encode, bind_topk_encode);

}  // namespace pyaeplus
