// The fused ops as torch operators (namespace `fastxai`), their CPU implementations, and the
// Python module `fastxai._C` whose import registers them (torch.ops.fastxai.*).
//
// The schemas mirror fastxai/reference/ops.py. Host code here validates (csrc/checks.h),
// allocates outputs and calls the raw-pointer CPU kernels (csrc/cpu/kernels.cpp). The CUDA
// implementations live in csrc/cuda/ops_cuda.cpp, compiled only with FASTXAI_WITH_CUDA.

#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "checks.h"
#include "cpu/kernels.h"

namespace fastxai {
namespace {

constexpr c10::DeviceType kCPU = c10::DeviceType::CPU;

at::Tensor gaussian_perturb_cpu(const at::Tensor& x, const at::Tensor& sigma, int64_t seed, int64_t sample_offset,
                                int64_t n_samples, int64_t batch_offset) {
  const auto args = checks::check_gaussian_perturb(x, sigma, seed, sample_offset, n_samples, batch_offset, kCPU);
  at::Tensor out = at::empty(checks::prepend(n_samples, x.sizes()), x.options());
  cpu::gaussian_perturb(args.dtype, x.const_data_ptr(), sigma.const_data_ptr<float>(), out.mutable_data_ptr(),
                        args.batch, args.features, static_cast<uint64_t>(seed),
                        static_cast<uint32_t>(sample_offset), n_samples, static_cast<uint32_t>(batch_offset));
  return out;
}

void moment_accumulate_cpu(const at::Tensor& values, const at::Tensor& total,
                           const std::optional<at::Tensor>& total_sq, const std::optional<at::Tensor>& multiplier) {
  const auto args = checks::check_moment_accumulate(values, total, total_sq, multiplier, kCPU);
  cpu::moment_accumulate(args.dtype, values.const_data_ptr(),
                         multiplier.has_value() ? multiplier->const_data_ptr() : nullptr,
                         total.mutable_data_ptr<float>(),
                         total_sq.has_value() ? total_sq->mutable_data_ptr<float>() : nullptr, args.n,
                         args.elements);
}

at::Tensor path_points_cpu(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas) {
  const auto args = checks::check_path_points(x, baseline, alphas, kCPU);
  at::Tensor out = at::empty(checks::prepend(args.steps, x.sizes()), x.options());
  cpu::path_points(args.dtype, x.const_data_ptr(), baseline.const_data_ptr(), alphas.const_data_ptr<float>(),
                   out.mutable_data_ptr(), args.steps, args.elements);
  return out;
}

at::Tensor pgd_step_cpu(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                        const at::Tensor& step_size, const at::Tensor& eps, double lower, double upper,
                        c10::string_view norm) {
  const auto args = checks::check_pgd_step(x_adv, grad, x_orig, step_size, eps, lower, upper, norm, kCPU);
  at::Tensor out = at::empty(x_adv.sizes(), x_adv.options());
  cpu::pgd_step(args.dtype, args.norm, x_adv.const_data_ptr(), grad.const_data_ptr(), x_orig.const_data_ptr(),
                step_size.const_data_ptr<float>(), eps.const_data_ptr<float>(), out.mutable_data_ptr(), args.lower,
                args.upper, args.batch, args.features);
  return out;
}

void weighted_path_accumulate_cpu(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& acc) {
  const auto args = checks::check_weighted_path_accumulate(grads, weights, acc, kCPU);
  cpu::weighted_path_accumulate(args.dtype, grads.const_data_ptr(), weights.const_data_ptr<float>(),
                                acc.mutable_data_ptr<float>(), args.steps, args.batch, args.features);
}

at::Tensor lrp_divide_cpu(const at::Tensor& relevance, const at::Tensor& z, double eps) {
  const auto args = checks::check_lrp_divide(relevance, z, eps, kCPU);
  at::Tensor out = at::empty(relevance.sizes(), relevance.options());
  cpu::lrp_divide(args.dtype, relevance.const_data_ptr(), z.const_data_ptr(), out.mutable_data_ptr(),
                  checks::round_to_float(eps), args.numel);
  return out;
}

at::Tensor lrp_product_cpu(const at::Tensor& activation, const at::Tensor& c, const std::optional<at::Tensor>& c_neg,
                           double alpha, double beta) {
  const auto args = checks::check_lrp_product(activation, c, c_neg, alpha, beta, kCPU);
  at::Tensor out = at::empty(activation.sizes(), activation.options());
  cpu::lrp_product(args.dtype, activation.const_data_ptr(), c.const_data_ptr(),
                   c_neg.has_value() ? c_neg->const_data_ptr() : nullptr, out.mutable_data_ptr(),
                   checks::round_to_float(alpha), checks::round_to_float(beta), args.numel);
  return out;
}

at::Tensor masked_blend_cpu(const at::Tensor& inputs, const at::Tensor& baselines, const at::Tensor& feature_mask,
                            const at::Tensor& keep, bool copy_major) {
  const auto args = checks::check_masked_blend(inputs, baselines, feature_mask, keep, kCPU);
  if (feature_mask.numel() > 0) {  // the kernel indexes keep with these ids
    const auto [low, high] = at::aminmax(feature_mask);
    const int64_t lowest = low.item<int64_t>();
    const int64_t highest = high.item<int64_t>();
    TORCH_CHECK_VALUE(lowest >= 0 && highest < args.groups, "fastxai: feature_mask values must be group ids in [0, ",
                      args.groups, "), got values in [", lowest, ", ", highest, "]");
  }
  at::Tensor out = at::empty(
      checks::copies_shape(args.batch, args.perturbations, inputs.sizes().slice(1), copy_major), inputs.options());
  cpu::masked_blend(args.dtype, inputs.const_data_ptr(), baselines.const_data_ptr(),
                    feature_mask.const_data_ptr<int64_t>(), args.per_input, keep.const_data_ptr<float>(),
                    out.mutable_data_ptr(), args.batch, args.perturbations, args.groups, args.features, copy_major);
  return out;
}

at::Tensor occlude_cpu(const at::Tensor& inputs, const at::Tensor& baselines, at::IntArrayRef window,
                       at::IntArrayRef strides, int64_t start, int64_t count, bool copy_major) {
  const auto args = checks::check_occlude(inputs, baselines, window, strides, start, count, kCPU);
  at::Tensor out =
      at::empty(checks::copies_shape(args.batch, count, inputs.sizes().slice(1), copy_major), inputs.options());
  const at::IntArrayRef sizes = inputs.sizes().slice(1);
  cpu::occlude(inputs.element_size(), inputs.const_data_ptr(), baselines.const_data_ptr(), out.mutable_data_ptr(),
               args.batch, sizes.data(), window.data(), strides.data(), static_cast<int64_t>(sizes.size()), start,
               count, copy_major);
  return out;
}

at::Tensor rescale_backward_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& reference, double eps,
                                double negative_slope) {
  const auto args = checks::check_rescale_backward(grad, x, reference, eps, negative_slope, kCPU);
  at::Tensor out = at::empty(grad.sizes(), grad.options());
  cpu::rescale_backward(args.dtype, grad.const_data_ptr(), x.const_data_ptr(), reference.const_data_ptr(),
                        out.mutable_data_ptr(), args.slope, args.eps, args.numel);
  return out;
}

}  // namespace
}  // namespace fastxai

TORCH_LIBRARY(fastxai, m) {
  // Fake (meta) implementations for torch.compile are registered from Python.
  m.set_python_module("fastxai._native");
  m.def(
      "gaussian_perturb(Tensor x, Tensor sigma, int seed, int sample_offset, int n_samples, int batch_offset) "
      "-> Tensor");
  m.def("moment_accumulate(Tensor values, Tensor(a!) total, Tensor(b!)? total_sq, Tensor? multiplier) -> ()");
  m.def("path_points(Tensor x, Tensor baseline, Tensor alphas) -> Tensor");
  m.def(
      "pgd_step(Tensor x_adv, Tensor grad, Tensor x_orig, Tensor step_size, Tensor eps, float lower, float upper, "
      "str norm) -> Tensor");
  m.def("weighted_path_accumulate(Tensor grads, Tensor weights, Tensor(a!) acc) -> ()");
  m.def("lrp_divide(Tensor relevance, Tensor z, float eps) -> Tensor");
  m.def("lrp_product(Tensor activation, Tensor c, Tensor? c_neg, float alpha, float beta) -> Tensor");
  m.def(
      "masked_blend(Tensor inputs, Tensor baselines, Tensor feature_mask, Tensor keep, bool copy_major=False) "
      "-> Tensor");
  m.def(
      "occlude(Tensor inputs, Tensor baselines, int[] window, int[] strides, int start, int count, "
      "bool copy_major=False) -> Tensor");
  m.def("rescale_backward(Tensor grad, Tensor x, Tensor reference, float eps, float negative_slope=0.0) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastxai, CPU, m) {
  m.impl("gaussian_perturb", &fastxai::gaussian_perturb_cpu);
  m.impl("moment_accumulate", &fastxai::moment_accumulate_cpu);
  m.impl("path_points", &fastxai::path_points_cpu);
  m.impl("pgd_step", &fastxai::pgd_step_cpu);
  m.impl("weighted_path_accumulate", &fastxai::weighted_path_accumulate_cpu);
  m.impl("lrp_divide", &fastxai::lrp_divide_cpu);
  m.impl("rescale_backward", &fastxai::rescale_backward_cpu);
  m.impl("lrp_product", &fastxai::lrp_product_cpu);
  m.impl("masked_blend", &fastxai::masked_blend_cpu);
  m.impl("occlude", &fastxai::occlude_cpu);
}

PYBIND11_MODULE(_C, module) {
  module.doc() =
      "fastxai native backend: importing it registers the torch.ops.fastxai operators (CPU, and CUDA when built "
      "with it). Use fastxai.ops or fastxai._native rather than this module.";
  module.def(
      "with_cuda",
      []() {
#ifdef FASTXAI_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether the extension was compiled with its CUDA kernels.");
}
