// Shared definitions for the torch-free compiled boundary. NO torch headers here.
//
// Python validates and allocates; it passes raw pointers (uintptr_t), sizes and strides
// (int64, in elements), a dtype code and, for CUDA, the stream handle, all as integers.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pyaeplus {

// Must match pyaeplus/_ext.py DTYPE_CODES.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3, kInt64 = 4, kInt32 = 5 };

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    case kFloat64: return "float64";
    case kInt64: return "int64";
    case kInt32: return "int32";
    default: return "unknown";
  }
}

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument("pyaeplus: " + msg); }

#define PYAEPLUS_CHECK(cond, msg) \
  do {                            \
    if (!(cond)) ::pyaeplus::fail(msg); \
  } while (0)

template <typename T>
inline T* as_ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// ---- 16-bit floating point storage types for the CPU kernels (fp32 arithmetic) ----------

struct bf16 {
  uint16_t bits;
};
struct fp16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float to_float(float v) { return v; }
inline float to_float(double v) { return static_cast<float>(v); }
inline float to_float(bf16 v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }
inline float to_float(fp16 v) {
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (mant << 13));  // inf / nan
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);  // +-0
    // subnormal: normalize
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3FFu;
    return bits_to_float(sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (mant << 13));
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// Round to nearest even, NaN stays NaN.
inline bf16 to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7FFFu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

inline fp16 to_fp16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t absu = u & 0x7FFFFFFFu;
  if (absu > 0x7F800000u) return fp16{static_cast<uint16_t>(sign | 0x7E00u)};   // nan
  if (absu >= 0x47800000u) return fp16{static_cast<uint16_t>(sign | 0x7C00u)};  // overflow -> inf
  if (absu < 0x38800000u) {                                                      // subnormal or zero
    if (absu < 0x33000000u) return fp16{static_cast<uint16_t>(sign)};
    const uint32_t e = absu >> 23;
    const uint32_t m = (absu & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return fp16{static_cast<uint16_t>(sign | r)};
  }
  uint32_t r = ((absu - 0x38000000u) >> 13);
  const uint32_t rem = absu & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return fp16{static_cast<uint16_t>(sign | r)};
}

template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline double from_float<double>(float v) { return v; }
template <>
inline bf16 from_float<bf16>(float v) { return to_bf16(v); }
template <>
inline fp16 from_float<fp16>(float v) { return to_fp16(v); }

// Accumulation type: fp32 for every storage type except float64, which stays float64
// (so float64 gradcheck through the CPU kernels is meaningful).
template <typename T>
struct acc_type { using type = float; };
template <>
struct acc_type<double> { using type = double; };
template <typename T>
using acc_t = typename acc_type<T>::type;

template <typename A, typename T>
inline A load_as(const T* p, int64_t i) {
  return static_cast<A>(to_float(p[i]));
}
template <>
inline double load_as<double, double>(const double* p, int64_t i) { return p[i]; }

template <typename T, typename A>
inline void store_from(T* p, int64_t i, A v) { p[i] = from_float<T>(static_cast<float>(v)); }
template <>
inline void store_from<double, double>(double* p, int64_t i, double v) { p[i] = v; }

// Calls f(int64_t{}) or f(int32_t{}) for an index dtype code (shared by the CPU and CUDA ops).
template <typename F>
void dispatch_index(int code, const char* name, F&& f) {
  if (code == kInt64) {
    f(int64_t{});
  } else if (code == kInt32) {
    f(int32_t{});
  } else {
    fail(std::string(name) + ": indices must be int64 or int32, got " + dtype_name(code));
  }
}

// Calls f.template operator()<T>() with the storage type for a floating dtype code.
#define PYAEPLUS_DISPATCH_FLOATING(code, NAME, ...)                         \
  [&] {                                                                    \
    switch (code) {                                                        \
      case ::pyaeplus::kFloat32: { using scalar_t = float; return __VA_ARGS__(); }     \
      case ::pyaeplus::kFloat64: { using scalar_t = double; return __VA_ARGS__(); }    \
      case ::pyaeplus::kBFloat16: { using scalar_t = ::pyaeplus::bf16; return __VA_ARGS__(); } \
      case ::pyaeplus::kFloat16: { using scalar_t = ::pyaeplus::fp16; return __VA_ARGS__(); }  \
      default: ::pyaeplus::fail(std::string(NAME) + ": unsupported dtype " + ::pyaeplus::dtype_name(code)); \
    }                                                                      \
  }()

}  // namespace pyaeplus
