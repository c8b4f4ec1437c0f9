// CPU kernels of the fused ops. See kernels.h for the contract.
//
// Layout of the work: every op is cut into blocks of at most kBlock contiguous output
// elements; at::parallel_for hands contiguous ranges of blocks to threads, so each thread owns
// disjoint outputs and no synchronisation is needed. Inside a block the inner loops run over
// contiguous float32 arrays with no aliasing (__restrict__) and no branches, so the compiler
// vectorises them; on x86-64 with glibc (GCC >= 12) each block kernel is compiled for baseline
// x86-64, x86-64-v3 (AVX2) and x86-64-v4 (AVX-512) and the best one is picked at load time.
//
// Every output element sees exactly the float32 operations of the reference, in the same
// order: the per-element and per-row arithmetic is the functions of csrc/philox.h,
// csrc/elementwise.h and csrc/pgd.h, which the CUDA kernels call too (this file is compiled
// with -ffp-contract=off: no FMA contraction). The one exception is the l2 pgd_step's row
// norms: float32 sums in a fixed order of our own (sum_squares), not torch's nor the GPU's, so
// they agree with the reference to rounding.

#include "cpu/kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/element_types.h"
#include "elementwise.h"
#include "pgd.h"
#include "philox.h"

namespace fastxai {
namespace cpu {
namespace {

// ---- block kernels (templates, inlined into the multiversioned entry points below) -----------

// Noise for elements [begin, end) of one (sample, row): out[j] = x[j] + sigma * z[j].
// begin is a multiple of 4; Philox is called once per group of four elements.
template <typename D>
FASTXAI_INLINE void gaussian_span(const typename D::Storage* x, typename D::Storage* out, float sigma,
                                  int64_t begin, int64_t end, uint32_t sample, uint32_t row, uint32_t k0,
                                  uint32_t k1) {
  constexpr int kGroups = 64;  // Philox calls per chunk -> 256 normals
  alignas(64) uint32_t radius_word[2 * kGroups];
  alignas(64) uint32_t angle_word[2 * kGroups];
  alignas(64) float z[4 * kGroups];
  alignas(64) float x_buffer[4 * kGroups];
  alignas(64) float out_buffer[4 * kGroups];
  for (int64_t start = begin; start < end; start += 4 * kGroups) {
    const uint32_t first_group = static_cast<uint32_t>(start >> 2);
    const int64_t count = std::min<int64_t>(4 * kGroups, end - start);
    const int groups = static_cast<int>((count + 3) / 4);  // a partial last group is drawn whole
    for (int i = 0; i < groups; ++i) {
      uint32_t w0, w1, w2, w3;
      philox::draw4(first_group + static_cast<uint32_t>(i), sample, row, k0, k1, w0, w1, w2, w3);
      radius_word[2 * i] = w0;
      angle_word[2 * i] = w1;
      radius_word[2 * i + 1] = w2;
      angle_word[2 * i + 1] = w3;
    }
    for (int p = 0; p < 2 * groups; ++p) {
      float zc, zs;
      philox::box_muller(radius_word[p], angle_word[p], zc, zs);
      z[2 * p] = zc;
      z[2 * p + 1] = zs;
    }
    const float* FASTXAI_RESTRICT xs = as_float<D>(x + start, x_buffer, count);
    float* FASTXAI_RESTRICT os = output_row<D>(out + start, out_buffer);
    for (int64_t i = 0; i < count; ++i) {
      os[i] = noise::perturbed(xs[i], sigma, z[i]);
    }
    flush<D>(out_buffer, out + start, count);
  }
}

// total[i] += a, total_sq[i] += a * a for a = values[s * stride + i] (* multiplier[...]), s in order.
template <typename D, bool kSquares, bool kMultiplier>
FASTXAI_INLINE void moment_span(const typename D::Storage* values, const typename D::Storage* multiplier,
                                float* FASTXAI_RESTRICT total, float* FASTXAI_RESTRICT total_sq, int64_t n,
                                int64_t stride, int64_t count) {
  alignas(64) float sum[kBlock];
  alignas(64) float sum_sq[kBlock];
  alignas(64) float value_buffer[kBlock];
  alignas(64) float multiplier_buffer[kBlock];
  for (int64_t i = 0; i < count; ++i) {
    sum[i] = total[i];
    if (kSquares) sum_sq[i] = total_sq[i];
  }
  for (int64_t s = 0; s < n; ++s) {
    const float* FASTXAI_RESTRICT v = as_float<D>(values + s * stride, value_buffer, count);
    const float* FASTXAI_RESTRICT m =
        kMultiplier ? as_float<D>(multiplier + s * stride, multiplier_buffer, count) : nullptr;
    for (int64_t i = 0; i < count; ++i) {
      float a = v[i];
      if (kMultiplier) a = moments::term(a, m[i]);
      sum[i] = moments::add(sum[i], a);
      if (kSquares) sum_sq[i] = moments::add_square(sum_sq[i], a);
    }
  }
  for (int64_t i = 0; i < count; ++i) {
    total[i] = sum[i];
    if (kSquares) total_sq[i] = sum_sq[i];
  }
}

template <typename D>
FASTXAI_INLINE void moment_span_any(const typename D::Storage* values, const typename D::Storage* multiplier,
                                    float* total, float* total_sq, int64_t n, int64_t stride, int64_t count) {
  if (total_sq != nullptr) {
    if (multiplier != nullptr) {
      moment_span<D, true, true>(values, multiplier, total, total_sq, n, stride, count);
    } else {
      moment_span<D, true, false>(values, multiplier, total, total_sq, n, stride, count);
    }
  } else if (multiplier != nullptr) {
    moment_span<D, false, true>(values, multiplier, total, total_sq, n, stride, count);
  } else {
    moment_span<D, false, false>(values, multiplier, total, total_sq, n, stride, count);
  }
}

// out[k * stride + i] = baseline[i] + alphas[k] * (x[i] - baseline[i]) for i < count.
template <typename D>
FASTXAI_INLINE void path_span(const typename D::Storage* x, const typename D::Storage* baseline,
                              const float* FASTXAI_RESTRICT alphas, typename D::Storage* out, int64_t steps,
                              int64_t stride, int64_t count) {
  alignas(64) float start[kBlock];
  alignas(64) float difference[kBlock];
  alignas(64) float x_buffer[kBlock];
  alignas(64) float baseline_buffer[kBlock];
  alignas(64) float out_buffer[kBlock];
  const float* FASTXAI_RESTRICT xf = as_float<D>(x, x_buffer, count);
  const float* FASTXAI_RESTRICT bf = as_float<D>(baseline, baseline_buffer, count);
  for (int64_t i = 0; i < count; ++i) {
    start[i] = bf[i];
    difference[i] = path::step(xf[i], bf[i]);
  }
  for (int64_t k = 0; k < steps; ++k) {
    const float alpha = alphas[k];
    float* FASTXAI_RESTRICT o = output_row<D>(out + k * stride, out_buffer);
    for (int64_t i = 0; i < count; ++i) {
      o[i] = path::point(start[i], alpha, difference[i]);
    }
    flush<D>(out_buffer, out + k * stride, count);
  }
}

// acc[i] += weights[k * weight_stride] * grads[k * stride + i], k in order, for i < count.
template <typename D>
FASTXAI_INLINE void weighted_span(const typename D::Storage* grads, const float* FASTXAI_RESTRICT weights,
                                  float* FASTXAI_RESTRICT acc, int64_t steps, int64_t stride,
                                  int64_t weight_stride, int64_t count) {
  alignas(64) float sum[kBlock];
  alignas(64) float grad_buffer[kBlock];
  for (int64_t i = 0; i < count; ++i) sum[i] = acc[i];
  for (int64_t k = 0; k < steps; ++k) {
    const float w = weights[k * weight_stride];
    const float* FASTXAI_RESTRICT g = as_float<D>(grads + k * stride, grad_buffer, count);
    for (int64_t i = 0; i < count; ++i) {
      sum[i] = path::accumulate(sum[i], w, g[i]);
    }
  }
  for (int64_t i = 0; i < count; ++i) acc[i] = sum[i];
}

// ---- pgd_step -----------------------------------------------------------------------------------

// Running sums of a sum of squares: lane l adds the elements i = l (mod kLanes) in order, then the
// lanes are added pairwise. A fixed order (the same in every multiversioned clone) that vectorises.
constexpr int kLanes = 16;

FASTXAI_INLINE float sum_squares(const float* FASTXAI_RESTRICT v, int64_t n) {
  alignas(64) float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lane[l] = pgd::add_square(lane[l], v[i + l]);
  }
  for (int l = 0; i + l < n; ++l) lane[l] = pgd::add_square(lane[l], v[i + l]);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lane[l] = pgd::add(lane[l], lane[l + width]);
  }
  return lane[0];
}

// linf update of n elements of one row.
FASTXAI_INLINE void pgd_linf_elements(const float* FASTXAI_RESTRICT adv, const float* FASTXAI_RESTRICT grad,
                                      const float* FASTXAI_RESTRICT orig, float* FASTXAI_RESTRICT out,
                                      float alpha, float radius, float lower, float upper, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = pgd::linf(adv[i], grad[i], orig[i], alpha, radius, lower, upper);
}

// linf step of the flat elements [begin, end) (end - begin <= kBlock) of [rows, features] arrays;
// the range may cross rows.
template <typename D>
FASTXAI_INLINE void pgd_linf_span(const typename D::Storage* x_adv, const typename D::Storage* grad,
                                  const typename D::Storage* x_orig, typename D::Storage* out,
                                  const float* step_size, const float* eps, float lower, float upper,
                                  int64_t features, int64_t begin, int64_t end) {
  alignas(64) float adv_buffer[kBlock];
  alignas(64) float grad_buffer[kBlock];
  alignas(64) float orig_buffer[kBlock];
  alignas(64) float out_buffer[kBlock];
  const int64_t count = end - begin;
  const float* adv = as_float<D>(x_adv + begin, adv_buffer, count);
  const float* g = as_float<D>(grad + begin, grad_buffer, count);
  const float* orig = as_float<D>(x_orig + begin, orig_buffer, count);
  float* o = output_row<D>(out + begin, out_buffer);
  for (int64_t start = begin; start < end;) {
    const int64_t row = start / features;
    const int64_t stop = std::min(end, (row + 1) * features);
    const int64_t i = start - begin;
    pgd_linf_elements(adv + i, g + i, orig + i, o + i, step_size[row], eps[row], lower, upper, stop - start);
    start = stop;
  }
  flush<D>(out_buffer, out + begin, count);
}

// l2, pass 1: sum of grad^2 over count (<= kBlock) elements of a row.
template <typename D>
FASTXAI_INLINE float pgd_l2_grad_span(const typename D::Storage* grad, int64_t count) {
  alignas(64) float grad_buffer[kBlock];
  return sum_squares(as_float<D>(grad, grad_buffer, count), count);
}

// d = (x_adv + alpha * (grad / grad_norm)) - x_orig for n elements.
FASTXAI_INLINE void pgd_l2_delta(const float* FASTXAI_RESTRICT adv, const float* FASTXAI_RESTRICT grad,
                                 const float* FASTXAI_RESTRICT orig, float* FASTXAI_RESTRICT delta, float alpha,
                                 float grad_norm, int64_t n) {
  for (int64_t i = 0; i < n; ++i) delta[i] = pgd::l2_delta(adv[i], grad[i], orig[i], alpha, grad_norm);
}

// l2, pass 2: d for count (<= kBlock) elements of a row, written to `delta`; returns the sum of d^2.
template <typename D>
FASTXAI_INLINE float pgd_l2_delta_span(const typename D::Storage* x_adv, const typename D::Storage* grad,
                                       const typename D::Storage* x_orig, float* delta, float alpha,
                                       float grad_norm, int64_t count) {
  alignas(64) float adv_buffer[kBlock];
  alignas(64) float grad_buffer[kBlock];
  alignas(64) float orig_buffer[kBlock];
  pgd_l2_delta(as_float<D>(x_adv, adv_buffer, count), as_float<D>(grad, grad_buffer, count),
               as_float<D>(x_orig, orig_buffer, count), delta, alpha, grad_norm, count);
  return sum_squares(delta, count);
}

// l2, pass 3: out = clamp(x_orig + d * factor) over count (<= kBlock) elements of a row, d from pass 2.
template <typename D>
FASTXAI_INLINE void pgd_l2_apply_span(const float* FASTXAI_RESTRICT delta, const typename D::Storage* x_orig,
                                      typename D::Storage* out, float factor, float lower, float upper,
                                      int64_t count) {
  alignas(64) float orig_buffer[kBlock];
  alignas(64) float out_buffer[kBlock];
  const float* FASTXAI_RESTRICT orig = as_float<D>(x_orig, orig_buffer, count);
  float* FASTXAI_RESTRICT o = output_row<D>(out, out_buffer);
  for (int64_t i = 0; i < count; ++i) {
    o[i] = pgd::l2_apply(orig[i], delta[i], factor, lower, upper);
  }
  flush<D>(out_buffer, out, count);
}

// ---- multiversioned entry points, one per element type ---------------------------------------

#define FASTXAI_DEFINE_BLOCK_KERNELS(D, suffix, ATTR)                                                    \
  ATTR void gaussian_span_##suffix(const D::Storage* x, D::Storage* out, float sigma, int64_t begin,        \
                                   int64_t end, uint32_t sample, uint32_t row, uint32_t k0, uint32_t k1) {  \
    gaussian_span<D>(x, out, sigma, begin, end, sample, row, k0, k1);                                      \
  }                                                                                                        \
  ATTR void moment_span_##suffix(const D::Storage* values, const D::Storage* multiplier, float* total,      \
                                 float* total_sq, int64_t n, int64_t stride, int64_t count) {              \
    moment_span_any<D>(values, multiplier, total, total_sq, n, stride, count);                             \
  }                                                                                                        \
  ATTR void path_span_##suffix(const D::Storage* x, const D::Storage* baseline, const float* alphas,        \
                               D::Storage* out, int64_t steps, int64_t stride, int64_t count) {             \
    path_span<D>(x, baseline, alphas, out, steps, stride, count);                                          \
  }                                                                                                        \
  ATTR void weighted_span_##suffix(const D::Storage* grads, const float* weights, float* acc, int64_t steps, \
                                   int64_t stride, int64_t weight_stride, int64_t count) {                  \
    weighted_span<D>(grads, weights, acc, steps, stride, weight_stride, count);                            \
  }                                                                                                        \
  ATTR void pgd_linf_span_##suffix(const D::Storage* x_adv, const D::Storage* grad, const D::Storage* x_orig, \
                                   D::Storage* out, const float* step_size, const float* eps, float lower,    \
                                   float upper, int64_t features, int64_t begin, int64_t end) {             \
    pgd_linf_span<D>(x_adv, grad, x_orig, out, step_size, eps, lower, upper, features, begin, end);        \
  }                                                                                                        \
  ATTR float pgd_l2_grad_span_##suffix(const D::Storage* grad, int64_t count) {                            \
    return pgd_l2_grad_span<D>(grad, count);                                                               \
  }                                                                                                        \
  ATTR float pgd_l2_delta_span_##suffix(const D::Storage* x_adv, const D::Storage* grad,                   \
                                        const D::Storage* x_orig, float* delta, float alpha, float grad_norm, \
                                        int64_t count) {                                                   \
    return pgd_l2_delta_span<D>(x_adv, grad, x_orig, delta, alpha, grad_norm, count);                      \
  }                                                                                                        \
  ATTR void pgd_l2_apply_span_##suffix(const float* delta, const D::Storage* x_orig, D::Storage* out,      \
                                       float factor, float lower, float upper, int64_t count) {            \
    pgd_l2_apply_span<D>(delta, x_orig, out, factor, lower, upper, count);                                 \
  }

FASTXAI_DEFINE_BLOCK_KERNELS(Float32, f32, FASTXAI_CLONES)
FASTXAI_DEFINE_BLOCK_KERNELS(BFloat16, bf16, FASTXAI_CLONES)
#if FASTXAI_F16C_VERSIONS
// Same names, one definition per target: GCC builds the dispatcher (C++ function multiversioning).
FASTXAI_DEFINE_BLOCK_KERNELS(Float16, f16, __attribute__((target("default"))))
FASTXAI_DEFINE_BLOCK_KERNELS(Float16X86V3, f16, __attribute__((target("arch=x86-64-v3"), flatten)))
FASTXAI_DEFINE_BLOCK_KERNELS(Float16X86V4, f16, __attribute__((target("arch=x86-64-v4"), flatten)))
#else
FASTXAI_DEFINE_BLOCK_KERNELS(Float16, f16, FASTXAI_CLONES)
#endif

#undef FASTXAI_DEFINE_BLOCK_KERNELS

// Function-pointer table of the block kernels of one element type.
template <typename S>
struct BlockKernels {
  void (*gaussian)(const S*, S*, float, int64_t, int64_t, uint32_t, uint32_t, uint32_t, uint32_t);
  void (*moment)(const S*, const S*, float*, float*, int64_t, int64_t, int64_t);
  void (*path)(const S*, const S*, const float*, S*, int64_t, int64_t, int64_t);
  void (*weighted)(const S*, const float*, float*, int64_t, int64_t, int64_t, int64_t);
  void (*pgd_linf)(const S*, const S*, const S*, S*, const float*, const float*, float, float, int64_t, int64_t,
                   int64_t);
  float (*pgd_l2_grad)(const S*, int64_t);
  float (*pgd_l2_delta)(const S*, const S*, const S*, float*, float, float, int64_t);
  void (*pgd_l2_apply)(const float*, const S*, S*, float, float, float, int64_t);
};

// ---- drivers: split into blocks and run them in parallel -------------------------------------

template <typename S>
void gaussian_driver(const BlockKernels<S>& kernels, const S* x, const float* sigma, S* out, int64_t batch,
                     int64_t features, uint64_t seed, uint32_t sample_offset, int64_t n_samples,
                     uint32_t batch_offset) {
  const int64_t rows = n_samples * batch;
  if (rows == 0 || features == 0) return;
  const int64_t chunks = (features + kBlock - 1) / kBlock;  // kBlock is a multiple of 4
  uint32_t k0, k1;
  philox::key_words(seed, k0, k1);
  // Noise costs ~10x a plain elementwise op per element.
  const int64_t grain = grain_for(10 * std::min(features, kBlock));
  at::parallel_for(0, rows * chunks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t r = task / chunks;
      const int64_t begin = (task % chunks) * kBlock;
      const int64_t end = std::min(begin + kBlock, features);
      const int64_t s = r / batch;
      const int64_t b = r % batch;
      kernels.gaussian(x + b * features, out + r * features, sigma[b], begin, end,
                       sample_offset + static_cast<uint32_t>(s), batch_offset + static_cast<uint32_t>(b), k0,
                       k1);
    }
  });
}

template <typename S>
void moment_driver(const BlockKernels<S>& kernels, const S* values, const S* multiplier, float* total,
                   float* total_sq, int64_t n, int64_t elements) {
  if (n == 0 || elements == 0) return;
  const int64_t blocks = (elements + kBlock - 1) / kBlock;
  const int64_t grain = grain_for(n * std::min(elements, kBlock));
  at::parallel_for(0, blocks, grain, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock;
      const int64_t count = std::min(kBlock, elements - begin);
      kernels.moment(values + begin, multiplier != nullptr ? multiplier + begin : nullptr, total + begin,
                     total_sq != nullptr ? total_sq + begin : nullptr, n, elements, count);
    }
  });
}

template <typename S>
void path_driver(const BlockKernels<S>& kernels, const S* x, const S* baseline, const float* alphas, S* out,
                 int64_t steps, int64_t elements) {
  if (steps == 0 || elements == 0) return;
  const int64_t blocks = (elements + kBlock - 1) / kBlock;
  const int64_t grain = grain_for(steps * std::min(elements, kBlock));
  at::parallel_for(0, blocks, grain, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock;
      const int64_t count = std::min(kBlock, elements - begin);
      kernels.path(x + begin, baseline + begin, alphas, out + begin, steps, elements, count);
    }
  });
}

template <typename S>
void weighted_driver(const BlockKernels<S>& kernels, const S* grads, const float* weights, float* acc,
                     int64_t steps, int64_t batch, int64_t features) {
  if (steps == 0 || batch == 0 || features == 0) return;
  const int64_t chunks = (features + kBlock - 1) / kBlock;
  const int64_t elements = batch * features;
  const int64_t grain = grain_for(steps * std::min(features, kBlock));
  at::parallel_for(0, batch * chunks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / chunks;
      const int64_t begin = b * features + (task % chunks) * kBlock;
      const int64_t count = std::min(kBlock, (b + 1) * features - begin);
      kernels.weighted(grads + begin, weights + b, acc + begin, steps, elements, batch, count);
    }
  });
}

template <typename S>
void pgd_linf_driver(const BlockKernels<S>& kernels, const S* x_adv, const S* grad, const S* x_orig,
                     const float* step_size, const float* eps, S* out, float lower, float upper, int64_t batch,
                     int64_t features) {
  const int64_t elements = batch * features;
  if (elements == 0) return;
  // Blocks of the flat array (not of rows), so that short rows still make full blocks.
  const int64_t blocks = (elements + kBlock - 1) / kBlock;
  const int64_t grain = grain_for(4 * std::min(elements, kBlock));
  at::parallel_for(0, blocks, grain, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t begin = block * kBlock;
      kernels.pgd_linf(x_adv, grad, x_orig, out, step_size, eps, lower, upper, features, begin,
                       std::min(begin + kBlock, elements));
    }
  });
}

// l2: three passes over each row: ||grad||; d and ||d|| (d kept in a float32 scratch); the
// update from d. A row's sum of squares is the in-order sum of the sums of its kBlock-element
// chunks however the work is split, so the result does not depend on the thread count. Many
// rows: one task per row, its passes back to back while the row is in cache. Few rows: tasks
// per chunk, each pass a parallel loop with the chunk sums gathered in between, so one large
// input still uses every thread.
template <typename S>
void pgd_l2_driver(const BlockKernels<S>& kernels, const S* x_adv, const S* grad, const S* x_orig,
                   const float* step_size, const float* eps, S* out, float lower, float upper, int64_t batch,
                   int64_t features) {
  if (batch == 0 || features == 0) return;
  const int64_t chunks = (features + kBlock - 1) / kBlock;
  const auto chunk_count = [features](int64_t chunk) { return std::min(kBlock, features - chunk * kBlock); };
  if (chunks == 1 || batch >= 4 * static_cast<int64_t>(at::get_num_threads())) {
    at::parallel_for(0, batch, grain_for(3 * features), [&](int64_t first, int64_t last) {
      const std::unique_ptr<float[]> delta(new float[features]);  // uninitialised
      for (int64_t row = first; row < last; ++row) {
        const int64_t offset = row * features;
        float grad_sq = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) {
          grad_sq = pgd::add(grad_sq, kernels.pgd_l2_grad(grad + offset + c * kBlock, chunk_count(c)));
        }
        const float grad_norm = pgd::grad_norm(grad_sq);
        float delta_sq = 0.0f;
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t pos = offset + c * kBlock;
          delta_sq = pgd::add(delta_sq, kernels.pgd_l2_delta(x_adv + pos, grad + pos, x_orig + pos,
                                                             delta.get() + c * kBlock, step_size[row], grad_norm,
                                                             chunk_count(c)));
        }
        const float factor = pgd::l2_factor(delta_sq, eps[row]);
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t pos = offset + c * kBlock;
          kernels.pgd_l2_apply(delta.get() + c * kBlock, x_orig + pos, out + pos, factor, lower, upper,
                               chunk_count(c));
        }
      }
    });
    return;
  }
  const int64_t tasks = batch * chunks;
  const int64_t grain = grain_for(3 * kBlock);
  std::vector<float> partial(static_cast<size_t>(tasks));
  std::vector<float> grad_norm(static_cast<size_t>(batch));
  std::vector<float> factor(static_cast<size_t>(batch));
  const std::unique_ptr<float[]> delta(new float[batch * features]);  // uninitialised
  const auto row_sum = [&](int64_t row) {
    float total = 0.0f;
    for (int64_t c = 0; c < chunks; ++c) total = pgd::add(total, partial[row * chunks + c]);
    return total;
  };
  at::parallel_for(0, tasks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      partial[task] = kernels.pgd_l2_grad(grad + task / chunks * features + task % chunks * kBlock,
                                          chunk_count(task % chunks));
    }
  });
  for (int64_t row = 0; row < batch; ++row) grad_norm[row] = pgd::grad_norm(row_sum(row));
  at::parallel_for(0, tasks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t row = task / chunks;
      const int64_t pos = row * features + task % chunks * kBlock;
      partial[task] = kernels.pgd_l2_delta(x_adv + pos, grad + pos, x_orig + pos, delta.get() + pos,
                                           step_size[row], grad_norm[row], chunk_count(task % chunks));
    }
  });
  for (int64_t row = 0; row < batch; ++row) factor[row] = pgd::l2_factor(row_sum(row), eps[row]);
  at::parallel_for(0, tasks, grain, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t row = task / chunks;
      const int64_t pos = row * features + task % chunks * kBlock;
      kernels.pgd_l2_apply(delta.get() + pos, x_orig + pos, out + pos, factor[row], lower, upper,
                           chunk_count(task % chunks));
    }
  });
}

template <typename S>
void pgd_driver(const BlockKernels<S>& kernels, PgdNorm norm, const S* x_adv, const S* grad, const S* x_orig,
                const float* step_size, const float* eps, S* out, float lower, float upper, int64_t batch,
                int64_t features) {
  if (norm == PgdNorm::kL2) {
    pgd_l2_driver(kernels, x_adv, grad, x_orig, step_size, eps, out, lower, upper, batch, features);
  } else {
    pgd_linf_driver(kernels, x_adv, grad, x_orig, step_size, eps, out, lower, upper, batch, features);
  }
}

const BlockKernels<float> kFloat32Kernels{gaussian_span_f32,     moment_span_f32,         path_span_f32,
                                          weighted_span_f32,     pgd_linf_span_f32,       pgd_l2_grad_span_f32,
                                          pgd_l2_delta_span_f32, pgd_l2_apply_span_f32};
const BlockKernels<uint16_t> kFloat16Kernels{gaussian_span_f16,     moment_span_f16,         path_span_f16,
                                             weighted_span_f16,     pgd_linf_span_f16,       pgd_l2_grad_span_f16,
                                             pgd_l2_delta_span_f16, pgd_l2_apply_span_f16};
const BlockKernels<uint16_t> kBFloat16Kernels{gaussian_span_bf16,     moment_span_bf16,         path_span_bf16,
                                              weighted_span_bf16,     pgd_linf_span_bf16,       pgd_l2_grad_span_bf16,
                                              pgd_l2_delta_span_bf16, pgd_l2_apply_span_bf16};

const BlockKernels<uint16_t>& half_kernels(Dtype dtype) {
  return dtype == Dtype::kFloat16 ? kFloat16Kernels : kBFloat16Kernels;
}

}  // namespace

void gaussian_perturb(Dtype dtype, const void* x, const float* sigma, void* out, int64_t batch,
                      int64_t features, uint64_t seed, uint32_t sample_offset, int64_t n_samples,
                      uint32_t batch_offset) {
  if (dtype == Dtype::kFloat32) {
    gaussian_driver(kFloat32Kernels, static_cast<const float*>(x), sigma, static_cast<float*>(out), batch,
                    features, seed, sample_offset, n_samples, batch_offset);
  } else {
    gaussian_driver(half_kernels(dtype), static_cast<const uint16_t*>(x), sigma, static_cast<uint16_t*>(out),
                    batch, features, seed, sample_offset, n_samples, batch_offset);
  }
}

void moment_accumulate(Dtype dtype, const void* values, const void* multiplier, float* total,
                       float* total_sq, int64_t n, int64_t elements) {
  if (dtype == Dtype::kFloat32) {
    moment_driver(kFloat32Kernels, static_cast<const float*>(values), static_cast<const float*>(multiplier),
                  total, total_sq, n, elements);
  } else {
    moment_driver(half_kernels(dtype), static_cast<const uint16_t*>(values),
                  static_cast<const uint16_t*>(multiplier), total, total_sq, n, elements);
  }
}

void path_points(Dtype dtype, const void* x, const void* baseline, const float* alphas, void* out,
                 int64_t steps, int64_t elements) {
  if (dtype == Dtype::kFloat32) {
    path_driver(kFloat32Kernels, static_cast<const float*>(x), static_cast<const float*>(baseline), alphas,
                static_cast<float*>(out), steps, elements);
  } else {
    path_driver(half_kernels(dtype), static_cast<const uint16_t*>(x), static_cast<const uint16_t*>(baseline),
                alphas, static_cast<uint16_t*>(out), steps, elements);
  }
}

void weighted_path_accumulate(Dtype dtype, const void* grads, const float* weights, float* acc,
                              int64_t steps, int64_t batch, int64_t features) {
  if (dtype == Dtype::kFloat32) {
    weighted_driver(kFloat32Kernels, static_cast<const float*>(grads), weights, acc, steps, batch, features);
  } else {
    weighted_driver(half_kernels(dtype), static_cast<const uint16_t*>(grads), weights, acc, steps, batch,
                    features);
  }
}

void pgd_step(Dtype dtype, PgdNorm norm, const void* x_adv, const void* grad, const void* x_orig,
              const float* step_size, const float* eps, void* out, float lower, float upper, int64_t batch,
              int64_t features) {
  if (dtype == Dtype::kFloat32) {
    pgd_driver(kFloat32Kernels, norm, static_cast<const float*>(x_adv), static_cast<const float*>(grad),
               static_cast<const float*>(x_orig), step_size, eps, static_cast<float*>(out), lower, upper, batch,
               features);
  } else {
    pgd_driver(half_kernels(dtype), norm, static_cast<const uint16_t*>(x_adv), static_cast<const uint16_t*>(grad),
               static_cast<const uint16_t*>(x_orig), step_size, eps, static_cast<uint16_t*>(out), lower, upper,
               batch, features);
  }
}

}  // namespace cpu
}  // namespace fastxai
