// CUDA kernel of rescale_backward (DeepLIFT's Rescale rule on the ReLU family). See kernels.h for
// the contract. The per-element multiplier is csrc/rescale.h's, shared with the CPU kernel and
// computed with the correctly rounded intrinsics (no FMA contraction), so both give the same bits.
// One grid-stride thread per pair: element i of the inputs' half and element i of the baselines'
// half read once, both outputs written; 32-bit indices when every index fits.

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
    rescale_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x, T* __restrict__ out, float slope,
                            float eps, Index half) {
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  for (Index i = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x; i < half; i += stride) {
    const float m = rescale::relu_multiplier(Elem<T>::load(x[i]), Elem<T>::load(x[half + i]), slope, eps);
    out[i] = Elem<T>::store(philox::fmul(Elem<T>::load(grad[i]), m));
    out[half + i] = Elem<T>::store(philox::fmul(Elem<T>::load(grad[half + i]), m));
  }
}

template <typename T>
cudaError_t rescale_backward_typed(const T* grad, const T* x, T* out, float slope, float eps, int64_t half,
                                   cudaStream_t stream) {
  if (half == 0) return cudaSuccess;
  unsigned int blocks = 0;
  const cudaError_t err = grid_for(half, &blocks);
  if (err != cudaSuccess) return err;
  if (fits_int32(2 * half)) {  // half + i must fit too
    rescale_backward_kernel<T, int32_t>
        <<<blocks, kThreads, 0, stream>>>(grad, x, out, slope, eps, static_cast<int32_t>(half));
  } else {
    rescale_backward_kernel<T, int64_t><<<blocks, kThreads, 0, stream>>>(grad, x, out, slope, eps, half);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rescale_backward(Dtype dtype, const void* grad, const void* x, void* out, float slope, float eps,
                                    int64_t half, cudaStream_t stream) {
  switch (dtype) {
    case Dtype::kFloat32:
      return rescale_backward_typed(static_cast<const float*>(grad), static_cast<const float*>(x),
                                    static_cast<float*>(out), slope, eps, half, stream);
    case Dtype::kFloat16:
      return rescale_backward_typed(static_cast<const __half*>(grad), static_cast<const __half*>(x),
                                    static_cast<__half*>(out), slope, eps, half, stream);
    case Dtype::kBFloat16:
      return rescale_backward_typed(static_cast<const __nv_bfloat16*>(grad), static_cast<const __nv_bfloat16*>(x),
                                    static_cast<__nv_bfloat16*>(out), slope, eps, half, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastxai
