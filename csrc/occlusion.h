// The window geometry of occlude, shared by the CPU kernel (csrc/cpu/attribution_kernels.cpp) and
// the CUDA kernel (csrc/cuda/attribution_kernels.cu). occlude copies elements and computes no
// float; what both backends must agree on is which elements window p covers:
//
//   along dimension d the windows start at k * strides[d], k < positions[d], and window number p
//   is row-major over those positions (the last dimension fastest), as Captum's Occlusion.
//
// The CPU turns each window into contiguous runs to copy; the GPU tests each element against the
// window's corner. Integer arithmetic only (Index: int32_t or int64_t). Torch-free.
#pragma once

#include "float32.h"

namespace fastxai {
namespace occlusion {

// Window positions along one dimension: (size - window) / stride + 1 (window <= size).
template <typename Index>
FASTXAI_HD Index positions(Index size, Index window, Index stride) {
  return (size - window) / stride + 1;
}

// Walking the dimensions from the last to the first: the first coordinate, along the current
// dimension (`count` window positions `stride` apart), of the window numbered `number` among the
// remaining dimensions; `number` becomes its number among the dimensions before.
template <typename Index>
FASTXAI_HD Index peel_start(Index& number, Index count, Index stride) {
  const Index start = (number % count) * stride;
  number /= count;
  return start;
}

}  // namespace occlusion
}  // namespace fastxai
