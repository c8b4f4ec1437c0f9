// CUDA kernels of the fused ops on raw, contiguous device buffers (see fastxai/reference/ops.py).
//
// Torch-free: the host code in ops_cuda.cpp validates arguments, picks the stream and checks
// the returned error. Buffers of dtype kFloat16 / kBFloat16 hold __half / __nv_bfloat16;
// accumulators, sigma, alphas, weights, step sizes and radii are float32. Each launcher enqueues its kernel on
// `stream` for the current device and returns cudaGetLastError() (cudaSuccess when there is
// nothing to do).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "dtype.h"

namespace fastxai {
namespace cuda {

// out[s, b, j] = x[b, j] + sigma[b] * N(seed; sample_offset + s, batch_offset + b, j).
// x: [batch, features]; out: [n_samples, batch, features].
cudaError_t launch_gaussian_perturb(Dtype dtype, const void* x, const float* sigma, void* out, int64_t batch,
                                    int64_t features, uint64_t seed, uint32_t sample_offset, int64_t n_samples,
                                    uint32_t batch_offset, cudaStream_t stream);

// total[e] += sum_s a, total_sq[e] += sum_s a * a (samples in order), a = values[s, e] (* multiplier[s, e]).
// total_sq and multiplier may be null.
cudaError_t launch_moment_accumulate(Dtype dtype, const void* values, const void* multiplier, float* total,
                                     float* total_sq, int64_t n, int64_t elements, cudaStream_t stream);

// out[k, e] = baseline[e] + alphas[k] * (x[e] - baseline[e]).
cudaError_t launch_path_points(Dtype dtype, const void* x, const void* baseline, const float* alphas, void* out,
                               int64_t steps, int64_t elements, cudaStream_t stream);

// acc[b, f] += sum_k weights[k, b] * grads[k, b, f] (steps in order).
cudaError_t launch_weighted_path_accumulate(Dtype dtype, const void* grads, const float* weights, float* acc,
                                            int64_t steps, int64_t batch, int64_t features, cudaStream_t stream);

// One projected gradient step per row b (see fastxai/reference/ops.py pgd_step), in float32:
//   kLinf: s = x_adv + step_size[b] * sign(grad); d = min(max(s - x_orig, -eps[b]), eps[b]);
//   kL2:   s = x_adv + step_size[b] * (grad / (||grad[b]|| + 1e-10)); d = s - x_orig;
//          d = d * (||d|| > eps[b] ? eps[b] / ||d|| : 1);
//   out = min(max(x_orig + d, lower), upper).
// x_adv, grad, x_orig, out: [batch, features]; step_size, eps: [batch].
cudaError_t launch_pgd_step(Dtype dtype, PgdNorm norm, const void* x_adv, const void* grad, const void* x_orig,
                            const float* step_size, const float* eps, void* out, float lower, float upper,
                            int64_t batch, int64_t features, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastxai

// ---- LRP and perturbation ops (attribution_kernels.cu) -----------------------------------------

namespace fastxai {
namespace cuda {

// Most feature dimensions launch_occlude handles (after dropping size-1 dimensions).
constexpr int kOccludeMaxDims = 8;

// out[i] = relevance[i] / d, d = z[i] + (z[i] >= 0 ? eps : -eps); out[i] = 0 where d == 0. [n]
cudaError_t launch_lrp_divide(Dtype dtype, const void* relevance, const void* z, void* out, float eps, int64_t n,
                              cudaStream_t stream);

// out[i] = activation[i] * c[i], or activation[i] * (alpha * c[i] - beta * c_neg[i]) when c_neg is not null.
cudaError_t launch_lrp_product(Dtype dtype, const void* activation, const void* c, const void* c_neg, void* out,
                               float alpha, float beta, int64_t n, cudaStream_t stream);

// out[b, p, i] = baselines[b, i] + keep[b, p, mask[m, i]] * (inputs[b, i] - baselines[b, i]), m = b when
// per_input else 0; a group id outside [0, groups) gives NaN (the caller validates the mask).
// inputs, baselines: [batch, features]; keep: [batch, perturbations, groups]; out: [batch, perturbations, features],
// or [perturbations, batch, features] (out[p, b]) when copy_major.
cudaError_t launch_masked_blend(Dtype dtype, const void* inputs, const void* baselines, const int64_t* mask,
                                bool per_input, const float* keep, void* out, int64_t batch, int64_t perturbations,
                                int64_t groups, int64_t features, bool copy_major, cudaStream_t stream);

// out[b, p] = inputs[b] with window start + p (row-major over the window positions of the feature
// shape sizes[ndim]) taken from baselines[b]; see csrc/cpu/kernels.h. out: [batch, count, features], or
// [count, batch, features] (out[p, b]) when copy_major. Elements of element_size bytes (2 or 4) are
// copied. Returns cudaErrorNotSupported beyond kOccludeMaxDims dimensions.
cudaError_t launch_occlude(int64_t element_size, const void* inputs, const void* baselines, void* out,
                           int64_t batch, const int64_t* sizes, const int64_t* window, const int64_t* strides,
                           int64_t ndim, int64_t start, int64_t count, bool copy_major, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastxai

// ---- DeepLIFT's Rescale rule (rescale_kernels.cu) ----------------------------------------------

namespace fastxai {
namespace cuda {

// grad, x, reference, out: [numel] each (x the input's pre-activation, reference its baseline's).
// With m = rescale::relu_multiplier(x[i], reference[i], slope, eps) (csrc/rescale.h):
// out[i] = grad[i] * m.
cudaError_t launch_rescale_backward(Dtype dtype, const void* grad, const void* x, const void* reference, void* out,
                                    float slope, float eps, int64_t numel, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastxai
