// CPU kernels of the fused ops on raw, contiguous buffers (see fastxai/reference/ops.py).
//
// The caller (csrc/ops.cpp) validates shapes, dtypes, devices and contiguity; these functions
// assume all of it. Element buffers of dtype kFloat16 / kBFloat16 hold the 16-bit storage;
// accumulators, sigma, alphas and weights are float32. Work is split with at::parallel_for
// into blocks that own disjoint output elements.
#pragma once

#include <cstdint>

#include "dtype.h"

namespace fastxai {
namespace cpu {

// out[s, b, j] = x[b, j] + sigma[b] * N(seed; sample_offset + s, batch_offset + b, j).
// x: [batch, features]; out: [n_samples, batch, features].
void gaussian_perturb(Dtype dtype, const void* x, const float* sigma, void* out, int64_t batch,
                      int64_t features, uint64_t seed, uint32_t sample_offset, int64_t n_samples,
                      uint32_t batch_offset);

// total[e] += sum_s a, total_sq[e] += sum_s a * a (samples in order), a = values[s, e] (*
// multiplier[s, e]). values, multiplier: [n, elements]; total, total_sq: [elements].
// total_sq and multiplier may be null.
void moment_accumulate(Dtype dtype, const void* values, const void* multiplier, float* total,
                       float* total_sq, int64_t n, int64_t elements);

// out[k, e] = baseline[e] + alphas[k] * (x[e] - baseline[e]). x, baseline: [elements];
// out: [steps, elements].
void path_points(Dtype dtype, const void* x, const void* baseline, const float* alphas, void* out,
                 int64_t steps, int64_t elements);

// acc[b, f] += sum_k weights[k, b] * grads[k, b, f] (steps in order).
// grads: [steps, batch, features]; weights: [steps, batch]; acc: [batch, features].
void weighted_path_accumulate(Dtype dtype, const void* grads, const float* weights, float* acc,
                              int64_t steps, int64_t batch, int64_t features);

// One projected gradient step per row b, computed in float32 in the order of the reference:
//   kLinf: s = x_adv + step_size[b] * sign(grad); d = min(max(s - x_orig, -eps[b]), eps[b]);
//   kL2:   s = x_adv + step_size[b] * (grad / (||grad[b]|| + 1e-10)); d = s - x_orig;
//          d = d * (||d|| > eps[b] ? eps[b] / ||d|| : 1);
//   out = min(max(x_orig + d, lower), upper).
// x_adv, grad, x_orig, out: [batch, features]; step_size, eps: [batch].
void pgd_step(Dtype dtype, PgdNorm norm, const void* x_adv, const void* grad, const void* x_orig,
              const float* step_size, const float* eps, void* out, float lower, float upper, int64_t batch,
              int64_t features);

}  // namespace cpu
}  // namespace fastxai

// ---- LRP and perturbation ops (csrc/cpu/attribution_kernels.cpp) --------------------------------

namespace fastxai {
namespace cpu {

// out[i] = relevance[i] / d, d = z[i] + (z[i] >= 0 ? eps : -eps); out[i] = 0 where d == 0. [n]
void lrp_divide(Dtype dtype, const void* relevance, const void* z, void* out, float eps, int64_t n);

// out[i] = activation[i] * c[i], or activation[i] * (alpha * c[i] - beta * c_neg[i]) when c_neg
// is not null. [n]
void lrp_product(Dtype dtype, const void* activation, const void* c, const void* c_neg, void* out, float alpha,
                 float beta, int64_t n);

// out[b, p, i] = baselines[b, i] + keep[b, p, mask[m, i]] * (inputs[b, i] - baselines[b, i]),
// m = b for a per-input mask (per_input), else 0. inputs, baselines: [batch, features]; mask:
// [batch or 1, features] with values in [0, groups); keep: [batch, perturbations, groups];
// out: [batch, perturbations, features], or [perturbations, batch, features] (out[p, b]) when copy_major.
void masked_blend(Dtype dtype, const void* inputs, const void* baselines, const int64_t* mask, bool per_input,
                  const float* keep, void* out, int64_t batch, int64_t perturbations, int64_t groups,
                  int64_t features, bool copy_major);

// out[b, p] = inputs[b] with window start + p taken from baselines[b]. Feature shape sizes[ndim];
// along dimension d windows start at k * strides[d], k < positions[d] = (sizes[d] - window[d]) /
// strides[d] + 1, numbered row-major. inputs, baselines: [batch, prod(sizes)]; out: [batch,
// count, prod(sizes)], or [count, batch, prod(sizes)] (out[p, b]) when copy_major. Elements are
// copied (element_size bytes each), never computed.
void occlude(int64_t element_size, const void* inputs, const void* baselines, void* out, int64_t batch,
             const int64_t* sizes, const int64_t* window, const int64_t* strides, int64_t ndim, int64_t start,
             int64_t count, bool copy_major);

}  // namespace cpu
}  // namespace fastxai

// ---- DeepLIFT's Rescale rule (csrc/cpu/rescale_kernels.cpp) ------------------------------------

namespace fastxai {
namespace cpu {

// grad, x, reference, out: [numel] each (x the input's pre-activation, reference its baseline's).
// With m = rescale::relu_multiplier(x[i], reference[i], slope, eps) (csrc/rescale.h):
// out[i] = grad[i] * m.
void rescale_backward(Dtype dtype, const void* grad, const void* x, const void* reference, void* out, float slope,
                      float eps, int64_t numel);

}  // namespace cpu
}  // namespace fastxai
