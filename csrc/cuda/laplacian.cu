// Fused graph-Laplacian loss + gradient on CUDA: one warp per row of the symmetric operand CSR S
// (Graph._grad_csr), lanes over the feature dimension (coalesced gathers of z_j), no atomics.
// With y = s * z (s optional) and g an optional per-row weight (else 1):
//   rows[i] = 1/2 sum_j S_ij ||y_i - y_j||^2
//   grad[i] = grad_scale * s_i * sum_j S_ij (g_i + g_j) (y_i - y_j)
//
// Memory safety without a sync (direct torch.ops callers): each row's edge range is clamped to
// [0, nnz] and an index outside [0, n) is skipped, so a malformed CSR gives a wrong loss, never an
// out-of-bounds access. The Python side checks shapes; pyaeplus.graph.Graph validates the values.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "../registry.h"
#include "common.cuh"

namespace py = pybind11;

namespace pyaeplus {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kPerLane = 4;  // features per lane per chunk: a chunk covers 128 features

// Storage -> accumulation type and back (float64 stays float64; 16-bit types go through fp32).
template <typename T>
__device__ __forceinline__ typename cuda_acc<T>::type load_acc(T v) { return to_f32(v); }
template <>
__device__ __forceinline__ double load_acc<double>(double v) { return v; }
template <typename T>
__device__ __forceinline__ void store_acc(T* p, typename cuda_acc<T>::type v) { *p = from_f32<T>(v); }
template <>
__device__ __forceinline__ void store_acc<double>(double* p, double v) { *p = v; }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__global__ void laplacian_rows_grad_kernel(const T* __restrict__ z, int64_t n, int64_t d, int64_t sz0,  // z: [n, d] (row stride sz0)
                                           const int64_t* __restrict__ indptr,    // [n + 1]
                                           const int64_t* __restrict__ indices,   // [nnz]
                                           int64_t nnz,
                                           const float* __restrict__ weights,     // [nnz]
                                           const float* __restrict__ scale,       // [n] or null
                                           const typename cuda_acc<T>::type* __restrict__ row_weight,  // [n] or null
                                           double grad_scale,
                                           typename cuda_acc<T>::type* __restrict__ rows,  // [n] or null
                                           T* __restrict__ grad) {                         // [n, d] contiguous or null
  using A = typename cuda_acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (i >= n) return;  // whole warp exits together
  const int64_t p0 = min(max(indptr[i], int64_t(0)), nnz);
  const int64_t p1 = min(max(indptr[i + 1], p0), nnz);
  const A si = scale ? static_cast<A>(scale[i]) : A(1);
  const A gi = row_weight ? row_weight[i] : A(1);
  const T* zi = z + i * sz0;
  A row_part = A(0);
  for (int64_t d0 = 0; d0 < d; d0 += 32 * kPerLane) {
    A yi[kPerLane], acc[kPerLane];
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int64_t k = d0 + r * 32 + lane;
      yi[r] = k < d ? si * load_acc(zi[k]) : A(0);
      acc[r] = A(0);
    }
    // Unrolled so that the gathers of several neighbour rows are in flight together (the
    // loads are independent across edges: restrict pointers, nothing written in the loop).
#pragma unroll 4
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j = __ldg(indices + p);
      if (static_cast<uint64_t>(j) >= static_cast<uint64_t>(n)) continue;  // whole warp: j is uniform
      const A w = static_cast<A>(__ldg(weights + p));
      const A sj = scale ? static_cast<A>(__ldg(scale + j)) : A(1);
      const A c = grad ? (row_weight ? w * (gi + row_weight[j]) : A(2) * w) : A(0);
      const T* zj = z + j * sz0;
      A sq = A(0);
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        const int64_t k = d0 + r * 32 + lane;
        if (k < d) {
          const A t = yi[r] - sj * load_acc(zj[k]);
          sq += t * t;
          acc[r] += c * t;
        }
      }
      row_part += w * sq;
    }
    if (grad) {
      const A f = static_cast<A>(grad_scale) * si;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        const int64_t k = d0 + r * 32 + lane;
        if (k < d) store_acc(grad + i * d + k, f * acc[r]);
      }
    }
  }
  const A total = warp_sum(row_part);
  if (rows && lane == 0) rows[i] = A(0.5) * total;
}

void laplacian_rows_grad(uintptr_t z, int64_t n, int64_t d, int64_t sz0, uintptr_t indptr, uintptr_t indices,
                         int64_t nnz, uintptr_t weights, uintptr_t scale, uintptr_t row_weight, double grad_scale,
                         uintptr_t rows, uintptr_t grad, int dtype, uintptr_t stream) {
  PYAEPLUS_CHECK(n >= 0 && d >= 0 && nnz >= 0 && sz0 >= d, "laplacian_rows_grad: bad sizes");
  if (n == 0) return;
  const int64_t blocks = ceil_div(n, kWarpsPerBlock);
  PYAEPLUS_CHECK(blocks <= 0x7fffffffLL, "laplacian_rows_grad: too many rows");
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "laplacian_rows_grad", [&] {
    using A = typename cuda_acc<scalar_t>::type;
    laplacian_rows_grad_kernel<scalar_t><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, as_stream(stream)>>>(
        as_ptr<const scalar_t>(z), n, d, sz0, as_ptr<const int64_t>(indptr), as_ptr<const int64_t>(indices), nnz,
        as_ptr<const float>(weights), as_ptr<const float>(scale), as_ptr<const A>(row_weight), grad_scale,
        as_ptr<A>(rows), as_ptr<scalar_t>(grad));
    PYAEPLUS_CUDA_CHECK_LAUNCH();
  });
}

void bind_laplacian(py::module_& m) {
  m.def("laplacian_rows_grad", &laplacian_rows_grad, py::call_guard<py::gil_scoped_release>(),
        "Fused Laplacian row losses + gradient over a symmetric CSR (pointers as ints; null = absent)",
        py::arg("z"), py::arg("n"), py::arg("d"), py::arg("stride0"), py::arg("indptr"), py::arg("indices"),
        py::arg("nnz"), py::arg("weights"), py::arg("scale"), py::arg("row_weight"), py::arg("grad_scale"),
        py::arg("rows"), py::arg("grad"), py::arg("dtype"), py::arg("stream"));
}

}  // namespace

PYAEPLUS_REGISTER(laplacian, bind_laplacian);

}  // namespace pyaeplus
