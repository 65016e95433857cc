// Top-k sparse activation, CPU kernels (OpenMP over rows).
//
// Selection per row is a threshold-filtered scan: a candidate buffer holds the best k entries
// seen so far plus newcomers; its k-th entry is the threshold. Blocks of 16 elements are
// turned into order-preserving integer keys and compared against the threshold in one
// vectorizable pass; only a block with an element above the threshold is looked at again.
// For random data only about k*ln(D/k) elements ever enter the buffer, so the cost is one
// streaming read of the row. The buffer is compacted (nth_element) when it fills up, which
// keeps adversarial orders (ascending rows) linear in D too.
//
// Order: key descending, then index ascending (lowest index wins ties). Keys: -0.0 and +0.0
// map to the same key, NaN (any sign/payload) to the largest key (torch.topk's convention).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <type_traits>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <immintrin.h>
#endif

#include "common.h"
#include "cpu_dispatch.h"
#include "parallel.h"
#include "registry.h"

namespace py = pybind11;

namespace pyaeplus {
namespace {

// Order-preserving signed integer key of a float (integer ops only, so that the filter loop
// vectorizes): positive floats keep their bits, negative ones flip the magnitude bits.
// -0.0 maps to +0.0's key; every NaN to the largest key.
inline int32_t key_bits32(uint32_t u) {
  u = (u == 0x80000000u) ? 0u : u;
  const int32_t s = static_cast<int32_t>(u);
  const int32_t k = s ^ ((s >> 31) & 0x7FFFFFFF);
  return ((u & 0x7FFFFFFFu) > 0x7F800000u) ? INT32_MAX : k;
}

inline int64_t key_bits64(uint64_t u) {
  u = (u == 0x8000000000000000ull) ? 0ull : u;
  const int64_t s = static_cast<int64_t>(u);
  const int64_t k = s ^ ((s >> 63) & INT64_MAX);
  return ((u & 0x7FFFFFFFFFFFFFFFull) > 0x7FF0000000000000ull) ? INT64_MAX : k;
}

template <typename T>
struct KeyType { using type = int32_t; };
template <>
struct KeyType<double> { using type = int64_t; };

inline int32_t key_of(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return key_bits32(u);
}
inline int32_t key_of(bf16 v) { return key_bits32(static_cast<uint32_t>(v.bits) << 16); }
inline int32_t key_of(fp16 v) { return key_of(to_float(v)); }
inline int64_t key_of(double v) {
  uint64_t u;
  std::memcpy(&u, &v, 8);
  return key_bits64(u);
}

// Zero `bytes` at p. Outputs much larger than the caches (`stream`) are zeroed with
// non-temporal stores: a regular store first reads the line it writes (read-for-ownership),
// so streaming halves the memory traffic of the zero-fill, which dominates a dense top-k
// and its backward. The fence orders the streamed zeros before the k regular stores that
// follow into the same row.
inline void zero_fill(void* p, size_t bytes, bool stream) {
#if defined(__SSE2__)
  if (stream) {
    char* c = static_cast<char*>(p);
    size_t head = (16 - (reinterpret_cast<uintptr_t>(c) & 15u)) & 15u;
    head = std::min(head, bytes);
    std::memset(c, 0, head);
    c += head;
    bytes -= head;
    const size_t n = bytes / 16;
    const __m128i z = _mm_setzero_si128();
    for (size_t i = 0; i < n; ++i) _mm_stream_si128(reinterpret_cast<__m128i*>(c) + i, z);
    std::memset(c + n * 16, 0, bytes - n * 16);
    _mm_sfence();
    return;
  }
#endif
  (void)stream;
  std::memset(p, 0, bytes);
}

// Above this many output bytes the zero-fill streams past the caches.
constexpr int64_t kStreamBytes = 16 << 20;

constexpr int kBlockAvx = 32;  // == kBlock below
#ifdef PYAEPLUS_X86_DISPATCH
#define PYAEPLUS_TOPK_AVX2 1
// The block-maximum pass is the whole cost of a small-k selection (every element is read
// once, ~7 integer ops each). Written with AVX2 intrinsics in a function compiled for AVX2 and
// picked at run time, so the wheel stays portable: 8 float keys (16 bf16 keys) per instruction
// instead of 1. Produces exactly the maximum of key_of over each block (-0 -> +0's key, NaN ->
// INT32_MAX).
//
// bf16 keys are the same map on the 16 stored bits (the float's low half is zero);
// widen_key16 turns a block's maximum 16-bit key into the int32 key of that element: a
// positive element's key is its bits << 16, a negative one's has 0xFFFF in the low half (the
// magnitude bits are flipped), NaN is INT32_MAX. The widening is increasing, so it commutes
// with the maximum.
inline int32_t widen_key16(int16_t k) {
  if (k == INT16_MAX) return INT32_MAX;
  const uint32_t hi = static_cast<uint32_t>(static_cast<uint16_t>(k)) << 16;
  return static_cast<int32_t>(k >= 0 ? hi : hi | 0xFFFFu);
}

// The lane operations on 32-bit (float) or 16-bit (bf16) keys.
#define PYAEPLUS_AVX2_FN __attribute__((target("avx2"))) static
template <int Bits>
struct KeyLanes {
  using elem = std::conditional_t<Bits == 32, float, bf16>;
  static constexpr int kStep = 256 / Bits;  // elements per vector
  static constexpr uint32_t kSign = 1u << (Bits - 1), kMag = kSign - 1, kInf = Bits == 32 ? 0x7F800000u : 0x7F80u;
  PYAEPLUS_AVX2_FN __m256i set(uint32_t v) {
    if constexpr (Bits == 32) return _mm256_set1_epi32(static_cast<int32_t>(v));
    else return _mm256_set1_epi16(static_cast<int16_t>(static_cast<uint16_t>(v)));
  }
// A two-operand lane operation: the 32-bit intrinsic or the 16-bit one.
#define PYAEPLUS_LANE_OP2(V, name, op32, op16) \
  PYAEPLUS_AVX2_FN V name(V a, V b) {             \
    if constexpr (Bits == 32) return op32(a, b);  \
    else return op16(a, b);                       \
  }
  PYAEPLUS_LANE_OP2(__m256i, eq, _mm256_cmpeq_epi32, _mm256_cmpeq_epi16)
  PYAEPLUS_LANE_OP2(__m256i, gt, _mm256_cmpgt_epi32, _mm256_cmpgt_epi16)
  PYAEPLUS_LANE_OP2(__m256i, max, _mm256_max_epi32, _mm256_max_epi16)
  PYAEPLUS_LANE_OP2(__m128i, max128, _mm_max_epi32, _mm_max_epi16)
#undef PYAEPLUS_LANE_OP2
  PYAEPLUS_AVX2_FN __m256i sign_mask(__m256i v) {
    if constexpr (Bits == 32) return _mm256_srai_epi32(v, 31);
    else return _mm256_srai_epi16(v, 15);
  }
  PYAEPLUS_AVX2_FN int32_t hmax(__m256i m) {
    __m128i h = max128(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = max128(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
    h = max128(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
    if constexpr (Bits == 32) return _mm_cvtsi128_si32(h);
    h = max128(h, _mm_srli_epi32(h, 16));
    return widen_key16(static_cast<int16_t>(_mm_extract_epi16(h, 0)));
  }
};
#undef PYAEPLUS_AVX2_FN

// x: [nb * 32], one block of 32 per output key.
template <typename Ln>
__attribute__((target("avx2"))) void block_max_keys_avx2(const typename Ln::elem* x, int64_t nb, int32_t* out) {
  const __m256i sign = Ln::set(Ln::kSign), mag = Ln::set(Ln::kMag), inf = Ln::set(Ln::kInf);
  for (int64_t b = 0; b < nb; ++b) {
    const typename Ln::elem* xb = x + b * kBlockAvx;
    __m256i m = Ln::set(Ln::kSign);  // the smallest key
    for (int j = 0; j < kBlockAvx; j += Ln::kStep) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + j));
      v = _mm256_andnot_si256(Ln::eq(v, sign), v);  // -0.0 -> +0.0
      const __m256i a = _mm256_and_si256(v, mag);
      __m256i k = _mm256_xor_si256(v, _mm256_and_si256(Ln::sign_mask(v), mag));
      k = _mm256_blendv_epi8(k, mag, Ln::gt(a, inf));  // NaN -> the largest key
      m = Ln::max(m, k);
    }
    out[b] = Ln::hmax(m);
  }
}

#endif

template <typename K>
struct Cand {
  K key;
  int64_t idx;
};

template <typename K>
inline bool before(const Cand<K>& a, const Cand<K>& b) {
  return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}

constexpr int64_t kBlock = 32;
static_assert(kBlock == kBlockAvx, "the AVX2 block-max pass assumes 32-element blocks");

// Small k (D / kBlock >= 4k): block maxima. Pass 1 (vectorizable) takes the max key of
// each block of kBlock elements; the k-th largest block max t is a threshold that at least
// k elements reach, and every element >= t sits in a block whose max is >= t, so only those
// (about k) blocks are read again to collect the candidates (all elements with key >= t).
template <typename T, typename K = typename KeyType<T>::type>
void select_row_blockmax(const T* x, int64_t D, int64_t k, std::vector<Cand<K>>& buf, std::vector<K>& bmax,
                         std::vector<K>& tmp) {
  const int64_t nb = D / kBlock;
  bmax.resize(static_cast<size_t>(nb));
  bool done = false;
#ifdef PYAEPLUS_TOPK_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2()) {
      block_max_keys_avx2<KeyLanes<32>>(x, nb, bmax.data());
      done = true;
    }
  } else if constexpr (std::is_same_v<T, bf16>) {
    if (cpu_has_avx2()) {
      block_max_keys_avx2<KeyLanes<16>>(x, nb, bmax.data());
      done = true;
    }
  }
#endif
  for (int64_t b = 0; !done && b < nb; ++b) {
    const T* xb = x + b * kBlock;
    K m = std::numeric_limits<K>::min();
    for (int64_t j = 0; j < kBlock; ++j) {
      const K v = key_of(xb[j]);
      m = v > m ? v : m;
    }
    bmax[b] = m;
  }
  tmp.assign(bmax.begin(), bmax.end());
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<K>());
  const K t = tmp[k - 1];
  for (int64_t b = 0; b < nb; ++b) {
    if (bmax[b] < t) continue;
    const T* xb = x + b * kBlock;
    for (int64_t j = 0; j < kBlock; ++j) {
      const K kk = key_of(xb[j]);
      if (kk >= t) buf.push_back({kk, b * kBlock + j});
    }
  }
  for (int64_t i = nb * kBlock; i < D; ++i) {  // the tail, shorter than a block
    const K kk = key_of(x[i]);
    if (kk >= t) buf.push_back({kk, i});
  }
  std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), before<K>);
  buf.resize(static_cast<size_t>(k));
}

// Select the top-k of one row (x: [D], unit stride) into buf[0..k) (unordered).
template <typename T, typename K = typename KeyType<T>::type>
void select_row(const T* x, int64_t D, int64_t k, std::vector<Cand<K>>& buf, std::vector<K>& bmax,
                std::vector<K>& tmp) {
  buf.clear();
  if (k >= D) {
    for (int64_t i = 0; i < D; ++i) buf.push_back({key_of(x[i]), i});
    return;
  }
  if (D / kBlock >= 4 * k) return select_row_blockmax<T>(x, D, k, buf, bmax, tmp);
  // Larger k: one streaming pass against a running threshold.
  const size_t cap = static_cast<size_t>(4 * k + 64);
  auto compact = [&]() -> K {
    std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end(), before<K>);
    // nth_element leaves the k best in [0, k) with the k-th at k-1.
    buf.resize(static_cast<size_t>(k));
    return buf[k - 1].key;
  };
  for (int64_t i = 0; i < k; ++i) buf.push_back({key_of(x[i]), i});
  K thr = compact();
  int64_t i = k;
  for (; i + kBlock <= D; i += kBlock) {
    // Vectorizable reduction: does any key of the block beat the threshold? A later element
    // equal to the threshold loses the tie (higher index), hence the strict compare. The
    // rare hit recomputes the block's keys.
    int any = 0;
    const T* xb = x + i;
    for (int64_t j = 0; j < kBlock; ++j) any |= static_cast<int>(key_of(xb[j]) > thr);
    if (!any) continue;
    for (int64_t j = 0; j < kBlock; ++j) {
      const K kk = key_of(xb[j]);
      if (kk > thr) buf.push_back({kk, i + j});
    }
    if (buf.size() >= cap) thr = compact();
  }
  for (; i < D; ++i) {
    const K kk = key_of(x[i]);
    if (kk > thr) buf.push_back({kk, i});
  }
  if (buf.size() > static_cast<size_t>(k)) compact();
}

// torch.relu's semantics: negatives -> +0; NaN and -0.0 pass through unchanged.
template <typename T>
inline T apply_relu(T v, bool relu) {
  return (relu && to_float(v) < 0.0f) ? from_float<T>(0.0f) : v;
}
template <>
inline double apply_relu<double>(double v, bool relu) { return (relu && v < 0.0) ? 0.0 : v; }

// x: [B, D] (row stride sx0, unit element stride).
// Sparse mode (y == nullptr): vals [B, k], idx [B, k] contiguous, sorted (value desc, index asc).
// Dense mode: y [B, D] contiguous with the selected values and zeros; idx [B, k] (any order);
// vals unused.
template <typename T>
void topk_forward_impl(const T* x, int64_t B, int64_t D, int64_t sx0, int64_t k, bool relu, T* vals,
                       int64_t* idx, T* y) {
  using K = typename KeyType<T>::type;
  const bool stream = B * D * static_cast<int64_t>(sizeof(T)) > kStreamBytes;
  // Rows are independent; a grain of a few rows amortizes the thread start for small D.
  const int64_t grain = std::max<int64_t>(1, 131072 / std::max<int64_t>(D, 1));
  parallel_for(B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<Cand<K>> buf;
    std::vector<K> bmax, tmp;
    buf.reserve(static_cast<size_t>(std::min<int64_t>(D, 4 * k + 256 + kBlock)));
    for (int64_t r = b0; r < b1; ++r) {
      const T* xr = x + r * sx0;
      select_row<T>(xr, D, k, buf, bmax, tmp);
      int64_t* ir = idx + r * k;
      if (y == nullptr) {
        std::sort(buf.begin(), buf.end(), before<K>);
        T* vr = vals + r * k;
        for (int64_t j = 0; j < k; ++j) {
          ir[j] = buf[j].idx;
          vr[j] = apply_relu(xr[buf[j].idx], relu);
        }
      } else {
        // One pass over the output row: zeros, then the k values (still in cache).
        T* yr = y + r * D;
        zero_fill(yr, static_cast<size_t>(D) * sizeof(T), stream);
        for (int64_t j = 0; j < k; ++j) {
          const int64_t c = buf[j].idx;
          ir[j] = c;
          yr[c] = apply_relu(xr[c], relu);
        }
      }
    }
  });
}

// grad: [B, G] (row stride sg0), G = k (gather == false: grad_values) or D (gather == true:
// grad_y, read at the selected columns). mask: like grad (row stride sm0) or null; the
// gradient passes where mask > 0 (ReLU). idx: [B, k] contiguous. out: [B, D] contiguous.
// Returns false if an index is out of [0, D).
template <typename T>
bool topk_backward_impl(const T* grad, int64_t sg0, bool gather, const T* mask, int64_t sm0,
                        const int64_t* idx, int64_t B, int64_t k, int64_t D, T* out) {
  std::atomic<bool> ok{true};
  const bool stream = B * D * static_cast<int64_t>(sizeof(T)) > kStreamBytes;
  const int64_t grain = std::max<int64_t>(1, 131072 / std::max<int64_t>(D, 1));
  parallel_for(B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t r = b0; r < b1; ++r) {
      T* o = out + r * D;
      // Zero-fill and the k writes in the same pass over the row.
      zero_fill(o, static_cast<size_t>(D) * sizeof(T), stream);
      const int64_t* ir = idx + r * k;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = ir[j];
        if (c < 0 || c >= D) {
          ok.store(false, std::memory_order_relaxed);
          continue;
        }
        const int64_t src = gather ? c : j;
        T g = grad[r * sg0 + src];
        if (mask != nullptr && !(to_float(mask[r * sm0 + src]) > 0.0f)) g = from_float<T>(0.0f);
        o[c] = g;
      }
    }
  });
  return ok.load();
}

// float64 masks compare in double (a tiny positive double must not round to 0 in float).
template <>
bool topk_backward_impl<double>(const double* grad, int64_t sg0, bool gather, const double* mask, int64_t sm0,
                                const int64_t* idx, int64_t B, int64_t k, int64_t D, double* out) {
  std::atomic<bool> ok{true};
  const bool stream = B * D * static_cast<int64_t>(sizeof(double)) > kStreamBytes;
  const int64_t grain = std::max<int64_t>(1, 131072 / std::max<int64_t>(D, 1));
  parallel_for(B, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t r = b0; r < b1; ++r) {
      double* o = out + r * D;
      zero_fill(o, static_cast<size_t>(D) * sizeof(double), stream);
      const int64_t* ir = idx + r * k;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = ir[j];
        if (c < 0 || c >= D) {
          ok.store(false, std::memory_order_relaxed);
          continue;
        }
        const int64_t src = gather ? c : j;
        double g = grad[r * sg0 + src];
        if (mask != nullptr && !(mask[r * sm0 + src] > 0.0)) g = 0.0;
        o[c] = g;
      }
    }
  });
  return ok.load();
}

void topk_forward(uintptr_t x, int64_t B, int64_t D, int64_t sx0, int64_t k, bool relu, int dtype, uintptr_t vals,
                  uintptr_t idx, uintptr_t y) {
  PYAEPLUS_CHECK(B >= 0 && D >= 1 && k >= 1 && k <= D, "topk_forward: need D >= 1 and 1 <= k <= D");
  PYAEPLUS_CHECK(x != 0 && idx != 0 && (vals != 0 || y != 0), "topk_forward: null pointer");
  PYAEPLUS_DISPATCH_FLOATING(dtype, "topk_forward", [&] {
    topk_forward_impl<scalar_t>(as_ptr<const scalar_t>(x), B, D, sx0, k, relu, as_ptr<scalar_t>(vals),
                                as_ptr<int64_t>(idx), as_ptr<scalar_t>(y));
  });
}

void topk_backward(uintptr_t grad, int64_t sg0, bool gather, uintptr_t mask, int64_t sm0, uintptr_t idx, int64_t B,
                   int64_t k, int64_t D, int dtype, uintptr_t out) {
  PYAEPLUS_CHECK(B >= 0 && D >= 1 && k >= 0 && k <= D, "topk_backward: need D >= 1 and 0 <= k <= D");
  PYAEPLUS_CHECK(grad != 0 && idx != 0 && out != 0, "topk_backward: null pointer");
  const bool ok = PYAEPLUS_DISPATCH_FLOATING(dtype, "topk_backward", [&] {
    return topk_backward_impl<scalar_t>(as_ptr<const scalar_t>(grad), sg0, gather, as_ptr<const scalar_t>(mask), sm0,
                                        as_ptr<const int64_t>(idx), B, k, D, as_ptr<scalar_t>(out));
  });
  PYAEPLUS_CHECK(ok, "topk_backward: an index is outside [0, D)");
}

void bind_topk(py::module_& m) {
  m.def("topk_forward", &topk_forward, py::call_guard<py::gil_scoped_release>(), py::arg("x"), py::arg("B"),
        py::arg("D"), py::arg("sx0"), py::arg("k"), py::arg("relu"), py::arg("dtype"), py::arg("vals"),
        py::arg("idx"), py::arg("y"),
        "Per-row top-k of x [B, D] (row stride sx0, unit element stride). y == 0: sorted "
        "(values [B, k], indices [B, k]); else dense y [B, D] and unordered indices.");
  m.def("topk_backward", &topk_backward, py::call_guard<py::gil_scoped_release>(), py::arg("grad"), py::arg("sg0"),
        py::arg("gather"), py::arg("mask"), py::arg("sm0"), py::arg("idx"), py::arg("B"), py::arg("k"), py::arg("D"),
        py::arg("dtype"), py::arg("out"),
        "grad_x [B, D]: zeros except the k selected columns per row, from grad [B, k] or, with "
        "gather, grad [B, D] read at the indices; masked by mask > 0 when mask != 0.");
}

}  // namespace
PYAEPLUS_REGISTER(topk, bind_topk);
}  // namespace pyaeplus
