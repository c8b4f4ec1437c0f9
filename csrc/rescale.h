// DeepLIFT's Rescale multiplier for the ReLU family (relu: slope 0, leaky_relu: slope s), per
// element, shared by the CPU (csrc/cpu/rescale_kernels.cpp) and CUDA (csrc/cuda/rescale_kernels.cu)
// kernels so both compute the same float32 operations in the same order (see
// fastxai/reference/rescale.py):
//
//   f(v) = v > 0 ? v : slope * v,   gap = a - b
//   m    = f'(a) = (a > 0 ? 1 : slope)      where |gap| < eps
//        = (f(a) - f(b)) / gap              elsewhere
//
// a is the input's pre-activation, b its baseline's. Torch-free.
#pragma once

#include "philox.h"

namespace fastxai {
namespace rescale {

FASTXAI_HD float relu_multiplier(float a, float b, float slope, float eps) {
  const float fa = a > 0.0f ? a : philox::fmul(a, slope);
  const float fb = b > 0.0f ? b : philox::fmul(b, slope);
  const float gap = philox::fsub(a, b);
  const float quotient = philox::fdiv(philox::fsub(fa, fb), gap);
  const float derivative = a > 0.0f ? 1.0f : slope;
  // |gap| < eps without fabs (one compare pair, NaN goes to the quotient as in the reference).
  return (gap < eps && gap > -eps) ? derivative : quotient;
}

}  // namespace rescale
}  // namespace fastxai
