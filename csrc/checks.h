// Argument validation shared by the CPU (csrc/ops.cpp) and CUDA (csrc/cuda/ops_cuda.cpp) host
// code. Every message names the argument; dtype problems raise TypeError, shape and range
// problems ValueError, device and layout problems RuntimeError (as in fastxai/ops.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "dtype.h"

namespace fastxai {
namespace checks {

constexpr int64_t kCounterLimit = int64_t{1} << 32;    // sample / batch indices are uint32 counters
constexpr int64_t kFeatureLimit = int64_t{1} << 34;    // element index >> 2 must fit in uint32

// float32 / float16 / bfloat16 -> Dtype; anything else is a TypeError naming `name`.
inline Dtype element_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::ScalarType::Float:
      return Dtype::kFloat32;
    case at::ScalarType::Half:
      return Dtype::kFloat16;
    case at::ScalarType::BFloat16:
      return Dtype::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "fastxai: ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type(),
                       " (other dtypes run on the reference backend)");
  }
  return Dtype::kFloat32;  // unreachable
}

inline void check_float32(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::ScalarType::Float, "fastxai: ", name, " must be float32, got ",
                   t.scalar_type());
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "fastxai: ", name, " must be contiguous");
}

// `t` must live on `device` (the device of the op's first tensor argument).
inline void check_device(const at::Tensor& t, const char* name, const c10::Device& device,
                         c10::DeviceType expected_type) {
  TORCH_CHECK(t.device().type() == expected_type, "fastxai: ", name, " must be on ",
              c10::DeviceTypeName(expected_type, /*lower_case=*/true), ", got ", t.device());
  TORCH_CHECK(t.device() == device, "fastxai: ", name, " is on ", t.device(), " but the other arguments are on ",
              device);
}

inline void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, "fastxai: ", name, " must have shape ", expected, ", got ",
                    t.sizes());
}

// Shape of a leading dimension followed by `shape`.
inline std::vector<int64_t> prepend(int64_t leading, at::IntArrayRef shape) {
  std::vector<int64_t> sizes;
  sizes.reserve(shape.size() + 1);
  sizes.push_back(leading);
  sizes.insert(sizes.end(), shape.begin(), shape.end());
  return sizes;
}

// The shape of the perturbation ops' output: [batch, copies, *features], or [copies, batch, *features]
// when copy_major.
inline std::vector<int64_t> copies_shape(int64_t batch, int64_t copies, at::IntArrayRef features,
                                         bool copy_major) {
  return copy_major ? prepend(copies, prepend(batch, features)) : prepend(batch, prepend(copies, features));
}

// ---- per-op validation: returns the sizes the kernels need -----------------------------------

struct GaussianArgs {
  Dtype dtype;
  int64_t batch;
  int64_t features;
};

inline GaussianArgs check_gaussian_perturb(const at::Tensor& x, const at::Tensor& sigma, int64_t seed,
                                           int64_t sample_offset, int64_t n_samples, int64_t batch_offset,
                                           c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "fastxai: x must have a batch dimension, got a 0-d tensor");
  check_device(x, "x", x.device(), device_type);
  check_contiguous(x, "x");
  const int64_t batch = x.size(0);
  check_float32(sigma, "sigma");
  check_device(sigma, "sigma", x.device(), device_type);
  check_shape(sigma, "sigma", {batch});
  check_contiguous(sigma, "sigma");
  TORCH_CHECK_VALUE(seed >= 0, "fastxai: seed must be in [0, 2**63), got ", seed);
  TORCH_CHECK_VALUE(n_samples >= 0, "fastxai: n_samples must be >= 0, got ", n_samples);
  TORCH_CHECK_VALUE(sample_offset >= 0 && sample_offset <= kCounterLimit - n_samples,
                    "fastxai: sample_offset + n_samples must stay within [0, 2**32), got sample_offset=",
                    sample_offset, ", n_samples=", n_samples);
  TORCH_CHECK_VALUE(batch_offset >= 0 && batch_offset <= kCounterLimit - batch,
                    "fastxai: batch_offset + batch must stay within [0, 2**32), got batch_offset=", batch_offset,
                    ", batch=", batch);
  const int64_t features = c10::multiply_integers(x.sizes().slice(1));
  TORCH_CHECK_VALUE(features <= kFeatureLimit, "fastxai: one input of x may hold at most 2**34 elements, got ",
                    features);
  return {dtype, batch, features};
}

struct MomentArgs {
  Dtype dtype;
  int64_t n;
  int64_t elements;
};

inline MomentArgs check_moment_accumulate(const at::Tensor& values, const at::Tensor& total,
                                          const std::optional<at::Tensor>& total_sq,
                                          const std::optional<at::Tensor>& multiplier,
                                          c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(values, "values");
  TORCH_CHECK_VALUE(values.dim() >= 2, "fastxai: values must be [n, B, ...], got shape ", values.sizes());
  check_device(values, "values", values.device(), device_type);
  check_contiguous(values, "values");
  const at::IntArrayRef acc_shape = values.sizes().slice(1);
  check_float32(total, "total");
  check_device(total, "total", values.device(), device_type);
  check_shape(total, "total", acc_shape);
  check_contiguous(total, "total");
  if (total_sq.has_value()) {
    check_float32(*total_sq, "total_sq");
    check_device(*total_sq, "total_sq", values.device(), device_type);
    check_shape(*total_sq, "total_sq", acc_shape);
    check_contiguous(*total_sq, "total_sq");
    TORCH_CHECK_VALUE(total.numel() == 0 || total_sq->const_data_ptr() != total.const_data_ptr(),
                      "fastxai: total and total_sq must be different tensors");
  }
  if (multiplier.has_value()) {
    TORCH_CHECK_TYPE(multiplier->scalar_type() == values.scalar_type(), "fastxai: multiplier must have the dtype of values (",
                     values.scalar_type(), "), got ", multiplier->scalar_type());
    check_device(*multiplier, "multiplier", values.device(), device_type);
    check_shape(*multiplier, "multiplier", values.sizes());
    check_contiguous(*multiplier, "multiplier");
  }
  return {dtype, values.size(0), c10::multiply_integers(acc_shape)};
}

struct PathArgs {
  Dtype dtype;
  int64_t steps;
  int64_t elements;
};

inline PathArgs check_path_points(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas,
                                  c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(x, "x");
  check_device(x, "x", x.device(), device_type);
  check_contiguous(x, "x");
  TORCH_CHECK_TYPE(baseline.scalar_type() == x.scalar_type(), "fastxai: baseline must have the dtype of x (",
                   x.scalar_type(), "), got ", baseline.scalar_type());
  check_device(baseline, "baseline", x.device(), device_type);
  check_shape(baseline, "baseline", x.sizes());
  check_contiguous(baseline, "baseline");
  check_float32(alphas, "alphas");
  check_device(alphas, "alphas", x.device(), device_type);
  TORCH_CHECK_VALUE(alphas.dim() == 1, "fastxai: alphas must be 1-d, got shape ", alphas.sizes());
  check_contiguous(alphas, "alphas");
  return {dtype, alphas.size(0), x.numel()};
}

struct WeightedArgs {
  Dtype dtype;
  int64_t steps;
  int64_t batch;
  int64_t features;
};

inline WeightedArgs check_weighted_path_accumulate(const at::Tensor& grads, const at::Tensor& weights,
                                                   const at::Tensor& acc, c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(grads, "grads");
  TORCH_CHECK_VALUE(grads.dim() >= 2, "fastxai: grads must be [K, B, ...], got shape ", grads.sizes());
  check_device(grads, "grads", grads.device(), device_type);
  check_contiguous(grads, "grads");
  const int64_t steps = grads.size(0);
  const int64_t batch = grads.size(1);
  check_float32(weights, "weights");
  check_device(weights, "weights", grads.device(), device_type);
  check_shape(weights, "weights", {steps, batch});
  check_contiguous(weights, "weights");
  check_float32(acc, "acc");
  check_device(acc, "acc", grads.device(), device_type);
  check_shape(acc, "acc", grads.sizes().slice(1));
  check_contiguous(acc, "acc");
  return {dtype, steps, batch, c10::multiply_integers(grads.sizes().slice(2))};
}

struct PgdArgs {
  Dtype dtype;
  PgdNorm norm;
  int64_t batch;
  int64_t features;
  float lower;  // the bounds rounded to float32 as torch.clamp rounds them
  float upper;
};

// A double rounded to the nearest float32 (ties to even), +-inf beyond float32's range: what a
// float32 kernel compares with (static_cast alone is undefined for out-of-range values).
inline float round_to_float(double value) {
  constexpr double kHalfUlpPastMax = 0x1.ffffffp127;  // FLT_MAX + half an ulp: rounds to inf
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (value >= kHalfUlpPastMax) return kInf;
  if (value <= -kHalfUlpPastMax) return -kInf;
  return static_cast<float>(value);
}

inline PgdArgs check_pgd_step(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                              const at::Tensor& step_size, const at::Tensor& eps, double lower, double upper,
                              std::string_view norm, c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(x_adv, "x_adv");
  TORCH_CHECK_VALUE(x_adv.dim() >= 1, "fastxai: x_adv must be [B, ...], got a 0-d tensor");
  check_device(x_adv, "x_adv", x_adv.device(), device_type);
  check_contiguous(x_adv, "x_adv");
  for (const auto& [tensor, name] : {std::pair<const at::Tensor&, const char*>{grad, "grad"},
                                     std::pair<const at::Tensor&, const char*>{x_orig, "x_orig"}}) {
    TORCH_CHECK_TYPE(tensor.scalar_type() == x_adv.scalar_type(), "fastxai: ", name,
                     " must have the dtype of x_adv (", x_adv.scalar_type(), "), got ", tensor.scalar_type());
    check_device(tensor, name, x_adv.device(), device_type);
    check_shape(tensor, name, x_adv.sizes());
    check_contiguous(tensor, name);
  }
  const int64_t batch = x_adv.size(0);
  for (const auto& [tensor, name] : {std::pair<const at::Tensor&, const char*>{step_size, "step_size"},
                                     std::pair<const at::Tensor&, const char*>{eps, "eps"}}) {
    check_float32(tensor, name);
    check_device(tensor, name, x_adv.device(), device_type);
    check_shape(tensor, name, {batch});
    check_contiguous(tensor, name);
  }
  PgdNorm kind = PgdNorm::kLinf;
  if (norm == "l2") {
    kind = PgdNorm::kL2;
  } else {
    TORCH_CHECK_VALUE(norm == "linf", "fastxai: norm must be 'linf' or 'l2', got '", norm, "'");
  }
  TORCH_CHECK_VALUE(lower <= upper, "fastxai: lower must be <= upper, got lower=", lower, ", upper=", upper);
  return {dtype, kind, batch, c10::multiply_integers(x_adv.sizes().slice(1)), round_to_float(lower),
          round_to_float(upper)};
}

// ---- LRP and perturbation ops ------------------------------------------------------------------

// `t` must have `like`'s dtype, shape and device, and be contiguous.
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name,
                       c10::DeviceType device_type) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), "fastxai: ", name, " must have the dtype of ", like_name,
                   " (", like.scalar_type(), "), got ", t.scalar_type());
  check_device(t, name, like.device(), device_type);
  check_shape(t, name, like.sizes());
  check_contiguous(t, name);
}

// A finite double that stays finite in float32 (>= minimum when given), rounded to float32.
inline float check_float_scalar(double value, const char* name, bool non_negative) {
  const float rounded = round_to_float(value);
  TORCH_CHECK_VALUE(std::isfinite(value) && std::isfinite(rounded) && (!non_negative || value >= 0.0),
                    "fastxai: ", name, " must be finite", non_negative ? " and >= 0" : "",
                    " (within float32's range), got ", value);
  return rounded;
}

struct ElementwiseArgs {
  Dtype dtype;
  int64_t numel;
};

inline ElementwiseArgs check_lrp_divide(const at::Tensor& relevance, const at::Tensor& z, double eps,
                                        c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(relevance, "relevance");
  check_device(relevance, "relevance", relevance.device(), device_type);
  check_contiguous(relevance, "relevance");
  check_like(z, "z", relevance, "relevance", device_type);
  check_float_scalar(eps, "eps", /*non_negative=*/true);
  return {dtype, relevance.numel()};
}

inline ElementwiseArgs check_lrp_product(const at::Tensor& activation, const at::Tensor& c,
                                         const std::optional<at::Tensor>& c_neg, double alpha, double beta,
                                         c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(activation, "activation");
  check_device(activation, "activation", activation.device(), device_type);
  check_contiguous(activation, "activation");
  check_like(c, "c", activation, "activation", device_type);
  check_float_scalar(alpha, "alpha", /*non_negative=*/false);
  check_float_scalar(beta, "beta", /*non_negative=*/false);
  if (c_neg.has_value()) {
    check_like(*c_neg, "c_neg", activation, "activation", device_type);
  } else {
    TORCH_CHECK_VALUE(alpha == 1.0 && beta == 0.0, "fastxai: alpha and beta apply only with c_neg, got alpha=",
                      alpha, ", beta=", beta);
  }
  return {dtype, activation.numel()};
}

struct BlendArgs {
  Dtype dtype;
  bool per_input;  // feature_mask is [B, *F] rather than [*F]
  int64_t batch;
  int64_t perturbations;
  int64_t groups;
  int64_t features;
};

// The values of feature_mask are not read here (that would cost a device sync on a GPU):
// fastxai.ops checks their range; the CPU host code checks it too, the CUDA kernel writes NaN
// for an out-of-range id rather than reading out of bounds.
inline BlendArgs check_masked_blend(const at::Tensor& inputs, const at::Tensor& baselines,
                                    const at::Tensor& feature_mask, const at::Tensor& keep,
                                    c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(inputs, "inputs");
  TORCH_CHECK_VALUE(inputs.dim() >= 1, "fastxai: inputs must have a batch dimension, got a 0-d tensor");
  check_device(inputs, "inputs", inputs.device(), device_type);
  check_contiguous(inputs, "inputs");
  check_like(baselines, "baselines", inputs, "inputs", device_type);
  TORCH_CHECK_TYPE(feature_mask.scalar_type() == at::ScalarType::Long,
                   "fastxai: feature_mask must be an int64 tensor of group ids, got ", feature_mask.scalar_type());
  check_device(feature_mask, "feature_mask", inputs.device(), device_type);
  const at::IntArrayRef feature_shape = inputs.sizes().slice(1);
  const bool per_input = feature_mask.dim() == inputs.dim();
  TORCH_CHECK_VALUE(feature_mask.sizes() == feature_shape || feature_mask.sizes() == inputs.sizes(),
                    "fastxai: feature_mask must have shape ", feature_shape, " (shared) or ", inputs.sizes(),
                    " (per input), got ", feature_mask.sizes());
  check_contiguous(feature_mask, "feature_mask");
  const int64_t batch = inputs.size(0);
  check_float32(keep, "keep");
  check_device(keep, "keep", inputs.device(), device_type);
  TORCH_CHECK_VALUE(keep.dim() == 3 && keep.size(0) == batch, "fastxai: keep must have shape (", batch,
                    ", P, M) (batch, perturbations, groups), got ", keep.sizes());
  check_contiguous(keep, "keep");
  return {dtype, per_input, batch, keep.size(1), keep.size(2), c10::multiply_integers(feature_shape)};
}

struct OccludeArgs {
  Dtype dtype;
  int64_t batch;
  int64_t windows;  // W, the number of window positions
};

inline OccludeArgs check_occlude(const at::Tensor& inputs, const at::Tensor& baselines, at::IntArrayRef window,
                                 at::IntArrayRef strides, int64_t start, int64_t count,
                                 c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(inputs, "inputs");
  TORCH_CHECK_VALUE(inputs.dim() >= 2, "fastxai: inputs must be [B, *F] with at least one feature dimension, got ",
                    inputs.sizes());
  check_device(inputs, "inputs", inputs.device(), device_type);
  check_contiguous(inputs, "inputs");
  check_like(baselines, "baselines", inputs, "inputs", device_type);
  const at::IntArrayRef feature_shape = inputs.sizes().slice(1);
  const auto ndim = static_cast<int64_t>(feature_shape.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(window.size()) == ndim, "fastxai: window must have ", ndim,
                    " entries (one per feature dimension), got ", window);
  TORCH_CHECK_VALUE(static_cast<int64_t>(strides.size()) == ndim, "fastxai: strides must have ", ndim,
                    " entries (one per feature dimension), got ", strides);
  int64_t windows = 1;
  for (int64_t d = 0; d < ndim; ++d) {
    TORCH_CHECK_VALUE(window[d] >= 1, "fastxai: window must hold positive sizes, got ", window);
    TORCH_CHECK_VALUE(strides[d] >= 1, "fastxai: strides must hold positive sizes, got ", strides);
    TORCH_CHECK_VALUE(window[d] <= feature_shape[d], "fastxai: window ", window,
                      " is larger than the input's features ", feature_shape);
    windows *= (feature_shape[d] - window[d]) / strides[d] + 1;
  }
  TORCH_CHECK_VALUE(start >= 0 && start <= windows, "fastxai: start must be in [0, ", windows, "], got ", start);
  TORCH_CHECK_VALUE(count >= 0 && count <= windows - start, "fastxai: count must be in [0, ", windows - start,
                    "] (start=", start, ", ", windows, " windows), got ", count);
  return {dtype, inputs.size(0), windows};
}

struct RescaleArgs {
  Dtype dtype;
  int64_t numel;
  float slope;
  float eps;
};

inline RescaleArgs check_rescale_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& reference,
                                          double eps, double negative_slope, c10::DeviceType device_type) {
  const Dtype dtype = element_dtype(grad, "grad");
  check_device(grad, "grad", grad.device(), device_type);
  check_contiguous(grad, "grad");
  check_like(x, "x", grad, "grad", device_type);
  check_like(reference, "reference", grad, "grad", device_type);
  const float slope = check_float_scalar(negative_slope, "negative_slope", /*non_negative=*/false);
  const float rounded_eps = check_float_scalar(eps, "eps", /*non_negative=*/true);
  TORCH_CHECK_VALUE(rounded_eps > 0.0f, "fastxai: eps must be > 0 (in float32), got ", eps);
  return {dtype, grad.numel(), slope, rounded_eps};
}

}  // namespace checks
}  // namespace fastxai
