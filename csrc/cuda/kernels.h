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
