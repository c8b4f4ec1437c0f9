// CPU kernel of rescale_backward (DeepLIFT's Rescale rule on the ReLU family). See kernels.h for
// the contract and csrc/rescale.h for the per-element multiplier, shared with the CUDA kernel.
// The work is split as in attribution_kernels.cpp: blocks of at most kBlock pairs (element i of
// the inputs' half and element i of the baselines' half), handed to threads by at::parallel_for,
// converted to float32 arrays and computed with branch-free loops the compiler vectorises
// (multiversioned for AVX2 and AVX-512 on x86-64), without FMA contraction.

#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/element_types.h"
#include "cpu/kernels.h"
#include "rescale.h"

namespace fastxai {
namespace cpu {
namespace {

// count (<= kBlock) pairs: x_a, g_a, out_a point into the inputs' half, the baselines' half lies
// `half` elements further on. One read of x and grad, one write of out: the whole backward.
template <typename D>
FASTXAI_INLINE void rescale_backward_span(const typename D::Storage* grad, const typename D::Storage* x,
                                          typename D::Storage* out, float slope, float eps, int64_t half,
                                          int64_t count) {
  alignas(64) float a_buffer[kBlock];
  alignas(64) float b_buffer[kBlock];
  alignas(64) float ga_buffer[kBlock];
  alignas(64) float gb_buffer[kBlock];
  alignas(64) float oa_buffer[kBlock];
  alignas(64) float ob_buffer[kBlock];
  const float* FASTXAI_RESTRICT a = as_float<D>(x, a_buffer, count);
  const float* FASTXAI_RESTRICT b = as_float<D>(x + half, b_buffer, count);
  const float* FASTXAI_RESTRICT ga = as_float<D>(grad, ga_buffer, count);
  const float* FASTXAI_RESTRICT gb = as_float<D>(grad + half, gb_buffer, count);
  float* FASTXAI_RESTRICT oa = output_row<D>(out, oa_buffer);
  float* FASTXAI_RESTRICT ob = output_row<D>(out + half, ob_buffer);
  for (int64_t i = 0; i < count; ++i) {
    const float m = rescale::relu_multiplier(a[i], b[i], slope, eps);
    oa[i] = ga[i] * m;
    ob[i] = gb[i] * m;
  }
  flush<D>(oa_buffer, out, count);
  flush<D>(ob_buffer, out + half, count);
}

#define FASTXAI_DEFINE_RESCALE_KERNELS(D, suffix, ATTR)                                                    \
  ATTR void rescale_backward_span_##suffix(const D::Storage* grad, const D::Storage* x, D::Storage* out,   \
                                           float slope, float eps, int64_t half, int64_t count) {          \
    rescale_backward_span<D>(grad, x, out, slope, eps, half, count);                                       \
  }

FASTXAI_DEFINE_RESCALE_KERNELS(Float32, f32, FASTXAI_CLONES)
FASTXAI_DEFINE_RESCALE_KERNELS(BFloat16, bf16, FASTXAI_CLONES)
#if FASTXAI_F16C_VERSIONS
FASTXAI_DEFINE_RESCALE_KERNELS(Float16, f16, __attribute__((target("default"))))
FASTXAI_DEFINE_RESCALE_KERNELS(Float16X86V3, f16, __attribute__((target("arch=x86-64-v3"), flatten)))
FASTXAI_DEFINE_RESCALE_KERNELS(Float16X86V4, f16, __attribute__((target("arch=x86-64-v4"), flatten)))
#else
FASTXAI_DEFINE_RESCALE_KERNELS(Float16, f16, FASTXAI_CLONES)
#endif

#undef FASTXAI_DEFINE_RESCALE_KERNELS

template <typename S>
using RescaleSpan = void (*)(const S*, const S*, S*, float, float, int64_t, int64_t);

template <typename S>
void rescale_backward_driver(RescaleSpan<S> span, const S* grad, const S* x, S* out, float slope, float eps,
                             int64_t half) {
  if (half == 0) return;
  const int64_t blocks = (half + kBlock - 1) / kBlock;
  // About 8 operations per pair (two outputs).
  at::parallel_for(0, blocks, grain_for(8 * std::min(half, kBlock)), [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock;
      span(grad + begin, x + begin, out + begin, slope, eps, half, std::min(kBlock, half - begin));
    }
  });
}

}  // namespace

void rescale_backward(Dtype dtype, const void* grad, const void* x, void* out, float slope, float eps,
                      int64_t half) {
  switch (dtype) {
    case Dtype::kFloat32:
      rescale_backward_driver<float>(rescale_backward_span_f32, static_cast<const float*>(grad),
                                     static_cast<const float*>(x), static_cast<float*>(out), slope, eps, half);
      break;
    case Dtype::kFloat16:
      rescale_backward_driver<uint16_t>(rescale_backward_span_f16, static_cast<const uint16_t*>(grad),
                                        static_cast<const uint16_t*>(x), static_cast<uint16_t*>(out), slope, eps,
                                        half);
      break;
    case Dtype::kBFloat16:
      rescale_backward_driver<uint16_t>(rescale_backward_span_bf16, static_cast<const uint16_t*>(grad),
                                        static_cast<const uint16_t*>(x), static_cast<uint16_t*>(out), slope, eps,
                                        half);
      break;
  }
}

}  // namespace cpu
}  // namespace fastxai
