// CUDA kernels of the fused ops. See kernels.h for the contract.
//
// One thread per output element (per group of four elements for the noise), grid-stride
// loops, 32-bit indices when every index fits and 64-bit ones otherwise. Every float32
// operation is a function of csrc/philox.h, csrc/elementwise.h or csrc/pgd.h, shared with the
// CPU kernels; on the device those use the correctly rounded intrinsics (csrc/float32.h), so no
// FMA contraction changes a result. This file only indexes, loads, stores and launches.
// Sequential sums (over samples or steps) run inside one thread in order, as on the CPU, so both
// backends give the same bits.
// The l2 pgd_step is the exception: one block per row, whose norms are block reductions (a
// summation order of its own, neither torch's nor the CPU kernel's; same float32 ops otherwise).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "elementwise.h"
#include "pgd.h"
#include "philox.h"

namespace fastxai {
namespace cuda {
namespace {

// Four consecutive elements, loaded and stored as one 8- or 16-byte access.
template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// ---- kernels ----------------------------------------------------------------------------------

// Thread item = one group of four elements of one (sample, row): idx = row_index * groups + group.
// kAligned: features % 4 == 0 and x, out aligned to 4 elements, so a group is one vector access.
template <typename T, typename Index, bool kAligned>
__global__ void __launch_bounds__(kThreads)
    gaussian_perturb_kernel(const T* __restrict__ x, const float* __restrict__ sigma, T* __restrict__ out,
                            Index batch, Index features, Index groups, Index items, uint32_t sample_offset,
                            uint32_t batch_offset, uint32_t k0, uint32_t k1) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index idx = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; idx < items; idx += stride) {
    const Index r = idx / groups;
    const Index g = idx - r * groups;
    const Index s = r / batch;
    const Index b = r - s * batch;
    uint32_t w[4];
    philox::draw4(static_cast<uint32_t>(g), sample_offset + static_cast<uint32_t>(s),
                  batch_offset + static_cast<uint32_t>(b), k0, k1, w[0], w[1], w[2], w[3]);
    float z[4];
    philox::box_muller(w[0], w[1], z[0], z[1]);
    philox::box_muller(w[2], w[3], z[2], z[3]);
    const float sg = sigma[b];
    const Index j = 4 * g;
    const T* xr = x + b * features;
    T* outr = out + r * features;
    if constexpr (kAligned) {
      const Vec4<T> in = *reinterpret_cast<const Vec4<T>*>(xr + j);
      Vec4<T> result;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        result.v[l] = Elem<T>::store(noise::perturbed(Elem<T>::load(in.v[l]), sg, z[l]));
      }
      *reinterpret_cast<Vec4<T>*>(outr + j) = result;
    } else {
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (j + l < features) {
          outr[j + l] = Elem<T>::store(noise::perturbed(Elem<T>::load(xr[j + l]), sg, z[l]));
        }
      }
    }
  }
}

template <typename T, typename Index, bool kSquares, bool kMultiplier>
__global__ void __launch_bounds__(kThreads)
    moment_accumulate_kernel(const T* __restrict__ values, const T* __restrict__ multiplier,
                             float* __restrict__ total, float* __restrict__ total_sq, Index n, Index elements) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index e = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; e < elements; e += stride) {
    float sum = total[e];
    float sum_sq = kSquares ? total_sq[e] : 0.0f;
    const T* v = values + e;
    const T* m = kMultiplier ? multiplier + e : nullptr;
#pragma unroll 4
    for (Index s = 0; s < n; ++s) {
      float a = Elem<T>::load(v[s * elements]);
      if (kMultiplier) a = moments::term(a, Elem<T>::load(m[s * elements]));
      sum = moments::add(sum, a);
      if (kSquares) sum_sq = moments::add_square(sum_sq, a);
    }
    total[e] = sum;
    if (kSquares) total_sq[e] = sum_sq;
  }
}

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    path_points_kernel(const T* __restrict__ x, const T* __restrict__ baseline, const float* __restrict__ alphas,
                       T* __restrict__ out, Index steps, Index elements) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index e = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; e < elements; e += stride) {
    const float start = Elem<T>::load(baseline[e]);
    const float difference = path::step(Elem<T>::load(x[e]), start);
#pragma unroll 4
    for (Index k = 0; k < steps; ++k) {
      out[k * elements + e] = Elem<T>::store(path::point(start, alphas[k], difference));
    }
  }
}

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    weighted_path_accumulate_kernel(const T* __restrict__ grads, const float* __restrict__ weights,
                                    float* __restrict__ acc, Index steps, Index batch, Index features) {
  const Index elements = batch * features;
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index e = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; e < elements; e += stride) {
    const Index b = e / features;
    float sum = acc[e];
#pragma unroll 4
    for (Index k = 0; k < steps; ++k) {
      sum = path::accumulate(sum, weights[k * batch + b], Elem<T>::load(grads[k * elements + e]));
    }
    acc[e] = sum;
  }
}

// ---- pgd_step ---------------------------------------------------------------------------------

constexpr int kRowThreads = 256;  // l2: threads of the block that owns a row
constexpr int kRowWarps = kRowThreads / 32;

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    pgd_linf_kernel(const T* __restrict__ x_adv, const T* __restrict__ grad, const T* __restrict__ x_orig,
                    const float* __restrict__ step_size, const float* __restrict__ eps, T* __restrict__ out,
                    float lower, float upper, Index features, Index elements) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index e = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; e < elements; e += stride) {
    const Index b = e / features;
    out[e] = Elem<T>::store(pgd::linf(Elem<T>::load(x_adv[e]), Elem<T>::load(grad[e]), Elem<T>::load(x_orig[e]),
                                      step_size[b], eps[b], lower, upper));
  }
}

// Sum of `value` over the block (kRowThreads threads), the same bits in every thread: a
// butterfly within each warp, then the warp sums in order (each addition pgd::add). `scratch`
// (kRowWarps floats of shared memory) is free again on return.
__device__ __forceinline__ float block_sum(float value, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = pgd::add(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  if ((threadIdx.x & 31u) == 0) scratch[threadIdx.x >> 5] = value;
  __syncthreads();
  float total = scratch[0];
#pragma unroll
  for (int w = 1; w < kRowWarps; ++w) total = pgd::add(total, scratch[w]);
  __syncthreads();
  return total;
}

// One block per row (grid-stride over rows), three passes over the row: ||grad||, ||d||, the
// update. Index: type of the indices within a row (features + kRowThreads fits in it).
template <typename T, typename Index>
__global__ void __launch_bounds__(kRowThreads)
    pgd_l2_kernel(const T* __restrict__ x_adv, const T* __restrict__ grad, const T* __restrict__ x_orig,
                  const float* __restrict__ step_size, const float* __restrict__ eps, T* __restrict__ out,
                  float lower, float upper, int64_t batch, Index features) {
  __shared__ float scratch[kRowWarps];
  const Index first = static_cast<Index>(threadIdx.x);
  for (int64_t row = blockIdx.x; row < batch; row += gridDim.x) {
    const int64_t offset = row * static_cast<int64_t>(features);
    const T* adv = x_adv + offset;
    const T* g = grad + offset;
    const T* orig = x_orig + offset;
    T* o = out + offset;
    float grad_sq = 0.0f;
    for (Index j = first; j < features; j += kRowThreads) grad_sq = pgd::add_square(grad_sq, Elem<T>::load(g[j]));
    const float grad_norm = pgd::grad_norm(block_sum(grad_sq, scratch));
    const float alpha = step_size[row];
    float delta_sq = 0.0f;
    for (Index j = first; j < features; j += kRowThreads) {
      const float d = pgd::l2_delta(Elem<T>::load(adv[j]), Elem<T>::load(g[j]), Elem<T>::load(orig[j]), alpha,
                                    grad_norm);
      delta_sq = pgd::add_square(delta_sq, d);
    }
    const float factor = pgd::l2_factor(block_sum(delta_sq, scratch), eps[row]);
    for (Index j = first; j < features; j += kRowThreads) {
      const float base = Elem<T>::load(orig[j]);
      const float d = pgd::l2_delta(Elem<T>::load(adv[j]), Elem<T>::load(g[j]), base, alpha, grad_norm);
      o[j] = Elem<T>::store(pgd::l2_apply(base, d, factor, lower, upper));
    }
  }
}

// ---- launch helpers ---------------------------------------------------------------------------

template <typename T>
cudaError_t gaussian_typed(const T* x, const float* sigma, T* out, int64_t batch, int64_t features, uint64_t seed,
                           uint32_t sample_offset, int64_t n_samples, uint32_t batch_offset, cudaStream_t stream) {
  const int64_t groups = (features + 3) / 4;
  const int64_t items = n_samples * batch * groups;
  if (items == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(items, &blocks);
  if (err != cudaSuccess) return err;
  uint32_t k0, k1;
  philox::key_words(seed, k0, k1);
  const bool aligned = features % 4 == 0 && reinterpret_cast<uintptr_t>(x) % (4 * sizeof(T)) == 0 &&
                       reinterpret_cast<uintptr_t>(out) % (4 * sizeof(T)) == 0;
  const bool small = fits_int32(n_samples * batch * features) && fits_int32(items);
  if (small) {
    using I = int32_t;
    if (aligned) {
      gaussian_perturb_kernel<T, I, true><<<blocks, kThreads, 0, stream>>>(
          x, sigma, out, static_cast<I>(batch), static_cast<I>(features), static_cast<I>(groups),
          static_cast<I>(items), sample_offset, batch_offset, k0, k1);
    } else {
      gaussian_perturb_kernel<T, I, false><<<blocks, kThreads, 0, stream>>>(
          x, sigma, out, static_cast<I>(batch), static_cast<I>(features), static_cast<I>(groups),
          static_cast<I>(items), sample_offset, batch_offset, k0, k1);
    }
  } else {
    using I = int64_t;
    if (aligned) {
      gaussian_perturb_kernel<T, I, true><<<blocks, kThreads, 0, stream>>>(
          x, sigma, out, batch, features, groups, items, sample_offset, batch_offset, k0, k1);
    } else {
      gaussian_perturb_kernel<T, I, false><<<blocks, kThreads, 0, stream>>>(
          x, sigma, out, batch, features, groups, items, sample_offset, batch_offset, k0, k1);
    }
  }
  return cudaGetLastError();
}

template <typename T, typename Index>
void moment_launch(unsigned int blocks, const T* values, const T* multiplier, float* total, float* total_sq,
                   Index n, Index elements, cudaStream_t stream) {
  if (total_sq != nullptr) {
    if (multiplier != nullptr) {
      moment_accumulate_kernel<T, Index, true, true>
          <<<blocks, kThreads, 0, stream>>>(values, multiplier, total, total_sq, n, elements);
    } else {
      moment_accumulate_kernel<T, Index, true, false>
          <<<blocks, kThreads, 0, stream>>>(values, multiplier, total, total_sq, n, elements);
    }
  } else if (multiplier != nullptr) {
    moment_accumulate_kernel<T, Index, false, true>
        <<<blocks, kThreads, 0, stream>>>(values, multiplier, total, total_sq, n, elements);
  } else {
    moment_accumulate_kernel<T, Index, false, false>
        <<<blocks, kThreads, 0, stream>>>(values, multiplier, total, total_sq, n, elements);
  }
}

template <typename T>
cudaError_t moment_typed(const T* values, const T* multiplier, float* total, float* total_sq, int64_t n,
                         int64_t elements, cudaStream_t stream) {
  if (n == 0 || elements == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(elements, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(n * elements)) {
    moment_launch<T, int32_t>(blocks, values, multiplier, total, total_sq, static_cast<int32_t>(n),
                              static_cast<int32_t>(elements), stream);
  } else {
    moment_launch<T, int64_t>(blocks, values, multiplier, total, total_sq, n, elements, stream);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t path_typed(const T* x, const T* baseline, const float* alphas, T* out, int64_t steps, int64_t elements,
                       cudaStream_t stream) {
  if (steps == 0 || elements == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(elements, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(steps * elements)) {
    path_points_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(
        x, baseline, alphas, out, static_cast<int32_t>(steps), static_cast<int32_t>(elements));
  } else {
    path_points_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(x, baseline, alphas, out, steps, elements);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t weighted_typed(const T* grads, const float* weights, float* acc, int64_t steps, int64_t batch,
                           int64_t features, cudaStream_t stream) {
  const int64_t elements = batch * features;
  if (steps == 0 || elements == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(elements, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(steps * elements)) {
    weighted_path_accumulate_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(
        grads, weights, acc, static_cast<int32_t>(steps), static_cast<int32_t>(batch),
        static_cast<int32_t>(features));
  } else {
    weighted_path_accumulate_kernel<T, int64_t>
        <<<blocks, kThreads, 0, stream>>>(grads, weights, acc, steps, batch, features);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t pgd_typed(PgdNorm norm, const T* x_adv, const T* grad, const T* x_orig, const float* step_size,
                      const float* eps, T* out, float lower, float upper, int64_t batch, int64_t features,
                      cudaStream_t stream) {
  const int64_t elements = batch * features;
  if (elements == 0) return cudaSuccess;
  if (norm == PgdNorm::kL2) {
    int64_t cap = 0;
    const cudaError_t err = block_cap(&cap);
    if (err != cudaSuccess) return err;
    const unsigned int blocks = static_cast<unsigned int>(batch < cap ? batch : cap);
    if (features + kRowThreads < (int64_t{1} << 31)) {
      pgd_l2_kernel<T, int32_t><<<blocks, kRowThreads, 0, stream>>>(
          x_adv, grad, x_orig, step_size, eps, out, lower, upper, batch, static_cast<int32_t>(features));
    } else {
      pgd_l2_kernel<T, int64_t>
          <<<blocks, kRowThreads, 0, stream>>>(x_adv, grad, x_orig, step_size, eps, out, lower, upper, batch, features);
    }
    return cudaGetLastError();
  }
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(elements, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(elements)) {
    pgd_linf_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(x_adv, grad, x_orig, step_size, eps, out, lower,
                                                                 upper, static_cast<int32_t>(features),
                                                                 static_cast<int32_t>(elements));
  } else {
    pgd_linf_kernel<T, int64_t>
        <<<blocks, kThreads, 0, stream>>>(x_adv, grad, x_orig, step_size, eps, out, lower, upper, features, elements);
  }
  return cudaGetLastError();
}

}  // namespace

// ---- launchers: dispatch on the element type -----------------------------------------------------

cudaError_t launch_gaussian_perturb(Dtype dtype, const void* x, const float* sigma, void* out, int64_t batch,
                                    int64_t features, uint64_t seed, uint32_t sample_offset, int64_t n_samples,
                                    uint32_t batch_offset, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return gaussian_typed(static_cast<const float*>(x), sigma, static_cast<float*>(out), batch, features, seed,
                            sample_offset, n_samples, batch_offset, stream);
    case Dtype::kFloat16:
      return gaussian_typed(static_cast<const __half*>(x), sigma, static_cast<__half*>(out), batch, features, seed,
                            sample_offset, n_samples, batch_offset, stream);
    case Dtype::kBFloat16:
      return gaussian_typed(static_cast<const __nv_bfloat16*>(x), sigma, static_cast<__nv_bfloat16*>(out), batch,
                            features, seed, sample_offset, n_samples, batch_offset, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_moment_accumulate(Dtype dtype, const void* values, const void* multiplier, float* total,
                                     float* total_sq, int64_t n, int64_t elements, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return moment_typed(static_cast<const float*>(values), static_cast<const float*>(multiplier), total,
                          total_sq, n, elements, stream);
    case Dtype::kFloat16:
      return moment_typed(static_cast<const __half*>(values), static_cast<const __half*>(multiplier), total,
                          total_sq, n, elements, stream);
    case Dtype::kBFloat16:
      return moment_typed(static_cast<const __nv_bfloat16*>(values), static_cast<const __nv_bfloat16*>(multiplier),
                          total, total_sq, n, elements, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_path_points(Dtype dtype, const void* x, const void* baseline, const float* alphas, void* out,
                               int64_t steps, int64_t elements, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return path_typed(static_cast<const float*>(x), static_cast<const float*>(baseline), alphas,
                        static_cast<float*>(out), steps, elements, stream);
    case Dtype::kFloat16:
      return path_typed(static_cast<const __half*>(x), static_cast<const __half*>(baseline), alphas,
                        static_cast<__half*>(out), steps, elements, stream);
    case Dtype::kBFloat16:
      return path_typed(static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(baseline), alphas,
                        static_cast<__nv_bfloat16*>(out), steps, elements, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_weighted_path_accumulate(Dtype dtype, const void* grads, const float* weights, float* acc,
                                            int64_t steps, int64_t batch, int64_t features, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return weighted_typed(static_cast<const float*>(grads), weights, acc, steps, batch, features, stream);
    case Dtype::kFloat16:
      return weighted_typed(static_cast<const __half*>(grads), weights, acc, steps, batch, features, stream);
    case Dtype::kBFloat16:
      return weighted_typed(static_cast<const __nv_bfloat16*>(grads), weights, acc, steps, batch, features,
                            stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_pgd_step(Dtype dtype, PgdNorm norm, const void* x_adv, const void* grad, const void* x_orig,
                            const float* step_size, const float* eps, void* out, float lower, float upper,
                            int64_t batch, int64_t features, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return pgd_typed(norm, static_cast<const float*>(x_adv), static_cast<const float*>(grad),
                       static_cast<const float*>(x_orig), step_size, eps, static_cast<float*>(out), lower, upper,
                       batch, features, stream);
    case Dtype::kFloat16:
      return pgd_typed(norm, static_cast<const __half*>(x_adv), static_cast<const __half*>(grad),
                       static_cast<const __half*>(x_orig), step_size, eps, static_cast<__half*>(out), lower, upper,
                       batch, features, stream);
    case Dtype::kBFloat16:
      return pgd_typed(norm, static_cast<const __nv_bfloat16*>(x_adv), static_cast<const __nv_bfloat16*>(grad),
                       static_cast<const __nv_bfloat16*>(x_orig), step_size, eps,
                       static_cast<__nv_bfloat16*>(out), lower, upper, batch, features, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastxai
