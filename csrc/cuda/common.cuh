// CUDA side of the torch-free boundary: error checking, 16-bit types, launch helpers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "../common.h"

namespace pyaeplus {

#define PYAEPLUS_CUDA_CHECK(expr)                                                         \
  do {                                                                                    \
    cudaError_t err__ = (expr);                                                           \
    if (err__ != cudaSuccess)                                                             \
      throw std::runtime_error(std::string("pyaeplus CUDA error: ") + cudaGetErrorString(err__) + \
                               " at " __FILE__ ":" + std::to_string(__LINE__) + " (" #expr ")");  \
  } while (0)

// Check the launch that just happened (configuration errors surface here, not later).
#define PYAEPLUS_CUDA_CHECK_LAUNCH() PYAEPLUS_CUDA_CHECK(cudaGetLastError())

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<double>(double v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_f32<double>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> struct cuda_acc { using type = float; };
template <> struct cuda_acc<double> { using type = double; };

// p[i] loaded in the accumulation type A / v stored to p[i] from it (exact for double).
template <typename A, typename T>
__device__ __forceinline__ A load_acc(const T* p, int64_t i) {
  return static_cast<A>(to_f32(p[i]));
}
template <>
__device__ __forceinline__ double load_acc<double, double>(const double* p, int64_t i) { return p[i]; }

template <typename T, typename A>
__device__ __forceinline__ void store_acc(T* p, int64_t i, A v) { p[i] = from_f32<T>(static_cast<float>(v)); }
template <>
__device__ __forceinline__ void store_acc<double, double>(double* p, int64_t i, double v) { p[i] = v; }

#define PYAEPLUS_CUDA_DISPATCH_FLOATING(code, NAME, ...)                                  \
  [&] {                                                                                   \
    switch (code) {                                                                       \
      case ::pyaeplus::kFloat32: { using scalar_t = float; return __VA_ARGS__(); }        \
      case ::pyaeplus::kFloat64: { using scalar_t = double; return __VA_ARGS__(); }       \
      case ::pyaeplus::kBFloat16: { using scalar_t = __nv_bfloat16; return __VA_ARGS__(); } \
      case ::pyaeplus::kFloat16: { using scalar_t = __half; return __VA_ARGS__(); }       \
      default: ::pyaeplus::fail(std::string(NAME) + ": unsupported dtype " + ::pyaeplus::dtype_name(code)); \
    }                                                                                     \
  }()

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace pyaeplus
