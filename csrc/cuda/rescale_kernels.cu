// CUDA kernel of rescale_backward (DeepLIFT's Rescale rule on the ReLU family). See kernels.h for
// the contract. The per-element arithmetic is csrc/rescale.h's, shared with the CPU kernel and
// computed with the correctly rounded intrinsics (no FMA contraction), so both give the same bits.
// One grid-stride thread per element: the gradient, the input's pre-activation and its
// baseline's read once, the output written once; 32-bit indices when every index fits.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/kernels.h"
#include "rescale.h"

namespace fastxai {
namespace cuda {
namespace {

template <typename T, typename Index>
__global__ void __launch_bounds__(kThreads)
    rescale_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x, const T* __restrict__ reference,
                            T* __restrict__ out, float slope, float eps, Index numel) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; i < numel; i += stride) {
    out[i] = Elem<T>::store(
        rescale::backward(Elem<T>::load(grad[i]), Elem<T>::load(x[i]), Elem<T>::load(reference[i]), slope, eps));
  }
}

template <typename T>
cudaError_t rescale_backward_typed(const T* grad, const T* x, const T* reference, T* out, float slope, float eps,
                                   int64_t numel, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(numel, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(numel)) {
    rescale_backward_kernel<T, int32_t>
        <<<blocks, kThreads, 0, stream>>>(grad, x, reference, out, slope, eps, static_cast<int32_t>(numel));
  } else {
    rescale_backward_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(grad, x, reference, out, slope, eps, numel);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rescale_backward(Dtype dtype, const void* grad, const void* x, const void* reference, void* out,
                                    float slope, float eps, int64_t numel, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return rescale_backward_typed(static_cast<const float*>(grad), static_cast<const float*>(x),
                                    static_cast<const float*>(reference), static_cast<float*>(out), slope, eps,
                                    numel, stream);
    case Dtype::kFloat16:
      return rescale_backward_typed(static_cast<const __half*>(grad), static_cast<const __half*>(x),
                                    static_cast<const __half*>(reference), static_cast<__half*>(out), slope, eps,
                                    numel, stream);
    case Dtype::kBFloat16:
      return rescale_backward_typed(static_cast<const __nv_bfloat16*>(grad), static_cast<const __nv_bfloat16*>(x),
                                    static_cast<const __nv_bfloat16*>(reference), static_cast<__nv_bfloat16*>(out),
                                    slope, eps, numel, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastxai
