// Device helpers shared by the CUDA kernel files (kernels.cu, attribution_kernels.cu): the launch
// shape of grid-stride kernels and float32 loads / stores of the element types. Torch-free.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastxai {
namespace cuda {

constexpr int kThreads = 256;
constexpr int64_t kBlocksPerSm = 16;  // grid-stride: enough resident blocks to hide latency

// ---- element types ----------------------------------------------------------------------------

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

template <>
struct Elem<__half> {
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

// Most blocks a grid-stride launch uses on the current device.
inline cudaError_t block_cap(int64_t* cap) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int sms = 0;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  *cap = static_cast<int64_t>(sms > 0 ? sms : 1) * kBlocksPerSm;
  return cudaSuccess;
}

// Blocks for `items` grid-stride items on the current device.
inline cudaError_t grid_for(int64_t items, unsigned int* blocks) {
  int64_t cap = 0;
  const cudaError_t err = block_cap(&cap);
  if (err != cudaSuccess) return err;
  const int64_t needed = (items + kThreads - 1) / kThreads;
  *blocks = static_cast<unsigned int>(needed < cap ? needed : cap);
  return cudaSuccess;
}

// Every index reached (including the one-past-the-end of the last grid-stride step) fits in int32.
inline bool fits_int32(int64_t largest_index) {
  return largest_index + static_cast<int64_t>(kThreads) * kBlocksPerSm * 1024 < (int64_t{1} << 31);
}

}  // namespace cuda
}  // namespace fastxai
