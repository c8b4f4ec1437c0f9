// The per-element arithmetic of the elementwise fused ops (gaussian_perturb, moment_accumulate,
// path_points, weighted_path_accumulate, masked_blend, lrp_divide, lrp_product), shared by the
// CPU kernels (csrc/cpu/*.cpp) and the CUDA kernels (csrc/cuda/*.cu): the CPU tests run the
// arithmetic the GPU runs. The kernels keep only what differs between the backends: indexing,
// the CPU's blocks of float32 rows, the GPU's threads and launches.
//
// Each function is the reference's float32 operations in the reference's order
// (fastxai/reference/ops.py) through csrc/float32.h (correctly rounded, never contracted into an
// FMA), and branch-free (selects only), so it vectorises when inlined into a CPU loop. Sums over
// samples or steps are the kernels' loops calling these in order. Torch-free.
#pragma once

#include "float32.h"

namespace fastxai {

// gaussian_perturb: out = x + sigma * z, z a normal of csrc/philox.h.
namespace noise {

FASTXAI_HD float perturbed(float x, float sigma, float z) { return float32::fadd(x, float32::fmul(sigma, z)); }

}  // namespace noise

// moment_accumulate: a = value (* multiplier); total += a, total_sq += a * a, samples in order.
namespace moments {

FASTXAI_HD float term(float value, float multiplier) { return float32::fmul(value, multiplier); }

FASTXAI_HD float add(float total, float a) { return float32::fadd(total, a); }

FASTXAI_HD float add_square(float total_sq, float a) { return float32::fadd(total_sq, float32::fmul(a, a)); }

}  // namespace moments

// path_points: out[k] = baseline + alphas[k] * (x - baseline); masked_blend is the same point
// with alpha = keep[group] (out = baseline + keep * (input - baseline)).
// weighted_path_accumulate: acc += weights[k] * grads[k], steps in order.
namespace path {

// x - baseline, once per element for all its points.
FASTXAI_HD float step(float x, float baseline) { return float32::fsub(x, baseline); }

// baseline + alpha * difference, difference = step(x, baseline).
FASTXAI_HD float point(float baseline, float alpha, float difference) {
  return float32::fadd(baseline, float32::fmul(alpha, difference));
}

FASTXAI_HD float accumulate(float acc, float weight, float grad) {
  return float32::fadd(acc, float32::fmul(weight, grad));
}

}  // namespace path

// LRP's two elementwise steps around the transposed layer ops (Bach et al. 2015).
namespace lrp {

// relevance / (z + (z >= 0 ? eps : -eps)), and 0 where that denominator is 0 (eps = 0, z = 0).
FASTXAI_HD float divide(float relevance, float z, float eps) {
  const float denominator = z >= 0.0f ? float32::fadd(z, eps) : float32::fsub(z, eps);
  const float quotient = float32::fdiv(relevance, denominator);
  return denominator == 0.0f ? 0.0f : quotient;
}

// activation * c: the epsilon rule's relevance, or the alpha-beta rule's with c = alpha_beta(...).
FASTXAI_HD float product(float activation, float c) { return float32::fmul(activation, c); }

// alpha * c - beta * c_neg: the alpha-beta rule's factor from its positive and negative parts.
FASTXAI_HD float alpha_beta(float c, float c_neg, float alpha, float beta) {
  return float32::fsub(float32::fmul(alpha, c), float32::fmul(beta, c_neg));
}

}  // namespace lrp
}  // namespace fastxai
