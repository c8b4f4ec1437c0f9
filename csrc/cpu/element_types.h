// Element types and block helpers shared by the CPU kernel files (kernels.cpp,
// attribution_kernels.cpp): the multiversioning macros, float16 / bfloat16 <-> float32
// conversion of rows, and the block size of the work split. Everything has internal linkage
// (an anonymous namespace), so each kernel file gets its own copies, compiled for its targets.
#pragma once

#include <algorithm>
#include <cstdint>

#include "float32.h"

// Function multiversioning (x86-64 + glibc ifunc, GCC >= 12): every block kernel exists for
// baseline x86-64 (SSE2), x86-64-v3 (AVX2, F16C) and x86-64-v4 (AVX-512); the loader picks
// one for the CPU. Define FASTXAI_NO_MULTIVERSION to build only the baseline.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    !defined(FASTXAI_NO_MULTIVERSION)
#define FASTXAI_MULTIVERSION 1
#define FASTXAI_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define FASTXAI_MULTIVERSION 0
#define FASTXAI_CLONES
#endif

// float16 with hardware conversions (F16C) in the x86-64-v3/v4 versions; the baseline uses the
// branch-free bit arithmetic of Float16 below.
#if FASTXAI_MULTIVERSION
#define FASTXAI_F16C_VERSIONS 1
#include <immintrin.h>
#else
#define FASTXAI_F16C_VERSIONS 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTXAI_INLINE inline __attribute__((always_inline))
#define FASTXAI_RESTRICT __restrict__
#else
#define FASTXAI_INLINE inline
#define FASTXAI_RESTRICT
#endif

namespace fastxai {
namespace cpu {
namespace {

using float32::bits_float;
using float32::float_bits;

// Elements per block: the working set of one block (a few float32 arrays of this size) stays
// in L1/L2 while it is reused across samples or steps.
constexpr int64_t kBlock = 1024;
// Rough number of element operations below which a call stays on one thread.
constexpr int64_t kMinWorkPerThread = 1 << 15;

inline int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kMinWorkPerThread / std::max<int64_t>(1, work_per_task));
}

// ---- element types ----------------------------------------------------------------------------
// Each converts rows of its storage to float32 (to_float) and back with rounding to nearest even
// (from_float); the kernels below compute in float32 arrays. Float32 is used in place.

struct Float32 {
  using Storage = float;
  static constexpr bool kFloat = true;
};

// IEEE binary16 <-> binary32 (branch-free bit arithmetic after Maratyszcza/FP16, as in c10).
struct Float16 {
  using Storage = uint16_t;
  static constexpr bool kFloat = false;
  static FASTXAI_INLINE float load(uint16_t h) {
    const uint32_t w = static_cast<uint32_t>(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = bits_float((two_w >> 4) + (0xE0u << 23)) * bits_float(15u << 23);
    const float denormalized = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t denormal_mask = 0u - static_cast<uint32_t>(two_w < (1u << 27));  // select without a branch
    const uint32_t magnitude =
        (float_bits(denormalized) & denormal_mask) | (float_bits(normalized) & ~denormal_mask);
    return bits_float(sign | magnitude);
  }
  static FASTXAI_INLINE uint16_t store(float f) {
    const float scale_to_inf = bits_float(239u << 23);   // 2^112
    const float scale_to_zero = bits_float(17u << 23);   // 2^-110
    const uint32_t w = float_bits(f);
    float base = (bits_float(w & 0x7fffffffu) * scale_to_inf) * scale_to_zero;
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = std::max(bias, 0x71000000u);
    base = bits_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = float_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    const uint32_t nan_mask = 0u - static_cast<uint32_t>(shl1_w > 0xFF000000u);
    return static_cast<uint16_t>((sign >> 16) | (0x7E00u & nan_mask) | (nonsign & ~nan_mask));
  }
  static FASTXAI_INLINE void to_float(const uint16_t* FASTXAI_RESTRICT src, float* FASTXAI_RESTRICT dst,
                                      int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = load(src[i]);
  }
  static FASTXAI_INLINE void from_float(const float* FASTXAI_RESTRICT src, uint16_t* FASTXAI_RESTRICT dst,
                                        int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = store(src[i]);
  }
};

// bfloat16: the upper half of a float32; rounding to nearest even, NaN kept quiet.
struct BFloat16 {
  using Storage = uint16_t;
  static constexpr bool kFloat = false;
  static FASTXAI_INLINE float load(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }
  static FASTXAI_INLINE uint16_t store(float f) {
    const uint32_t u = float_bits(f);
    const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
    const uint32_t nan_mask = 0u - static_cast<uint32_t>((u & 0x7fffffffu) > 0x7f800000u);
    return static_cast<uint16_t>((0x7FC0u & nan_mask) | (rounded & ~nan_mask));
  }
  static FASTXAI_INLINE void to_float(const uint16_t* FASTXAI_RESTRICT src, float* FASTXAI_RESTRICT dst,
                                      int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = load(src[i]);
  }
  static FASTXAI_INLINE void from_float(const float* FASTXAI_RESTRICT src, uint16_t* FASTXAI_RESTRICT dst,
                                        int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = store(src[i]);
  }
};

#if FASTXAI_F16C_VERSIONS
// float16 with the F16C conversion instructions (8 per instruction, round to nearest even), the
// same results as Float16. One struct per target, used only by the block kernels compiled for
// that target, which are flattened (everything inlined into them) so these get inlined too.
#define FASTXAI_DEFINE_F16C_TYPE(Name, TARGET)                                                           \
  struct Name {                                                                                          \
    using Storage = uint16_t;                                                                            \
    static constexpr bool kFloat = false;                                                                \
    __attribute__((target(TARGET))) static inline void to_float(const uint16_t* src, float* dst, \
                                                                        int64_t n) {                     \
      int64_t i = 0;                                                                                     \
      for (; i + 8 <= n; i += 8) {                                                                       \
        const __m128i half8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));                \
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(half8));                                               \
      }                                                                                                  \
      for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);                                                     \
    }                                                                                                    \
    __attribute__((target(TARGET))) static inline void from_float(const float* src,             \
                                                                          uint16_t* dst, int64_t n) {   \
      int64_t i = 0;                                                                                     \
      for (; i + 8 <= n; i += 8) {                                                                       \
        const __m128i half8 =                                                                            \
            _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);    \
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), half8);                                    \
      }                                                                                                  \
      for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);      \
    }                                                                                                    \
  };
FASTXAI_DEFINE_F16C_TYPE(Float16X86V3, "arch=x86-64-v3")
FASTXAI_DEFINE_F16C_TYPE(Float16X86V4, "arch=x86-64-v4")
#undef FASTXAI_DEFINE_F16C_TYPE
#endif

// A row of n elements as float32: the row itself for Float32, else converted into `buffer`.
template <typename D>
FASTXAI_INLINE const float* as_float(const typename D::Storage* src, float* buffer, int64_t n) {
  if constexpr (D::kFloat) {
    (void)buffer;
    (void)n;
    return src;
  } else {
    D::to_float(src, buffer, n);
    return buffer;
  }
}

// Where to compute an output row in float32: the row itself for Float32, else `buffer`
// (then written back by flush).
template <typename D>
FASTXAI_INLINE float* output_row(typename D::Storage* dst, float* buffer) {
  if constexpr (D::kFloat) {
    (void)buffer;
    return dst;
  } else {
    (void)dst;
    return buffer;
  }
}

template <typename D>
FASTXAI_INLINE void flush(const float* buffer, typename D::Storage* dst, int64_t n) {
  if constexpr (!D::kFloat) D::from_float(buffer, dst, n);
}

}  // namespace
}  // namespace cpu
}  // namespace fastxai
