// sparse_decode on CUDA: gather-matmul forward, grad_values (warp dot products), and a
// grad_weight that walks a reverse index (entries sorted by latent row, CSR indptr, built by
// the Python side with a stable sort) so that each weight row is summed by one thread per
// column in a fixed order: deterministic, no floating-point atomics.
//
// The Python side makes every tensor contiguous (ops/sparse_decode.py). Indices outside
// [0, D) are skipped (contribute 0) so that no access goes out of bounds; the public function
// rejects them before launching.
#include <pybind11/pybind11.h>

#include "common.cuh"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
namespace {

constexpr int kThreads = 128;  // columns per block in forward / grad_weight
constexpr int kWarps = 8;      // warps per block in grad_values

// values, indices: [B, K]; weight: [D, N]; bias: [N] or null; out: [B, N].
// grid (B, ceil(N / kThreads)); one thread per output column; the row's (index, value) pairs
// are staged through shared memory kThreads at a time.
template <typename T, typename I>
__global__ void forward_kernel(const T* __restrict__ values, const I* __restrict__ indices,
                                   const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ out,
                                   int64_t K, int64_t D, int64_t N) {
  using A = typename cuda_acc<T>::type;
  __shared__ int64_t s_idx[kThreads];
  __shared__ A s_val[kThreads];
  const int64_t b = blockIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  A acc = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kThreads) {
    const int64_t kk = k0 + threadIdx.x;
    if (kk < K) {
      const int64_t i = static_cast<int64_t>(indices[b * K + kk]);
      const bool ok = i >= 0 && i < D;
      s_idx[threadIdx.x] = ok ? i : -1;
      s_val[threadIdx.x] = ok ? load_acc<A>(values, b * K + kk) : A(0);
    }
    __syncthreads();
    const int64_t cnt = (K - k0 < kThreads) ? (K - k0) : int64_t(kThreads);
    if (col < N) {
      for (int64_t j = 0; j < cnt; ++j) {
        const int64_t i = s_idx[j];
        if (i >= 0) acc += s_val[j] * load_acc<A>(weight, i * N + col);
      }
    }
    __syncthreads();
  }
  if (col < N) {
    if (bias != nullptr) acc += load_acc<A>(bias, col);
    store_acc<T, A>(out, b * N + col, acc);
  }
}

// grad_out: [B, N]; indices: [B, K]; weight: [D, N]; gv: [B, K].
// grid (B); each warp computes <grad_out[b], weight[indices[b, j]]> for j = warp, warp + kWarps, ...
template <typename T, typename I>
__global__ void grad_values_kernel(const T* __restrict__ grad_out, const I* __restrict__ indices,
                                   const T* __restrict__ weight, T* __restrict__ gv, int64_t K, int64_t D,
                                   int64_t N) {
  using A = typename cuda_acc<T>::type;
  const int64_t b = blockIdx.x;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int64_t j = warp; j < K; j += kWarps) {
    const int64_t i = static_cast<int64_t>(indices[b * K + j]);
    A s = 0;
    if (i >= 0 && i < D) {
      for (int64_t n = lane; n < N; n += 32) s += load_acc<A>(grad_out, b * N + n) * load_acc<A>(weight, i * N + n);
    }
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) store_acc<T, A>(gv, b * K + j, s);
  }
}

// grad_out: [B, N]; sorted_values, sorted_rows: [E] (entries grouped by latent row; batch row of
// each entry); indptr: [D+1]; gw: [D, N]. grid (D, ceil(N / kThreads)); one thread per column
// sums its latent row's entries in order (rows without entries get zeros).
template <typename T>
__global__ void grad_weight_kernel(const T* __restrict__ grad_out, const T* __restrict__ sorted_values,
                                   const int64_t* __restrict__ sorted_rows, const int64_t* __restrict__ indptr,
                                   T* __restrict__ gw, int64_t N) {
  using A = typename cuda_acc<T>::type;
  const int64_t i = blockIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (col >= N) return;
  const int64_t start = indptr[i], end = indptr[i + 1];
  A acc = 0;
  for (int64_t p = start; p < end; ++p)
    acc += load_acc<A>(sorted_values, p) * load_acc<A>(grad_out, sorted_rows[p] * N + col);
  store_acc<T, A>(gw, i * N + col, acc);
}

void check_grid(int64_t rows, int64_t N) {
  PYAEPLUS_CHECK(rows < (int64_t(1) << 31), "sparse_decode: too many rows for one grid");
  PYAEPLUS_CHECK(ceil_div(N, kThreads) < 65536, "sparse_decode: N too large for one grid");
}

void forward(uintptr_t values, uintptr_t indices, uintptr_t weight, uintptr_t bias, uintptr_t out, int64_t B,
             int64_t K, int64_t D, int64_t N, int dtype, int index_dtype, uintptr_t stream) {
  PYAEPLUS_CHECK(B >= 0 && K >= 0 && D > 0 && N >= 0, "sparse_decode: invalid sizes");
  if (B == 0 || N == 0) return;
  check_grid(B, N);
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(ceil_div(N, kThreads)));
  dispatch_index(index_dtype, "sparse_decode", [&](auto itag) {
    using I = decltype(itag);
    PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "sparse_decode", [&] {
      forward_kernel<scalar_t, I><<<grid, kThreads, 0, as_stream(stream)>>>(
          as_ptr<const scalar_t>(values), as_ptr<const I>(indices), as_ptr<const scalar_t>(weight),
          as_ptr<const scalar_t>(bias), as_ptr<scalar_t>(out), K, D, N);
      PYAEPLUS_CUDA_CHECK_LAUNCH();
    });
  });
}

void grad_values(uintptr_t grad_out, uintptr_t indices, uintptr_t weight, uintptr_t gv, int64_t B, int64_t K,
                 int64_t D, int64_t N, int dtype, int index_dtype, uintptr_t stream) {
  PYAEPLUS_CHECK(B >= 0 && K >= 0 && D > 0 && N >= 0, "sparse_decode: invalid sizes");
  if (B == 0 || K == 0) return;
  check_grid(B, 1);
  dispatch_index(index_dtype, "sparse_decode_grad_values", [&](auto itag) {
    using I = decltype(itag);
    PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "sparse_decode_grad_values", [&] {
      grad_values_kernel<scalar_t, I><<<static_cast<unsigned>(B), kWarps * 32, 0, as_stream(stream)>>>(
          as_ptr<const scalar_t>(grad_out), as_ptr<const I>(indices), as_ptr<const scalar_t>(weight),
          as_ptr<scalar_t>(gv), K, D, N);
      PYAEPLUS_CUDA_CHECK_LAUNCH();
    });
  });
}

void grad_weight(uintptr_t grad_out, uintptr_t sorted_values, uintptr_t sorted_rows, uintptr_t indptr,
                 uintptr_t gw, int64_t D, int64_t N, int dtype, uintptr_t stream) {
  PYAEPLUS_CHECK(D > 0 && N >= 0, "sparse_decode: invalid sizes");
  if (N == 0) return;
  check_grid(D, N);
  const dim3 grid(static_cast<unsigned>(D), static_cast<unsigned>(ceil_div(N, kThreads)));
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "sparse_decode_grad_weight", [&] {
    grad_weight_kernel<scalar_t><<<grid, kThreads, 0, as_stream(stream)>>>(
        as_ptr<const scalar_t>(grad_out), as_ptr<const scalar_t>(sorted_values),
        as_ptr<const int64_t>(sorted_rows), as_ptr<const int64_t>(indptr), as_ptr<scalar_t>(gw), N);
    PYAEPLUS_CUDA_CHECK_LAUNCH();
  });
}

void bind_sparse_decode(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("sparse_decode_forward", &forward, nogil, "out[B,N] = sum_j values[B,K] * weight[D,N][indices] (+ bias)",
        py::arg("values"), py::arg("indices"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("B"),
        py::arg("K"), py::arg("D"), py::arg("N"), py::arg("dtype"), py::arg("index_dtype"), py::arg("stream"));
  m.def("sparse_decode_grad_values", &grad_values, nogil, "grad_values[B,K] = <grad_out[b], weight[indices[b,j]]>",
        py::arg("grad_out"), py::arg("indices"), py::arg("weight"), py::arg("grad_values"), py::arg("B"),
        py::arg("K"), py::arg("D"), py::arg("N"), py::arg("dtype"), py::arg("index_dtype"), py::arg("stream"));
  m.def("sparse_decode_grad_weight", &grad_weight, nogil,
        "grad_weight[D,N] from the reverse index (deterministic, no atomics)", py::arg("grad_out"),
        py::arg("sorted_values"), py::arg("sorted_rows"), py::arg("indptr"), py::arg("grad_weight"), py::arg("D"),
        py::arg("N"), py::arg("dtype"), py::arg("stream"));
}

}  // namespace

PYAEPLUS_REGISTER(sparse_decode, bind_sparse_decode);

}  // namespace pyaeplus
