// CPU kernels of the LRP and perturbation ops (lrp_divide, lrp_product, masked_blend, occlude).
// See kernels.h for the contract and kernels.cpp for the layout of the work: blocks of at most
// kBlock contiguous output elements, handed to threads by at::parallel_for, converted to float32
// arrays, computed with branch-free loops the compiler vectorises (multiversioned for AVX2 and
// AVX-512 on x86-64), in the float32 operations and order of the reference (no FMA contraction):
// the per-element arithmetic is csrc/elementwise.h's, which the CUDA kernels call too.
// occlude only copies elements, so it works on bytes and is exact in every dtype; which elements
// a window covers is csrc/occlusion.h's, shared with the CUDA kernel as well.

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/element_types.h"
#include "cpu/kernels.h"
#include "elementwise.h"
#include "occlusion.h"

namespace fastxai {
namespace cpu {
namespace {

// Perturbations written per task of masked_blend: the block of inputs is converted once for them.
constexpr int64_t kPerturbationsPerTask = 8;

template <typename D>
FASTXAI_INLINE void lrp_divide_span(const typename D::Storage* relevance, const typename D::Storage* z,
                                    typename D::Storage* out, float eps, int64_t count) {
  alignas(64) float relevance_buffer[kBlock];
  alignas(64) float z_buffer[kBlock];
  alignas(64) float out_buffer[kBlock];
  const float* FASTXAI_RESTRICT r = as_float<D>(relevance, relevance_buffer, count);
  const float* FASTXAI_RESTRICT zs = as_float<D>(z, z_buffer, count);
  float* FASTXAI_RESTRICT o = output_row<D>(out, out_buffer);
  for (int64_t i = 0; i < count; ++i) o[i] = lrp::divide(r[i], zs[i], eps);
  flush<D>(out_buffer, out, count);
}

template <typename D>
FASTXAI_INLINE void lrp_product_span(const typename D::Storage* activation, const typename D::Storage* c,
                                     const typename D::Storage* c_neg, typename D::Storage* out, float alpha,
                                     float beta, int64_t count) {
  alignas(64) float activation_buffer[kBlock];
  alignas(64) float c_buffer[kBlock];
  alignas(64) float c_neg_buffer[kBlock];
  alignas(64) float out_buffer[kBlock];
  const float* FASTXAI_RESTRICT a = as_float<D>(activation, activation_buffer, count);
  const float* FASTXAI_RESTRICT cs = as_float<D>(c, c_buffer, count);
  float* FASTXAI_RESTRICT o = output_row<D>(out, out_buffer);
  if (c_neg == nullptr) {
    for (int64_t i = 0; i < count; ++i) o[i] = lrp::product(a[i], cs[i]);
  } else {
    const float* FASTXAI_RESTRICT cn = as_float<D>(c_neg, c_neg_buffer, count);
    for (int64_t i = 0; i < count; ++i) o[i] = lrp::product(a[i], lrp::alpha_beta(cs[i], cn[i], alpha, beta));
  }
  flush<D>(out_buffer, out, count);
}

// count (<= kBlock) elements of one input, written for perturbations [0, n): out rows `stride` apart,
// keep rows `groups` apart.
template <typename D>
FASTXAI_INLINE void masked_blend_span(const typename D::Storage* inputs, const typename D::Storage* baselines,
                                      const int64_t* FASTXAI_RESTRICT mask, const float* keep,
                                      typename D::Storage* out, int64_t n, int64_t groups, int64_t stride,
                                      int64_t count) {
  alignas(64) float start[kBlock];
  alignas(64) float difference[kBlock];
  alignas(64) float x_buffer[kBlock];
  alignas(64) float baseline_buffer[kBlock];
  alignas(64) float out_buffer[kBlock];
  const float* FASTXAI_RESTRICT xf = as_float<D>(inputs, x_buffer, count);
  const float* FASTXAI_RESTRICT bf = as_float<D>(baselines, baseline_buffer, count);
  for (int64_t i = 0; i < count; ++i) {
    start[i] = bf[i];
    difference[i] = path::step(xf[i], bf[i]);
  }
  for (int64_t p = 0; p < n; ++p) {
    const float* FASTXAI_RESTRICT weights = keep + p * groups;
    float* FASTXAI_RESTRICT o = output_row<D>(out + p * stride, out_buffer);
    for (int64_t i = 0; i < count; ++i) o[i] = path::point(start[i], weights[mask[i]], difference[i]);
    flush<D>(out_buffer, out + p * stride, count);
  }
}

#define FASTXAI_DEFINE_ATTRIBUTION_KERNELS(D, suffix, ATTR)                                                 \
  ATTR void lrp_divide_span_##suffix(const D::Storage* relevance, const D::Storage* z, D::Storage* out,     \
                                     float eps, int64_t count) {                                            \
    lrp_divide_span<D>(relevance, z, out, eps, count);                                                     \
  }                                                                                                         \
  ATTR void lrp_product_span_##suffix(const D::Storage* activation, const D::Storage* c,                   \
                                      const D::Storage* c_neg, D::Storage* out, float alpha, float beta,    \
                                      int64_t count) {                                                      \
    lrp_product_span<D>(activation, c, c_neg, out, alpha, beta, count);                                    \
  }                                                                                                         \
  ATTR void masked_blend_span_##suffix(const D::Storage* inputs, const D::Storage* baselines,              \
                                       const int64_t* mask, const float* keep, D::Storage* out, int64_t n, \
                                       int64_t groups, int64_t stride, int64_t count) {                     \
    masked_blend_span<D>(inputs, baselines, mask, keep, out, n, groups, stride, count);                    \
  }

FASTXAI_DEFINE_ATTRIBUTION_KERNELS(Float32, f32, FASTXAI_CLONES)
FASTXAI_DEFINE_ATTRIBUTION_KERNELS(BFloat16, bf16, FASTXAI_CLONES)
#if FASTXAI_F16C_VERSIONS
FASTXAI_DEFINE_ATTRIBUTION_KERNELS(Float16, f16, __attribute__((target("default"))))
FASTXAI_DEFINE_ATTRIBUTION_KERNELS(Float16X86V3, f16, __attribute__((target("arch=x86-64-v3"), flatten)))
FASTXAI_DEFINE_ATTRIBUTION_KERNELS(Float16X86V4, f16, __attribute__((target("arch=x86-64-v4"), flatten)))
#else
FASTXAI_DEFINE_ATTRIBUTION_KERNELS(Float16, f16, FASTXAI_CLONES)
#endif

#undef FASTXAI_DEFINE_ATTRIBUTION_KERNELS

template <typename S>
struct AttributionKernels {
  void (*lrp_divide)(const S*, const S*, S*, float, int64_t);
  void (*lrp_product)(const S*, const S*, const S*, S*, float, float, int64_t);
  void (*masked_blend)(const S*, const S*, const int64_t*, const float*, S*, int64_t, int64_t, int64_t, int64_t);
};

const AttributionKernels<float> kFloat32Kernels{lrp_divide_span_f32, lrp_product_span_f32, masked_blend_span_f32};
const AttributionKernels<uint16_t> kFloat16Kernels{lrp_divide_span_f16, lrp_product_span_f16,
                                                   masked_blend_span_f16};
const AttributionKernels<uint16_t> kBFloat16Kernels{lrp_divide_span_bf16, lrp_product_span_bf16,
                                                    masked_blend_span_bf16};

// Runs body(begin, count) over blocks of kBlock elements of [0, n) in parallel.
template <typename Body>
void for_each_block(int64_t n, int64_t work_per_element, const Body& body) {
  if (n == 0) return;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, grain_for(work_per_element * std::min(n, kBlock)), [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock;
      body(begin, std::min(kBlock, n - begin));
    }
  });
}

template <typename S>
void lrp_divide_driver(const AttributionKernels<S>& kernels, const S* relevance, const S* z, S* out, float eps,
                       int64_t n) {
  for_each_block(n, 4, [&](int64_t begin, int64_t count) {
    kernels.lrp_divide(relevance + begin, z + begin, out + begin, eps, count);
  });
}

template <typename S>
void lrp_product_driver(const AttributionKernels<S>& kernels, const S* activation, const S* c, const S* c_neg,
                        S* out, float alpha, float beta, int64_t n) {
  for_each_block(n, 2, [&](int64_t begin, int64_t count) {
    kernels.lrp_product(activation + begin, c + begin, c_neg != nullptr ? c_neg + begin : nullptr, out + begin,
                        alpha, beta, count);
  });
}

template <typename S>
void masked_blend_driver(const AttributionKernels<S>& kernels, const S* inputs, const S* baselines,
                         const int64_t* mask, bool per_input, const float* keep, S* out, int64_t batch,
                         int64_t perturbations, int64_t groups, int64_t features, bool copy_major) {
  if (batch == 0 || perturbations == 0 || features == 0) return;
  const int64_t chunks = (features + kBlock - 1) / kBlock;
  const int64_t runs = (perturbations + kPerturbationsPerTask - 1) / kPerturbationsPerTask;
  // Elements of out between inputs b and b + 1, and between perturbations p and p + 1 of one input.
  const int64_t row_stride = copy_major ? features : perturbations * features;
  const int64_t stride = copy_major ? batch * features : features;
  const int64_t grain = grain_for(2 * kPerturbationsPerTask * std::min(features, kBlock));
  at::parallel_for(0, batch * runs * chunks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t run = task / chunks % runs;
      const int64_t b = task / (chunks * runs);
      const int64_t begin = chunk * kBlock;
      const int64_t p0 = run * kPerturbationsPerTask;
      const int64_t n = std::min(kPerturbationsPerTask, perturbations - p0);
      kernels.masked_blend(inputs + b * features + begin, baselines + b * features + begin,
                           mask + (per_input ? b * features : 0) + begin, keep + (b * perturbations + p0) * groups,
                           out + b * row_stride + p0 * stride + begin, n, groups, stride,
                           std::min(kBlock, features - begin));
    }
  });
}

}  // namespace

void lrp_divide(Dtype dtype, const void* relevance, const void* z, void* out, float eps, int64_t n) {
  if (dtype == Dtype::kFloat32) {
    lrp_divide_driver(kFloat32Kernels, static_cast<const float*>(relevance), static_cast<const float*>(z),
                      static_cast<float*>(out), eps, n);
  } else {
    lrp_divide_driver(dtype == Dtype::kFloat16 ? kFloat16Kernels : kBFloat16Kernels,
                      static_cast<const uint16_t*>(relevance), static_cast<const uint16_t*>(z),
                      static_cast<uint16_t*>(out), eps, n);
  }
}

void lrp_product(Dtype dtype, const void* activation, const void* c, const void* c_neg, void* out, float alpha,
                 float beta, int64_t n) {
  if (dtype == Dtype::kFloat32) {
    lrp_product_driver(kFloat32Kernels, static_cast<const float*>(activation), static_cast<const float*>(c),
                       static_cast<const float*>(c_neg), static_cast<float*>(out), alpha, beta, n);
  } else {
    lrp_product_driver(dtype == Dtype::kFloat16 ? kFloat16Kernels : kBFloat16Kernels,
                       static_cast<const uint16_t*>(activation), static_cast<const uint16_t*>(c),
                       static_cast<const uint16_t*>(c_neg), static_cast<uint16_t*>(out), alpha, beta, n);
  }
}

void masked_blend(Dtype dtype, const void* inputs, const void* baselines, const int64_t* mask, bool per_input,
                  const float* keep, void* out, int64_t batch, int64_t perturbations, int64_t groups,
                  int64_t features, bool copy_major) {
  if (dtype == Dtype::kFloat32) {
    masked_blend_driver(kFloat32Kernels, static_cast<const float*>(inputs), static_cast<const float*>(baselines),
                        mask, per_input, keep, static_cast<float*>(out), batch, perturbations, groups, features,
                        copy_major);
  } else {
    masked_blend_driver(dtype == Dtype::kFloat16 ? kFloat16Kernels : kBFloat16Kernels,
                        static_cast<const uint16_t*>(inputs), static_cast<const uint16_t*>(baselines), mask,
                        per_input, keep, static_cast<uint16_t*>(out), batch, perturbations, groups, features,
                        copy_major);
  }
}

void occlude(int64_t element_size, const void* inputs, const void* baselines, void* out, int64_t batch,
             const int64_t* sizes, const int64_t* window, const int64_t* strides, int64_t ndim, int64_t start,
             int64_t count, bool copy_major) {
  int64_t features = 1;
  for (int64_t d = 0; d < ndim; ++d) features *= sizes[d];
  if (batch == 0 || count == 0 || features == 0) return;
  const auto* in_bytes = static_cast<const char*>(inputs);
  const auto* base_bytes = static_cast<const char*>(baselines);
  auto* out_bytes = static_cast<char*>(out);
  const int64_t row_bytes = features * element_size;
  // Element strides of the feature dimensions (row-major) and window positions per dimension.
  std::vector<int64_t> pitch(static_cast<size_t>(ndim));
  std::vector<int64_t> positions(static_cast<size_t>(ndim));
  for (int64_t d = ndim - 1, p = 1; d >= 0; --d) {
    pitch[d] = p;
    p *= sizes[d];
    positions[d] = occlusion::positions(sizes[d], window[d], strides[d]);
  }
  const int64_t run_bytes = window[ndim - 1] * element_size;  // one contiguous run of the window
  // Element offsets, computed once per call rather than per copy: of each window's first element
  // (windows start .. start + count - 1, row-major over the positions), and of each contiguous run
  // of a window relative to its first element (the window over all but the last dimension,
  // walked like an odometer).
  std::vector<int64_t> origins(static_cast<size_t>(count));
  for (int64_t p = 0; p < count; ++p) {
    int64_t number = start + p;
    int64_t origin = 0;
    for (int64_t d = ndim - 1; d >= 0; --d) {
      origin += occlusion::peel_start(number, positions[d], strides[d]) * pitch[d];
    }
    origins[static_cast<size_t>(p)] = origin;
  }
  std::vector<int64_t> runs;
  {
    std::vector<int64_t> corner(static_cast<size_t>(ndim), 0);
    do {
      int64_t offset = 0;
      for (int64_t d = 0; d + 1 < ndim; ++d) offset += corner[d] * pitch[d];
      runs.push_back(offset);
      int64_t d = ndim - 2;
      for (; d >= 0; --d) {
        if (++corner[d] < window[d]) break;
        corner[d] = 0;
      }
      if (d < 0) break;
    } while (true);
  }
  at::parallel_for(0, batch * count, grain_for(2 * features), [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      // tasks in the order of the output rows: (p, b) copy-major, (b, p) otherwise
      const int64_t b = copy_major ? task % batch : task / count;
      const int64_t p = copy_major ? task / batch : task % count;
      char* dst = out_bytes + task * row_bytes;
      const char* src = in_bytes + b * row_bytes;
      const char* replacement = base_bytes + b * row_bytes;
      std::memcpy(dst, src, static_cast<size_t>(row_bytes));
      const int64_t origin = origins[static_cast<size_t>(p)];
      for (const int64_t run : runs) {
        const int64_t offset = (origin + run) * element_size;
        std::memcpy(dst + offset, replacement + offset, static_cast<size_t>(run_bytes));
      }
    }
  });
}

}  // namespace cpu
}  // namespace fastxai
