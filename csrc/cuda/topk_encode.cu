// topk_encode on CUDA: the backward of the fused top-k encoder (the forward is cuBLAS + the top-k
// kernel, composed by the Python side). The selected entries come as CSR by batch row: crow
// [B+1], cols [E] (latent of each entry), grad [E] (ReLU mask applied).
//
// grad_input: grid (B, ceil(N / kThreads)), one thread per column sums its batch row's entries
// (latent index and gradient staged through shared memory kThreads at a time).
// grad_weight: walks a reverse index (entries sorted by latent, CSR indptr [D+1], built by the
// Python side with a stable sort): grid (D, ceil(N / kThreads)), one thread per column sums its
// latent's entries in a fixed order, so the result is deterministic and needs no atomics; the
// first thread of column tile 0 also writes grad_bias[i].
//
// The Python side makes every tensor contiguous. Entry positions outside [0, E), latents
// outside [0, D) and batch rows outside [0, B) are skipped (contribute 0), so no access goes
// out of bounds; the ops reject them before launching.
#include <pybind11/pybind11.h>

#include "common.cuh"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
namespace {

constexpr int kThreads = 128;

// [lo, hi) of a CSR segment clamped to [0, E].
__device__ __forceinline__ void segment(const int64_t* ptr, int64_t r, int64_t E, int64_t* lo, int64_t* hi) {
  *lo = min(max(ptr[r], int64_t(0)), E);
  *hi = min(max(ptr[r + 1], *lo), E);
}

// grad, cols: [E]; crow: [B+1]; weight: [D, N]; out: [B, N].
template <typename T>
__global__ void grad_input_kernel(const T* __restrict__ grad, const int64_t* __restrict__ crow,
                                  const int64_t* __restrict__ cols, const T* __restrict__ weight,
                                  T* __restrict__ out, int64_t E, int64_t D, int64_t N) {
  using A = typename cuda_acc<T>::type;
  __shared__ int64_t s_lat[kThreads];
  __shared__ A s_g[kThreads];
  const int64_t b = blockIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  int64_t lo, hi;
  segment(crow, b, E, &lo, &hi);
  A acc = 0;
  for (int64_t p0 = lo; p0 < hi; p0 += kThreads) {
    const int64_t p = p0 + threadIdx.x;
    if (p < hi) {
      const int64_t i = cols[p];
      const bool ok = i >= 0 && i < D;
      s_lat[threadIdx.x] = ok ? i : -1;
      s_g[threadIdx.x] = ok ? load_acc<A>(grad, p) : A(0);
    }
    __syncthreads();
    const int64_t cnt = (hi - p0 < kThreads) ? (hi - p0) : int64_t(kThreads);
    if (col < N) {
      for (int64_t j = 0; j < cnt; ++j)
        if (s_lat[j] >= 0) acc += s_g[j] * load_acc<A>(weight, s_lat[j] * N + col);
    }
    __syncthreads();
  }
  if (col < N) store_acc<T, A>(out, b * N + col, acc);
}

// sorted_grad, sorted_rows: [E] grouped by latent; indptr: [D+1]; x: [B, N]; gw: [D, N]; gb: [D].
template <typename T>
__global__ void grad_weight_kernel(const T* __restrict__ sorted_grad, const int64_t* __restrict__ sorted_rows,
                                   const int64_t* __restrict__ indptr, const T* __restrict__ x, T* __restrict__ gw,
                                   T* __restrict__ gb, int64_t B, int64_t E, int64_t N) {
  using A = typename cuda_acc<T>::type;
  const int64_t i = blockIdx.x;
  const int64_t col = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  int64_t lo, hi;
  segment(indptr, i, E, &lo, &hi);
  A acc = 0, gsum = 0;
  for (int64_t p = lo; p < hi; ++p) {
    const int64_t r = sorted_rows[p];
    if (r < 0 || r >= B) continue;
    const A g = load_acc<A>(sorted_grad, p);
    gsum += g;
    if (col < N) acc += g * load_acc<A>(x, r * N + col);
  }
  if (col < N) store_acc<T, A>(gw, i * N + col, acc);
  if (blockIdx.y == 0 && threadIdx.x == 0) store_acc<T, A>(gb, i, gsum);
}

void check_grid(int64_t rows, int64_t N) {
  PYAEPLUS_CHECK(rows < (int64_t(1) << 31), "topk_encode: too many rows for one grid");
  PYAEPLUS_CHECK(ceil_div(N, kThreads) < 65536, "topk_encode: N too large for one grid");
}

void grad_input(uintptr_t grad, uintptr_t crow, uintptr_t cols, uintptr_t weight, uintptr_t out, int64_t B,
                int64_t E, int64_t D, int64_t N, int dtype, uintptr_t stream) {
  PYAEPLUS_CHECK(B >= 0 && E >= 0 && D > 0 && N >= 0, "topk_encode: invalid sizes");
  if (B == 0 || N == 0) return;
  check_grid(B, N);
  const dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(ceil_div(N, kThreads)));
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "topk_encode_grad_input", [&] {
    grad_input_kernel<scalar_t><<<grid, kThreads, 0, as_stream(stream)>>>(
        as_ptr<const scalar_t>(grad), as_ptr<const int64_t>(crow), as_ptr<const int64_t>(cols),
        as_ptr<const scalar_t>(weight), as_ptr<scalar_t>(out), E, D, N);
    PYAEPLUS_CUDA_CHECK_LAUNCH();
  });
}

void grad_weight(uintptr_t sorted_grad, uintptr_t sorted_rows, uintptr_t indptr, uintptr_t x, uintptr_t gw,
                 uintptr_t gb, int64_t B, int64_t E, int64_t D, int64_t N, int dtype, uintptr_t stream) {
  PYAEPLUS_CHECK(B >= 0 && E >= 0 && D > 0 && N >= 0, "topk_encode: invalid sizes");
  check_grid(D, N);
  // At least one column tile, so that grad_bias is written when N == 0 too.
  const int64_t tiles = N > 0 ? ceil_div(N, kThreads) : 1;
  const dim3 grid(static_cast<unsigned>(D), static_cast<unsigned>(tiles));
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "topk_encode_grad_weight", [&] {
    grad_weight_kernel<scalar_t><<<grid, kThreads, 0, as_stream(stream)>>>(
        as_ptr<const scalar_t>(sorted_grad), as_ptr<const int64_t>(sorted_rows), as_ptr<const int64_t>(indptr),
        as_ptr<const scalar_t>(x), as_ptr<scalar_t>(gw), as_ptr<scalar_t>(gb), B, E, N);
    PYAEPLUS_CUDA_CHECK_LAUNCH();
  });
}

void bind_topk_encode(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("topk_encode_grad_input", &grad_input, nogil,
        "grad_x[B,N] = sum over row b's entries of grad[E] * weight[D,N][cols[E]] (CSR crow[B+1])",
        py::arg("grad"), py::arg("crow"), py::arg("cols"), py::arg("weight"), py::arg("out"), py::arg("B"),
        py::arg("E"), py::arg("D"), py::arg("N"), py::arg("dtype"), py::arg("stream"));
  m.def("topk_encode_grad_weight", &grad_weight, nogil,
        "grad_weight[D,N] and grad_bias[D] from the reverse index (deterministic, no atomics)",
        py::arg("sorted_grad"), py::arg("sorted_rows"), py::arg("indptr"), py::arg("x"), py::arg("grad_weight"),
        py::arg("grad_bias"), py::arg("B"), py::arg("E"), py::arg("D"), py::arg("N"), py::arg("dtype"),
        py::arg("stream"));
}

}  // namespace

PYAEPLUS_REGISTER(topk_encode, bind_topk_encode);

}  // namespace pyaeplus
