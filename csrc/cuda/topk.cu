// Top-k sparse activation, CUDA kernels: one thread block per row.
//
// Forward: values become order-preserving unsigned keys (-0.0 -> +0.0, every NaN -> the
// largest key, torch.topk's order). An MSB-first radix select with 8-bit digits finds the
// k-th largest key: each pass builds a 256-bin shared-memory histogram of the next digit over
// the keys that match the prefix found so far, and warp 0 picks the digit holding the k-th
// key. It stops early once the k-th key's bin is taken whole. Keys are cached in shared
// memory when the row fits (else re-read from global memory, L2-resident). The final pass
// walks the row in index order, tile by tile; ballots and per-warp counts give each selected
// element its slot in index order, and the first `need` elements equal to the threshold win
// ties, so the result is deterministic. Sparse outputs with k <= kSortMax are ordered in the
// kernel (rank by counting over the k candidates in shared memory); larger k are written in
// index order and sorted by the caller (stable sort by value).
//
// Backward: per row, zero-fill, barrier, then the k gradients: one pass over grad_x.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>

#include "common.cuh"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
namespace {

constexpr int64_t kSortMax = 256;            // in-kernel ordering of sparse outputs up to this k
constexpr int64_t kCacheBytes = 64 * 1024;   // cache the row's keys in shared memory up to this
constexpr unsigned kFull = 0xFFFFFFFFu;

__device__ __forceinline__ uint32_t order_key(float v) {
  v = (v == 0.0f) ? 0.0f : v;
  const uint32_t u = __float_as_uint(v);
  const uint32_t k = u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
  return (v != v) ? 0xFFFFFFFFu : k;
}

__device__ __forceinline__ unsigned long long order_key(double v) {
  v = (v == 0.0) ? 0.0 : v;
  const unsigned long long u = static_cast<unsigned long long>(__double_as_longlong(v));
  const unsigned long long k = u ^ ((u >> 63) ? ~0ull : 0x8000000000000000ull);
  return (v != v) ? ~0ull : k;
}

template <typename T>
struct KeyOf {
  using type = uint32_t;
  __device__ static uint32_t get(T v) { return order_key(to_f32<T>(v)); }
};
template <>
struct KeyOf<double> {
  using type = unsigned long long;
  __device__ static unsigned long long get(double v) { return order_key(v); }
};

// torch.relu: negatives -> +0; NaN and -0.0 pass through.
template <typename T>
__device__ __forceinline__ T relu_val(T v, bool relu) {
  return (relu && to_f32<T>(v) < 0.0f) ? from_f32<T>(0.0f) : v;
}
template <>
__device__ __forceinline__ double relu_val<double>(double v, bool relu) {
  return (relu && v < 0.0) ? 0.0 : v;
}

template <typename T>
__device__ __forceinline__ bool is_positive(T v) { return to_f32<T>(v) > 0.0f; }
template <>
__device__ __forceinline__ bool is_positive<double>(double v) { return v > 0.0; }

// Block-wide exclusive rank of `flag` in thread order (thread order == index order within a
// tile), plus the tile's total. warp_cnt: [32] shared. Two barriers.
__device__ __forceinline__ unsigned block_rank(bool flag, unsigned* warp_cnt, unsigned* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const unsigned b = __ballot_sync(kFull, flag);
  if (lane == 0) warp_cnt[warp] = __popc(b);
  __syncthreads();
  unsigned before = __popc(b & ((1u << lane) - 1u)), tot = 0;
  for (int w = 0; w < nwarps; ++w) {
    const unsigned c = warp_cnt[w];
    if (w < warp) before += c;
    tot += c;
  }
  __syncthreads();  // warp_cnt is reused by the next call
  *total = tot;
  return before;
}

// x: [B, D] (row stride sx0, unit element stride). DENSE: y [B, D] contiguous, idx [B, k]
// in index order. Sparse: vals [B, k], idx [B, k] ordered (value desc, index asc) when
// sort_out, else idx only, in index order. Dynamic shared memory: [CACHE: D keys, padded
// to 16 bytes][sort_out: kSortMax keys, kSortMax int64 indices].
template <typename T, bool CACHE, bool DENSE>
__global__ void topk_fwd_kernel(const T* __restrict__ x, int64_t D, int64_t sx0, int64_t k, bool relu,
                                T* __restrict__ vals, int64_t* __restrict__ idx, T* __restrict__ y, bool sort_out) {
  using K = typename KeyOf<T>::type;
  constexpr int kBits = sizeof(K) * 8;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ unsigned hist[256];
  __shared__ unsigned warp_cnt[32];
  __shared__ unsigned s_digit, s_remaining, s_bincount;

  const int64_t row = blockIdx.x;
  const T* xr = x + row * sx0;
  K* cache = reinterpret_cast<K*>(smem);
  const int64_t cache_bytes = CACHE ? ((D * static_cast<int64_t>(sizeof(K)) + 15) / 16) * 16 : 0;
  K* cand_key = reinterpret_cast<K*>(smem + cache_bytes);
  int64_t* cand_idx = reinterpret_cast<int64_t*>(smem + cache_bytes + kSortMax * sizeof(K));

  if (CACHE) {
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) cache[i] = KeyOf<T>::get(xr[i]);
  }
  K prefix = 0, pmask = 0;
  unsigned remaining = static_cast<unsigned>(k), bincount = 0;
  for (int shift = kBits - 8; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      const K key = CACHE ? cache[i] : KeyOf<T>::get(xr[i]);
      if ((key & pmask) == prefix) atomicAdd(&hist[static_cast<unsigned>(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Lane l owns bins 255-8l .. 248-8l (descending); a scan over lanes finds the lane
      // whose bins reach `remaining`, which then walks its 8 bins.
      const int lane = threadIdx.x;
      unsigned s = 0;
      for (int b = 0; b < 8; ++b) s += hist[255 - 8 * lane - b];
      unsigned inc = s;
      for (int off = 1; off < 32; off <<= 1) {
        const unsigned n = __shfl_up_sync(kFull, inc, off);
        if (lane >= off) inc += n;
      }
      const unsigned hit = __ballot_sync(kFull, inc >= remaining);
      if (lane == __ffs(hit) - 1) {
        unsigned c = inc - s;
        for (int b = 0; b < 8; ++b) {
          const int bin = 255 - 8 * lane - b;
          if (c + hist[bin] >= remaining) {
            s_digit = bin;
            s_remaining = remaining - c;
            s_bincount = hist[bin];
            break;
          }
          c += hist[bin];
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<K>(s_digit) << shift;
    pmask |= static_cast<K>(255) << shift;
    remaining = s_remaining;
    bincount = s_bincount;
    if (bincount == remaining) break;  // the whole bin is selected: no finer digit needed
  }
  // Selection: (key & pmask) > prefix, plus the first `remaining` (in index order) of the
  // `bincount` entries with (key & pmask) == prefix.
  const bool take_all_eq = (bincount == remaining);
  unsigned eq_base = 0, sel_base = 0;
  for (int64_t tile = 0; tile < D; tile += blockDim.x) {
    const int64_t i = tile + threadIdx.x;
    const bool valid = i < D;
    const K key = valid ? (CACHE ? cache[i] : KeyOf<T>::get(xr[i])) : K(0);
    const K mk = key & pmask;
    const bool gt = valid && mk > prefix;
    const bool eq = valid && mk == prefix;
    bool sel = gt || eq;
    if (!take_all_eq) {  // uniform branch
      unsigned tot;
      const unsigned r = eq_base + block_rank(eq, warp_cnt, &tot);
      sel = gt || (eq && r < remaining);
      eq_base += tot;
    }
    unsigned tot;
    const unsigned slot = sel_base + block_rank(sel, warp_cnt, &tot);
    sel_base += tot;
    if (DENSE) {
      if (valid) y[row * D + i] = sel ? relu_val<T>(xr[i], relu) : from_f32<T>(0.0f);
      if (sel) idx[row * k + slot] = i;
    } else if (sel) {
      if (sort_out) {
        cand_key[slot] = key;
        cand_idx[slot] = i;
      } else {
        idx[row * k + slot] = i;
      }
    }
  }
  if (!DENSE && sort_out) {
    __syncthreads();
    // Candidates sit in index order, so "lower index" is "lower slot".
    for (int64_t s = threadIdx.x; s < k; s += blockDim.x) {
      const K ks = cand_key[s];
      int64_t rank = 0;
      for (int64_t j = 0; j < k; ++j) {
        const K kj = cand_key[j];
        rank += (kj > ks) || (kj == ks && j < s);
      }
      const int64_t c = cand_idx[s];
      idx[row * k + rank] = c;
      vals[row * k + rank] = relu_val<T>(xr[c], relu);
    }
  }
}

// grad: [B, G] (row stride sg0), G = k, or D when gather (read at the indices); mask: like
// grad (row stride sm0) or null, the gradient passes where mask > 0; idx: [B, k] contiguous;
// out: [B, D] contiguous. Out-of-range indices are skipped (memory safety).
template <typename T>
__global__ void topk_bwd_kernel(const T* __restrict__ grad, int64_t sg0, bool gather, const T* __restrict__ mask,
                                int64_t sm0, const int64_t* __restrict__ idx, int64_t k, int64_t D,
                                T* __restrict__ out) {
  const int64_t row = blockIdx.x;
  T* o = out + row * D;
  const T zero = from_f32<T>(0.0f);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) o[i] = zero;
  __syncthreads();  // the k stores must land after the zeros written by other threads
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    const int64_t c = idx[row * k + j];
    if (c < 0 || c >= D) continue;
    const int64_t src = gather ? c : j;
    T g = grad[row * sg0 + src];
    if (mask != nullptr && !is_positive<T>(mask[row * sm0 + src])) g = zero;
    o[c] = g;
  }
}

int threads_for(int64_t D) { return D <= 1024 ? 128 : (D <= 8192 ? 256 : 512); }

template <typename T, bool CACHE, bool DENSE>
void launch_fwd(const T* x, int64_t B, int64_t D, int64_t sx0, int64_t k, bool relu, T* vals, int64_t* idx, T* y,
                bool sort_out, cudaStream_t stream) {
  using K = typename KeyOf<T>::type;
  const int64_t cache_bytes = CACHE ? ((D * static_cast<int64_t>(sizeof(K)) + 15) / 16) * 16 : 0;
  const int64_t bytes = cache_bytes + (sort_out ? kSortMax * static_cast<int64_t>(sizeof(K) + sizeof(int64_t)) : 0);
  auto kernel = topk_fwd_kernel<T, CACHE, DENSE>;
  if (bytes > 48 * 1024)
    PYAEPLUS_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
  kernel<<<static_cast<unsigned>(B), threads_for(D), static_cast<size_t>(bytes), stream>>>(x, D, sx0, k, relu, vals,
                                                                                           idx, y, sort_out);
  PYAEPLUS_CUDA_CHECK_LAUNCH();
}

bool topk_forward(uintptr_t x, int64_t B, int64_t D, int64_t sx0, int64_t k, bool relu, int dtype, uintptr_t vals,
                  uintptr_t idx, uintptr_t y, uintptr_t stream) {
  PYAEPLUS_CHECK(B >= 0 && B <= 0x7FFFFFFF, "topk_forward (cuda): B must be in [0, 2^31)");
  PYAEPLUS_CHECK(D >= 1 && D < 0xFFFFFFFFll && k >= 1 && k <= D, "topk_forward (cuda): need 1 <= k <= D < 2^32");
  PYAEPLUS_CHECK(x != 0 && idx != 0 && (y != 0 || vals != 0), "topk_forward (cuda): null pointer");
  const bool dense = y != 0;
  const bool sort_out = !dense && k <= kSortMax;
  if (B == 0) return sort_out;
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "topk_forward", [&] {
    using K = typename KeyOf<scalar_t>::type;
    const bool cache = D * static_cast<int64_t>(sizeof(K)) <= kCacheBytes;
    const auto* xp = as_ptr<const scalar_t>(x);
    auto* vp = as_ptr<scalar_t>(vals);
    auto* ip = as_ptr<int64_t>(idx);
    auto* yp = as_ptr<scalar_t>(y);
    const cudaStream_t s = as_stream(stream);
    if (dense) {
      if (cache) launch_fwd<scalar_t, true, true>(xp, B, D, sx0, k, relu, vp, ip, yp, false, s);
      else launch_fwd<scalar_t, false, true>(xp, B, D, sx0, k, relu, vp, ip, yp, false, s);
    } else {
      if (cache) launch_fwd<scalar_t, true, false>(xp, B, D, sx0, k, relu, vp, ip, yp, sort_out, s);
      else launch_fwd<scalar_t, false, false>(xp, B, D, sx0, k, relu, vp, ip, yp, sort_out, s);
    }
  });
  return sort_out;
}

void topk_backward(uintptr_t grad, int64_t sg0, bool gather, uintptr_t mask, int64_t sm0, uintptr_t idx, int64_t B,
                   int64_t k, int64_t D, int dtype, uintptr_t out, uintptr_t stream) {
  PYAEPLUS_CHECK(B >= 0 && B <= 0x7FFFFFFF && D >= 1 && k >= 0 && k <= D, "topk_backward (cuda): bad sizes");
  PYAEPLUS_CHECK(grad != 0 && idx != 0 && out != 0, "topk_backward (cuda): null pointer");
  if (B == 0) return;
  PYAEPLUS_CUDA_DISPATCH_FLOATING(dtype, "topk_backward", [&] {
    topk_bwd_kernel<scalar_t><<<static_cast<unsigned>(B), threads_for(D), 0, as_stream(stream)>>>(
        as_ptr<const scalar_t>(grad), sg0, gather, as_ptr<const scalar_t>(mask), sm0, as_ptr<const int64_t>(idx), k,
        D, as_ptr<scalar_t>(out));
    PYAEPLUS_CUDA_CHECK_LAUNCH();
  });
}

void bind_topk(py::module_& m) {
  m.def("topk_forward", &topk_forward, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("B"),
        py::arg("D"), py::arg("sx0"), py::arg("k"), py::arg("relu"), py::arg("dtype"), py::arg("vals"),
        py::arg("idx"), py::arg("y"), py::arg("stream"),
        "Per-row top-k of x [B, D] on the given stream. y != 0: dense y and indices in index order. "
        "Else returns True when (values, indices) are ordered (k <= 256), False when only the "
        "indices were written, in index order (the caller sorts).");
  m.attr("TOPK_SORT_MAX") = kSortMax;
  m.def("topk_backward", &topk_backward, py::call_guard<py::gil_scoped_release>(), py::arg("grad"), py::arg("sg0"),
        py::arg("gather"), py::arg("mask"), py::arg("sm0"), py::arg("idx"), py::arg("B"), py::arg("k"), py::arg("D"),
        py::arg("dtype"), py::arg("out"), py::arg("stream"),
        "grad_x [B, D]: zeros except the k selected columns per row (one pass).");
}

}  // namespace
PYAEPLUS_REGISTER(topk, bind_topk);
}  // namespace pyaeplus
