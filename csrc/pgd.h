// The arithmetic of pgd_step (one projected gradient step per row, Madry et al. 2018), per element
// and per row, shared by the CPU kernel (csrc/cpu/kernels.cpp) and the CUDA kernels
// (csrc/cuda/kernels.cu). In float32, in the reference's order (fastxai/reference/ops.py):
//
//   linf: s = x_adv + alpha * sign(grad); d = min(max(s - x_orig, -eps), eps)
//   l2:   s = x_adv + alpha * (grad / (||grad|| + 1e-10)); d = s - x_orig;
//         d = d * (||d|| > eps ? eps / ||d|| : 1)
//   out = min(max(x_orig + d, lower), upper)
//
// with alpha = step_size[row], eps = eps[row]. What stays in the kernels is the order of the two
// l2 row sums (sum_of_squares terms added with add_square, partial sums with add): the CPU adds
// 16 running lanes per 1024-element chunk and the chunks in order, the GPU one running sum per
// thread, a warp butterfly and the warps in order; both differ from torch's order, so the l2 step
// agrees across backends to rounding, the linf step bit for bit. Torch-free.
#pragma once

#include "float32.h"

namespace fastxai {
namespace pgd {

// float32(1e-10), added to ||grad|| as the reference does.
constexpr float kDivisionEps = static_cast<float>(1e-10);

// max / min that return a NaN first operand, as torch.maximum, torch.minimum and torch.clamp do
// for the value being clamped (the bounds are never NaN); fmaxf / fminf would drop it. Selects,
// so they vectorise.
FASTXAI_HD float max_keep_nan(float a, float b) { return a < b ? b : a; }
FASTXAI_HD float min_keep_nan(float a, float b) { return b < a ? b : a; }

FASTXAI_HD float clamp(float value, float lower, float upper) {
  return min_keep_nan(max_keep_nan(value, lower), upper);
}

// torch.sign: 1, -1, or +0 for +-0 and NaN.
FASTXAI_HD float sign(float g) {
  return float32::fsub(static_cast<float>(g > 0.0f), static_cast<float>(g < 0.0f));
}

// The linf step of one element.
FASTXAI_HD float linf(float x_adv, float grad, float x_orig, float alpha, float radius, float lower, float upper) {
  const float stepped = float32::fadd(x_adv, float32::fmul(alpha, sign(grad)));
  const float delta = min_keep_nan(max_keep_nan(float32::fsub(stepped, x_orig), -radius), radius);
  return clamp(float32::fadd(x_orig, delta), lower, upper);
}

// ---- l2 -----------------------------------------------------------------------------------------

// A running sum of squares plus v * v.
FASTXAI_HD float add_square(float sum, float v) { return float32::fadd(sum, float32::fmul(v, v)); }

// Two partial sums of squares added.
FASTXAI_HD float add(float a, float b) { return float32::fadd(a, b); }

// ||grad|| + 1e-10 from the row's sum of grad^2.
FASTXAI_HD float grad_norm(float grad_sq) { return float32::fadd(float32::fsqrt(grad_sq), kDivisionEps); }

// d = (x_adv + alpha * (grad / grad_norm)) - x_orig: the l2 step of one element before projection.
// norm = grad_norm(...) of the row.
FASTXAI_HD float l2_delta(float x_adv, float grad, float x_orig, float alpha, float norm) {
  return float32::fsub(float32::fadd(x_adv, float32::fmul(alpha, float32::fdiv(grad, norm))), x_orig);
}

// The projection's factor from the row's sum of d^2: eps / ||d|| outside the ball, else 1.
FASTXAI_HD float l2_factor(float delta_sq, float radius) {
  const float delta_norm = float32::fsqrt(delta_sq);
  return delta_norm > radius ? float32::fdiv(radius, delta_norm) : 1.0f;
}

// clamp(x_orig + d * factor): the l2 step of one element after projection.
FASTXAI_HD float l2_apply(float x_orig, float delta, float factor, float lower, float upper) {
  return clamp(float32::fadd(x_orig, float32::fmul(delta, factor)), lower, upper);
}

}  // namespace pgd
}  // namespace fastxai
