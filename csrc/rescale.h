// DeepLIFT's Rescale multiplier for the ReLU family (relu: slope 0, leaky_relu: slope s), per
// element, shared by the CPU (csrc/cpu/rescale_kernels.cpp) and CUDA (csrc/cuda/rescale_kernels.cu)
// kernels so both compute the same float32 operations in the same order (see
// fastxai/reference/rescale.py):
//
//   f(v) = v > 0 ? v : slope * v,   gap = a - b
//   m    = f'(a) = (a > 0 ? 1 : slope)      where |gap| < eps
//        = (f(a) - f(b)) / gap              elsewhere
//
// a is the input's pre-activation, b its baseline's; rescale_backward's output is grad * m
// (backward). Torch-free.
#pragma once

#include "float32.h"

namespace fastxai {
namespace rescale {

FASTXAI_HD float relu_multiplier(float a, float b, float slope, float eps) {
  const float fa = a > 0.0f ? a : float32::fmul(a, slope);
  const float fb = b > 0.0f ? b : float32::fmul(b, slope);
  const float gap = float32::fsub(a, b);
  const float quotient = float32::fdiv(float32::fsub(fa, fb), gap);
  const float derivative = a > 0.0f ? 1.0f : slope;
  // |gap| < eps without fabs (one compare pair, NaN goes to the quotient as in the reference).
  return (gap < eps && gap > -eps) ? derivative : quotient;
}

// rescale_backward of one element: grad * m.
FASTXAI_HD float backward(float grad, float a, float b, float slope, float eps) {
  return float32::fmul(grad, relu_multiplier(a, b, slope, eps));
}

}  // namespace rescale
}  // namespace fastxai
