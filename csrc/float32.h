// Correctly rounded float32 arithmetic on the host and the device: the one place where the
// kernels' shared functions (csrc/philox.h, elementwise.h, pgd.h, rescale.h) turn into machine
// operations.
//
// On the device each operation is the round-to-nearest intrinsic (__fadd_rn, __fmul_rn, ...),
// which nvcc never contracts into an FMA nor replaces with an approximation; on the host it is
// the plain operator, and the CPU kernels are compiled with -ffp-contract=off (CMakeLists.txt)
// and -fno-math-errno (so sqrt is one instruction). Either way every call is one IEEE float32
// operation, so a function written with these gives the same bits on the CPU and the GPU, and
// inlined into a branch-free CPU loop it still vectorises. Torch-free and CUDA-header-free.
#pragma once

#include <stdint.h>

// A function shared by the CPU and CUDA kernels: inlined into both.
#if defined(__CUDACC__)
#define FASTXAI_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define FASTXAI_HD inline __attribute__((always_inline))
#else
#define FASTXAI_HD inline
#endif

#if !defined(__CUDA_ARCH__)
#include <string.h>
#endif

namespace fastxai {
namespace float32 {

FASTXAI_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FASTXAI_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

FASTXAI_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

FASTXAI_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

FASTXAI_HD float fsqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return __builtin_sqrtf(a);  // compile with -fno-math-errno so this is one instruction
#endif
}

FASTXAI_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

FASTXAI_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

}  // namespace float32
}  // namespace fastxai
