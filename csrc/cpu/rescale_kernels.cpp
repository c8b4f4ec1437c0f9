// CPU kernel of rescale_backward (DeepLIFT's Rescale rule on the ReLU family). See kernels.h for
// the contract and csrc/rescale.h for the per-element multiplier, shared with the CUDA kernel.
// The work is split as in attribution_kernels.cpp: blocks of at most kBlock elements (element i
// of the input's pre-activation and of its baseline's), handed to threads by at::parallel_for,
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

// count (<= kBlock) elements: the input's pre-activation x, its baseline's b, the gradient g.
// One read of each, one write of out: the whole backward.
template <typename D>
FASTXAI_INLINE void rescale_backward_span(const typename D::Storage* grad, const typename D::Storage* x,
                                          const typename D::Storage* reference, typename D::Storage* out,
                                          float slope, float eps, int64_t count) {
  alignas(64) float a_buffer[kBlock];
  alignas(64) float b_buffer[kBlock];
  alignas(64) float g_buffer[kBlock];
  alignas(64) float o_buffer[kBlock];
  const float* FASTXAI_RESTRICT a = as_float<D>(x, a_buffer, count);
  const float* FASTXAI_RESTRICT b = as_float<D>(reference, b_buffer, count);
  const float* FASTXAI_RESTRICT g = as_float<D>(grad, g_buffer, count);
  float* FASTXAI_RESTRICT o = output_row<D>(out, o_buffer);
  for (int64_t i = 0; i < count; ++i) o[i] = rescale::backward(g[i], a[i], b[i], slope, eps);
  flush<D>(o_buffer, out, count);
}

#define FASTXAI_DEFINE_RESCALE_KERNELS(D, suffix, ATTR)                                                    \
  ATTR void rescale_backward_span_##suffix(const D::Storage* grad, const D::Storage* x,                     \
                                           const D::Storage* reference, D::Storage* out, float slope,       \
                                           float eps, int64_t count) {                                      \
    rescale_backward_span<D>(grad, x, reference, out, slope, eps, count);                                  \
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
using RescaleSpan = void (*)(const S*, const S*, const S*, S*, float, float, int64_t);

template <typename S>
void rescale_backward_driver(RescaleSpan<S> span, const S* grad, const S* x, const S* reference, S* out,
                             float slope, float eps, int64_t numel) {
  if (numel == 0) return;
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  // About 6 operations per element.
  at::parallel_for(0, blocks, grain_for(6 * std::min(numel, kBlock)), [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock;
      span(grad + begin, x + begin, reference + begin, out + begin, slope, eps, std::min(kBlock, numel - begin));
    }
  });
}

}  // namespace

void rescale_backward(Dtype dtype, const void* grad, const void* x, const void* reference, void* out, float slope,
                      float eps, int64_t numel) {
  switch (dtype) {
    case Dtype::kFloat32:
      rescale_backward_driver<float>(rescale_backward_span_f32, static_cast<const float*>(grad),
                                     static_cast<const float*>(x), static_cast<const float*>(reference),
                                     static_cast<float*>(out), slope, eps, numel);
      break;
    case Dtype::kFloat16:
      rescale_backward_driver<uint16_t>(rescale_backward_span_f16, static_cast<const uint16_t*>(grad),
                                        static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(reference),
                                        static_cast<uint16_t*>(out), slope, eps, numel);
      break;
    case Dtype::kBFloat16:
      rescale_backward_driver<uint16_t>(rescale_backward_span_bf16, static_cast<const uint16_t*>(grad),
                                        static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(reference),
                                        static_cast<uint16_t*>(out), slope, eps, numel);
      break;
  }
}

}  // namespace cpu
}  // namespace fastxai
