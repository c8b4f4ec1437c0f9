// CUDA kernels of the LRP and perturbation ops (lrp_divide, lrp_product, masked_blend,
// occlude). See kernels.h for the contract.
//
// Grid-stride loops with 32-bit indices when every index fits, 64-bit ones otherwise. The
// float32 arithmetic is csrc/elementwise.h's, shared with the CPU kernels (correctly rounded
// intrinsics here, so no FMA contraction or approximate division changes a result: outputs
// equal the reference's bit for bit), and which elements an occlusion window covers follows
// csrc/occlusion.h; this file only indexes, loads, stores and launches. masked_blend and
// occlude give each thread one element of one input for a run of kPerturbationsPerThread
// consecutive perturbations: the input is read once for the run, and small inputs with many
// perturbations still fill the GPU. occlude copies elements (as 16- or 32-bit words), so it is
// exact in every dtype.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "elementwise.h"
#include "occlusion.h"

namespace fastxai {
namespace cuda {
namespace {

constexpr int64_t kPerturbationsPerThread = 8;

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    lrp_divide_kernel(const T* __restrict__ relevance, const T* __restrict__ z, T* __restrict__ out, float eps,
                      Index n) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    out[i] = Elem<T>::store(lrp::divide(Elem<T>::load(relevance[i]), Elem<T>::load(z[i]), eps));
  }
}

template <typename T, typename Index, bool kNegative>
__global__ void __launch_bounds__(kThreads)
    lrp_product_kernel(const T* __restrict__ activation, const T* __restrict__ c, const T* __restrict__ c_neg,
                       T* __restrict__ out, float alpha, float beta, Index n) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    float factor = Elem<T>::load(c[i]);
    if (kNegative) factor = lrp::alpha_beta(factor, Elem<T>::load(c_neg[i]), alpha, beta);
    out[i] = Elem<T>::store(lrp::product(Elem<T>::load(activation[i]), factor));
  }
}

// Item = (b, run of perturbations, feature i): idx = (b * runs + run) * features + i. out[b, p, i] is at
// b * out_batch_stride + p * out_copy_stride + i (input-major or copy-major, see masked_blend_typed).
template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    masked_blend_kernel(const T* __restrict__ inputs, const T* __restrict__ baselines,
                        const int64_t* __restrict__ mask, Index mask_batch_stride, const float* __restrict__ keep,
                        T* __restrict__ out, Index out_batch_stride, Index out_copy_stride, Index perturbations,
                        Index runs, Index groups, Index features, Index items) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index idx = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; idx < items; idx += stride) {
    const Index i = idx % features;
    const Index block = idx / features;
    const Index run = block % runs;
    const Index b = block / runs;
    const float start = Elem<T>::load(baselines[b * features + i]);
    const float difference = path::step(Elem<T>::load(inputs[b * features + i]), start);
    const int64_t group = mask[b * mask_batch_stride + i];
    const bool valid = group >= 0 && group < static_cast<int64_t>(groups);
    const Index p_begin = run * static_cast<Index>(kPerturbationsPerThread);
    const Index p_end = min(p_begin + static_cast<Index>(kPerturbationsPerThread), perturbations);
    for (Index p = p_begin; p < p_end; ++p) {
      const Index row = b * perturbations + p;
      const float weight = valid ? keep[row * groups + static_cast<Index>(group)] : __int_as_float(0x7fc00000);
      out[b * out_batch_stride + p * out_copy_stride + i] = Elem<T>::store(path::point(start, weight, difference));
    }
  }
}

// Feature geometry of occlude after simplification (see simplify below): ndim <= kOccludeMaxDims.
struct OccludeGeometry {
  int ndim;
  int64_t sizes[kOccludeMaxDims];
  int64_t window[kOccludeMaxDims];
  int64_t strides[kOccludeMaxDims];
  int64_t positions[kOccludeMaxDims];
};

// Item = (b, run of windows, feature i), and out[b, p, i] at b * out_batch_stride + p * out_copy_stride + i,
// as in masked_blend_kernel. W is a 16- or 32-bit word.
template <typename W, typename Index>
__global__ void __launch_bounds__(kThreads)
    occlude_kernel(const W* __restrict__ inputs, const W* __restrict__ baselines, W* __restrict__ out,
                   Index out_batch_stride, Index out_copy_stride, OccludeGeometry geometry, Index start, Index count,
                   Index runs, Index features, Index items) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index idx = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; idx < items; idx += stride) {
    const Index i = idx % features;
    const Index block = idx / features;
    const Index run = block % runs;
    const Index b = block / runs;
    const W value = inputs[b * features + i];
    const W replacement = baselines[b * features + i];
    Index coord[kOccludeMaxDims];
    Index rest = i;
    for (int d = geometry.ndim - 1; d >= 0; --d) {
      const Index size = static_cast<Index>(geometry.sizes[d]);
      coord[d] = rest % size;
      rest /= size;
    }
    const Index p_begin = run * static_cast<Index>(kPerturbationsPerThread);
    const Index p_end = min(p_begin + static_cast<Index>(kPerturbationsPerThread), count);
    for (Index p = p_begin; p < p_end; ++p) {
      Index number = start + p;
      bool inside = true;
      for (int d = geometry.ndim - 1; d >= 0; --d) {
        const Index low = occlusion::peel_start(number, static_cast<Index>(geometry.positions[d]),
                                                static_cast<Index>(geometry.strides[d]));
        inside = inside && coord[d] >= low && coord[d] < low + static_cast<Index>(geometry.window[d]);
      }
      out[b * out_batch_stride + p * out_copy_stride + i] = inside ? replacement : value;
    }
  }
}

// ---- launchers --------------------------------------------------------------------------------

template <typename T>
cudaError_t lrp_divide_typed(const T* relevance, const T* z, T* out, float eps, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(n, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(n)) {
    lrp_divide_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(relevance, z, out, eps, static_cast<int32_t>(n));
  } else {
    lrp_divide_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(relevance, z, out, eps, n);
  }
  return cudaGetLastError();
}

template <typename T, bool kNegative>
void lrp_product_launch(unsigned int blocks, const T* activation, const T* c, const T* c_neg, T* out, float alpha,
                        float beta, int64_t n, cudaStream_t stream) {
  if (fits_int32(n)) {
    lrp_product_kernel<T, int32_t, kNegative>
        <<<blocks, kThreads, 0, stream>>>(activation, c, c_neg, out, alpha, beta, static_cast<int32_t>(n));
  } else {
    lrp_product_kernel<T, int64_t, kNegative><<<blocks, kThreads, 0, stream>>>(activation, c, c_neg, out, alpha,
                                                                                beta, n);
  }
}

template <typename T>
cudaError_t lrp_product_typed(const T* activation, const T* c, const T* c_neg, T* out, float alpha, float beta,
                              int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(n, &blocks);
  if (err != cudaSuccess) return err;
  if (c_neg != nullptr) {
    lrp_product_launch<T, true>(blocks, activation, c, c_neg, out, alpha, beta, n, stream);
  } else {
    lrp_product_launch<T, false>(blocks, activation, c, c_neg, out, alpha, beta, n, stream);
  }
  return cudaGetLastError();
}

// Elements of out between inputs b and b + 1 and between copies p and p + 1 of one input: out is
// [batch, copies, features], or [copies, batch, features] when copy_major. Each is < batch * copies * features.
struct CopyStrides {
  int64_t batch;
  int64_t copy;
};

CopyStrides copy_strides(int64_t batch, int64_t copies, int64_t features, bool copy_major) {
  return copy_major ? CopyStrides{features, batch * features} : CopyStrides{copies * features, features};
}

template <typename T>
cudaError_t masked_blend_typed(const T* inputs, const T* baselines, const int64_t* mask, bool per_input,
                               const float* keep, T* out, int64_t batch, int64_t perturbations, int64_t groups,
                               int64_t features, bool copy_major, cudaStream_t stream) {
  if (batch == 0 || perturbations == 0 || features == 0) return cudaSuccess;
  const CopyStrides out_strides = copy_strides(batch, perturbations, features, copy_major);
  const int64_t runs = (perturbations + kPerturbationsPerThread - 1) / kPerturbationsPerThread;
  const int64_t items = batch * runs * features;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(items, &blocks);
  if (err != cudaSuccess) return err;
  const int64_t mask_stride = per_input ? features : 0;
  if (fits_int32(batch * perturbations * features) && fits_int32(batch * perturbations * groups) &&
      fits_int32(items)) {
    masked_blend_kernel<T, int32_t><<<blocks, kThreads, 0, stream>>>(
        inputs, baselines, mask, static_cast<int32_t>(mask_stride), keep, out,
        static_cast<int32_t>(out_strides.batch), static_cast<int32_t>(out_strides.copy),
        static_cast<int32_t>(perturbations), static_cast<int32_t>(runs), static_cast<int32_t>(groups),
        static_cast<int32_t>(features), static_cast<int32_t>(items));
  } else {
    masked_blend_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(
        inputs, baselines, mask, mask_stride, keep, out, out_strides.batch, out_strides.copy, perturbations, runs,
        groups, features, items);
  }
  return cudaGetLastError();
}

template <typename W>
cudaError_t occlude_typed(const W* inputs, const W* baselines, W* out, const OccludeGeometry& geometry,
                          int64_t batch, int64_t features, int64_t start, int64_t count, bool copy_major,
                          cudaStream_t stream) {
  const CopyStrides out_strides = copy_strides(batch, count, features, copy_major);
  const int64_t runs = (count + kPerturbationsPerThread - 1) / kPerturbationsPerThread;
  const int64_t items = batch * runs * features;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(items, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(batch * count * features) && fits_int32(items) && fits_int32(start + count)) {
    occlude_kernel<W, int32_t><<<blocks, kThreads, 0, stream>>>(
        inputs, baselines, out, static_cast<int32_t>(out_strides.batch), static_cast<int32_t>(out_strides.copy),
        geometry, static_cast<int32_t>(start), static_cast<int32_t>(count), static_cast<int32_t>(runs),
        static_cast<int32_t>(features), static_cast<int32_t>(items));
  } else {
    occlude_kernel<W, int64_t><<<blocks, kThreads, 0, stream>>>(inputs, baselines, out, out_strides.batch,
                                                                 out_strides.copy, geometry, start, count, runs,
                                                                 features, items);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_lrp_divide(Dtype dtype, const void* relevance, const void* z, void* out, float eps, int64_t n,
                              cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return lrp_divide_typed(static_cast<const float*>(relevance), static_cast<const float*>(z),
                              static_cast<float*>(out), eps, n, stream);
    case Dtype::kFloat16:
      return lrp_divide_typed(static_cast<const __half*>(relevance), static_cast<const __half*>(z),
                              static_cast<__half*>(out), eps, n, stream);
    case Dtype::kBFloat16:
      return lrp_divide_typed(static_cast<const __nv_bfloat16*>(relevance), static_cast<const __nv_bfloat16*>(z),
                              static_cast<__nv_bfloat16*>(out), eps, n, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_lrp_product(Dtype dtype, const void* activation, const void* c, const void* c_neg, void* out,
                               float alpha, float beta, int64_t n, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return lrp_product_typed(static_cast<const float*>(activation), static_cast<const float*>(c),
                               static_cast<const float*>(c_neg), static_cast<float*>(out), alpha, beta, n, stream);
    case Dtype::kFloat16:
      return lrp_product_typed(static_cast<const __half*>(activation), static_cast<const __half*>(c),
                               static_cast<const __half*>(c_neg), static_cast<__half*>(out), alpha, beta, n, stream);
    case Dtype::kBFloat16:
      return lrp_product_typed(static_cast<const __nv_bfloat16*>(activation), static_cast<const __nv_bfloat16*>(c),
                               static_cast<const __nv_bfloat16*>(c_neg), static_cast<__nv_bfloat16*>(out), alpha,
                               beta, n, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_masked_blend(Dtype dtype, const void* inputs, const void* baselines, const int64_t* mask,
                                bool per_input, const float* keep, void* out, int64_t batch, int64_t perturbations,
                                int64_t groups, int64_t features, bool copy_major, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return masked_blend_typed(static_cast<const float*>(inputs), static_cast<const float*>(baselines), mask,
                                per_input, keep, static_cast<float*>(out), batch, perturbations, groups, features,
                                copy_major, stream);
    case Dtype::kFloat16:
      return masked_blend_typed(static_cast<const __half*>(inputs), static_cast<const __half*>(baselines), mask,
                                per_input, keep, static_cast<__half*>(out), batch, perturbations, groups, features,
                                copy_major, stream);
    case Dtype::kBFloat16:
      return masked_blend_typed(static_cast<const __nv_bfloat16*>(inputs),
                                static_cast<const __nv_bfloat16*>(baselines), mask, per_input, keep,
                                static_cast<__nv_bfloat16*>(out), batch, perturbations, groups, features, copy_major,
                                stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_occlude(int64_t element_size, const void* inputs, const void* baselines, void* out,
                           int64_t batch, const int64_t* sizes, const int64_t* window, const int64_t* strides,
                           int64_t ndim, int64_t start, int64_t count, bool copy_major, cudaStream_t stream) {
  // Size-1 dimensions have one window position covering them: dropping them changes nothing.
  OccludeGeometry geometry{};
  int64_t features = 1;
  for (int64_t d = 0; d < ndim; ++d) {
    features *= sizes[d];
    if (sizes[d] == 1) continue;
    if (geometry.ndim == kOccludeMaxDims) return cudaErrorNotSupported;
    const int k = geometry.ndim++;
    geometry.sizes[k] = sizes[d];
    geometry.window[k] = window[d];
    geometry.strides[k] = strides[d];
    geometry.positions[k] = occlusion::positions(sizes[d], window[d], strides[d]);
  }
  if (batch == 0 || count == 0 || features == 0) return cudaSuccess;
  if (element_size == 4) {
    return occlude_typed(static_cast<const uint32_t*>(inputs), static_cast<const uint32_t*>(baselines),
                         static_cast<uint32_t*>(out), geometry, batch, features, start, count, copy_major, stream);
  }
  if (element_size == 2) {
    return occlude_typed(static_cast<const uint16_t*>(inputs), static_cast<const uint16_t*>(baselines),
                         static_cast<uint16_t*>(out), geometry, batch, features, start, count, copy_major, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastxai
