// sparse_decode on the CPU: out[b] = sum_j values[b,j] * weight[indices[b,j]] (+ bias), and
// its gradients. The sparse code never becomes a dense (B, D) tensor.
//
// The Python side makes every tensor contiguous (ops/sparse_decode.py) and checks the index
// range; here indices are still bounds-checked because an out-of-range row would be an
// out-of-bounds read/write.
//
// Parallelism: forward and grad_values over batch rows; grad_weight over weight rows after a
// counting sort of the (b, j) entries by latent row (a reverse index), so every grad_weight
// row is summed by one thread in a fixed order: deterministic, and no atomics. When both
// gradients are needed, grad_values comes out of the grad_weight sweep (no gather of weight).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "common.h"
#include "cpu_dispatch.h"
#include "parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
namespace {

// The kernels, compiled for the baseline ISA and, on x86-64 with GCC/Clang, for AVX2+FMA.
namespace sd_generic {
#include "sparse_decode_cpu_kernels.h"
}  // namespace sd_generic

#ifdef PYAEPLUS_X86_DISPATCH
#define PYAEPLUS_SPARSE_DECODE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace sd_avx2 {
#include "sparse_decode_cpu_kernels.h"
}  // namespace sd_avx2
#pragma GCC pop_options
#endif

// The AVX2 build of a kernel (the macro argument, a template-id) where the CPU has it, else the baseline one.
#ifdef PYAEPLUS_SPARSE_DECODE_AVX2
#define PYAEPLUS_SD_PICK(...) (cpu_has_avx2_fma() ? &sd_avx2::__VA_ARGS__ : &sd_generic::__VA_ARGS__)
#else
#define PYAEPLUS_SD_PICK(...) (&sd_generic::__VA_ARGS__)
#endif

void check_sizes(int64_t B, int64_t K, int64_t D, int64_t N) {
  PYAEPLUS_CHECK(B >= 0 && K >= 0 && D > 0 && N >= 0, "sparse_decode: invalid sizes");
}

void forward(uintptr_t values, uintptr_t indices, uintptr_t weight, uintptr_t bias, uintptr_t out, int64_t B,
             int64_t K, int64_t D, int64_t N, int dtype, int index_dtype) {
  check_sizes(B, K, D, N);
  dispatch_index(index_dtype, "sparse_decode", [&](auto itag) {
    using I = decltype(itag);
    PYAEPLUS_DISPATCH_FLOATING(dtype, "sparse_decode", [&] {
      PYAEPLUS_SD_PICK(forward_impl<scalar_t, I>)(as_ptr<const scalar_t>(values), as_ptr<const I>(indices),
                                as_ptr<const scalar_t>(weight), as_ptr<const scalar_t>(bias),
                                as_ptr<scalar_t>(out), B, K, D, N);
    });
  });
}

void grad_values(uintptr_t grad_out, uintptr_t indices, uintptr_t weight, uintptr_t grad_vals, int64_t B,
                 int64_t K, int64_t D, int64_t N, int dtype, int index_dtype) {
  check_sizes(B, K, D, N);
  dispatch_index(index_dtype, "sparse_decode_grad_values", [&](auto itag) {
    using I = decltype(itag);
    PYAEPLUS_DISPATCH_FLOATING(dtype, "sparse_decode_grad_values", [&] {
      PYAEPLUS_SD_PICK(grad_values_impl<scalar_t, I>)(as_ptr<const scalar_t>(grad_out), as_ptr<const I>(indices),
                                    as_ptr<const scalar_t>(weight), as_ptr<scalar_t>(grad_vals), B, K, D, N);
    });
  });
}

// grad_vals may be 0 (grad_weight only); weight is read only when grad_vals is given.
void grad_weight(uintptr_t grad_out, uintptr_t values, uintptr_t indices, uintptr_t weight, uintptr_t grad_w,
                 uintptr_t grad_vals, int64_t B, int64_t K, int64_t D, int64_t N, int dtype, int index_dtype) {
  check_sizes(B, K, D, N);
  dispatch_index(index_dtype, "sparse_decode_grad_weight", [&](auto itag) {
    using I = decltype(itag);
    PYAEPLUS_DISPATCH_FLOATING(dtype, "sparse_decode_grad_weight", [&] {
      PYAEPLUS_SD_PICK(grad_weight_impl<scalar_t, I>)(as_ptr<const scalar_t>(grad_out), as_ptr<const scalar_t>(values),
                                    as_ptr<const I>(indices), as_ptr<const scalar_t>(weight), as_ptr<scalar_t>(grad_w),
                                    as_ptr<scalar_t>(grad_vals), B, K, D, N);
    });
  });
}

void bind_sparse_decode(py::module_& m) {
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("sparse_decode_forward", &forward, nogil,
        "out[B,N] = sum_j values[B,K] * weight[D,N][indices[B,K]] (+ bias[N]); contiguous inputs",
        py::arg("values"), py::arg("indices"), py::arg("weight"), py::arg("bias"), py::arg("out"), py::arg("B"),
        py::arg("K"), py::arg("D"), py::arg("N"), py::arg("dtype"), py::arg("index_dtype"));
  m.def("sparse_decode_grad_values", &grad_values, nogil,
        "grad_values[B,K] = <grad_out[b], weight[indices[b,j]]>; contiguous inputs", py::arg("grad_out"),
        py::arg("indices"), py::arg("weight"), py::arg("grad_values"), py::arg("B"), py::arg("K"), py::arg("D"),
        py::arg("N"), py::arg("dtype"), py::arg("index_dtype"));
  m.def("sparse_decode_grad_weight", &grad_weight, nogil,
        "grad_weight[D,N] by reverse index (deterministic, no atomics), and grad_values[B,K] in the same "
        "sweep when its pointer is not 0; contiguous inputs",
        py::arg("grad_out"), py::arg("values"), py::arg("indices"), py::arg("weight"), py::arg("grad_weight"),
        py::arg("grad_values"), py::arg("B"), py::arg("K"), py::arg("D"), py::arg("N"), py::arg("dtype"),
        py::arg("index_dtype"));
}

}  // namespace

PYAEPLUS_REGISTER(sparse_decode, bind_sparse_decode);

}  // namespace pyaeplus
