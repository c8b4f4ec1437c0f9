// CUDA implementations of the fastxai operators (host side, compiled by the C++ compiler).
//
// Validates with the checks shared with the CPU path, makes the tensors' device current,
// launches the torch-free kernels of kernels.cu on torch's current stream
// (c10::cuda::getCurrentCUDAStream, the stream at::cuda::getCurrentCUDAStream returns; the c10
// header avoids ATen/cuda/CUDAContext.h's dependency on the cuBLAS/cuSPARSE headers) and turns a CUDA
// error into a RuntimeError. Built only with FASTXAI_WITH_CUDA.

#ifdef FASTXAI_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/string_view.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "checks.h"
#include "cuda/kernels.h"

namespace fastxai {
namespace {

constexpr c10::DeviceType kCUDA = c10::DeviceType::CUDA;

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "fastxai: CUDA kernel of ", op, " failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

at::Tensor gaussian_perturb_cuda(const at::Tensor& x, const at::Tensor& sigma, int64_t seed, int64_t sample_offset,
                                 int64_t n_samples, int64_t batch_offset) {
  const auto args = checks::check_gaussian_perturb(x, sigma, seed, sample_offset, n_samples, batch_offset, kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(checks::prepend(n_samples, x.sizes()), x.options());
  check_launch(cuda::launch_gaussian_perturb(args.dtype, x.const_data_ptr(), sigma.const_data_ptr<float>(),
                                             out.mutable_data_ptr(), args.batch, args.features,
                                             static_cast<uint64_t>(seed), static_cast<uint32_t>(sample_offset),
                                             n_samples, static_cast<uint32_t>(batch_offset),
                                             c10::cuda::getCurrentCUDAStream().stream()),
               "gaussian_perturb");
  return out;
}

void moment_accumulate_cuda(const at::Tensor& values, const at::Tensor& total,
                            const std::optional<at::Tensor>& total_sq, const std::optional<at::Tensor>& multiplier) {
  const auto args = checks::check_moment_accumulate(values, total, total_sq, multiplier, kCUDA);
  const c10::cuda::CUDAGuard guard(values.device());
  check_launch(cuda::launch_moment_accumulate(
                   args.dtype, values.const_data_ptr(),
                   multiplier.has_value() ? multiplier->const_data_ptr() : nullptr, total.mutable_data_ptr<float>(),
                   total_sq.has_value() ? total_sq->mutable_data_ptr<float>() : nullptr, args.n, args.elements,
                   c10::cuda::getCurrentCUDAStream().stream()),
               "moment_accumulate");
}

at::Tensor path_points_cuda(const at::Tensor& x, const at::Tensor& baseline, const at::Tensor& alphas) {
  const auto args = checks::check_path_points(x, baseline, alphas, kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(checks::prepend(args.steps, x.sizes()), x.options());
  check_launch(cuda::launch_path_points(args.dtype, x.const_data_ptr(), baseline.const_data_ptr(),
                                        alphas.const_data_ptr<float>(), out.mutable_data_ptr(), args.steps,
                                        args.elements, c10::cuda::getCurrentCUDAStream().stream()),
               "path_points");
  return out;
}

at::Tensor pgd_step_cuda(const at::Tensor& x_adv, const at::Tensor& grad, const at::Tensor& x_orig,
                         const at::Tensor& step_size, const at::Tensor& eps, double lower, double upper,
                         c10::string_view norm) {
  const auto args = checks::check_pgd_step(x_adv, grad, x_orig, step_size, eps, lower, upper, norm, kCUDA);
  const c10::cuda::CUDAGuard guard(x_adv.device());
  at::Tensor out = at::empty(x_adv.sizes(), x_adv.options());
  check_launch(cuda::launch_pgd_step(args.dtype, args.norm, x_adv.const_data_ptr(), grad.const_data_ptr(),
                                     x_orig.const_data_ptr(), step_size.const_data_ptr<float>(),
                                     eps.const_data_ptr<float>(), out.mutable_data_ptr(), args.lower, args.upper,
                                     args.batch, args.features, c10::cuda::getCurrentCUDAStream().stream()),
               "pgd_step");
  return out;
}

void weighted_path_accumulate_cuda(const at::Tensor& grads, const at::Tensor& weights, const at::Tensor& acc) {
  const auto args = checks::check_weighted_path_accumulate(grads, weights, acc, kCUDA);
  const c10::cuda::CUDAGuard guard(grads.device());
  check_launch(cuda::launch_weighted_path_accumulate(args.dtype, grads.const_data_ptr(),
                                                     weights.const_data_ptr<float>(), acc.mutable_data_ptr<float>(),
                                                     args.steps, args.batch, args.features,
                                                     c10::cuda::getCurrentCUDAStream().stream()),
               "weighted_path_accumulate");
}

at::Tensor lrp_divide_cuda(const at::Tensor& relevance, const at::Tensor& z, double eps) {
  const auto args = checks::check_lrp_divide(relevance, z, eps, kCUDA);
  const c10::cuda::CUDAGuard guard(relevance.device());
  at::Tensor out = at::empty(relevance.sizes(), relevance.options());
  check_launch(cuda::launch_lrp_divide(args.dtype, relevance.const_data_ptr(), z.const_data_ptr(),
                                       out.mutable_data_ptr(), checks::round_to_float(eps), args.numel,
                                       c10::cuda::getCurrentCUDAStream().stream()),
               "lrp_divide");
  return out;
}

at::Tensor lrp_product_cuda(const at::Tensor& activation, const at::Tensor& c, const std::optional<at::Tensor>& c_neg,
                            double alpha, double beta) {
  const auto args = checks::check_lrp_product(activation, c, c_neg, alpha, beta, kCUDA);
  const c10::cuda::CUDAGuard guard(activation.device());
  at::Tensor out = at::empty(activation.sizes(), activation.options());
  check_launch(cuda::launch_lrp_product(args.dtype, activation.const_data_ptr(), c.const_data_ptr(),
                                        c_neg.has_value() ? c_neg->const_data_ptr() : nullptr, out.mutable_data_ptr(),
                                        checks::round_to_float(alpha), checks::round_to_float(beta), args.numel,
                                        c10::cuda::getCurrentCUDAStream().stream()),
               "lrp_product");
  return out;
}

at::Tensor masked_blend_cuda(const at::Tensor& inputs, const at::Tensor& baselines, const at::Tensor& feature_mask,
                             const at::Tensor& keep, bool copy_major) {
  const auto args = checks::check_masked_blend(inputs, baselines, feature_mask, keep, kCUDA);
  const c10::cuda::CUDAGuard guard(inputs.device());
  at::Tensor out = at::empty(
      checks::copies_shape(args.batch, args.perturbations, inputs.sizes().slice(1), copy_major), inputs.options());
  check_launch(cuda::launch_masked_blend(args.dtype, inputs.const_data_ptr(), baselines.const_data_ptr(),
                                         feature_mask.const_data_ptr<int64_t>(), args.per_input,
                                         keep.const_data_ptr<float>(), out.mutable_data_ptr(), args.batch,
                                         args.perturbations, args.groups, args.features, copy_major,
                                         c10::cuda::getCurrentCUDAStream().stream()),
               "masked_blend");
  return out;
}

at::Tensor occlude_cuda(const at::Tensor& inputs, const at::Tensor& baselines, at::IntArrayRef window,
                        at::IntArrayRef strides, int64_t start, int64_t count, bool copy_major) {
  const auto args = checks::check_occlude(inputs, baselines, window, strides, start, count, kCUDA);
  const at::IntArrayRef sizes = inputs.sizes().slice(1);
  int64_t used_dims = 0;
  for (const int64_t size : sizes) used_dims += size != 1;
  TORCH_CHECK_VALUE(used_dims <= cuda::kOccludeMaxDims, "fastxai: the CUDA occlude handles inputs with at most ",
                    cuda::kOccludeMaxDims, " feature dimensions of size > 1, got inputs of shape ", inputs.sizes());
  const c10::cuda::CUDAGuard guard(inputs.device());
  at::Tensor out = at::empty(checks::copies_shape(args.batch, count, sizes, copy_major), inputs.options());
  check_launch(cuda::launch_occlude(inputs.element_size(), inputs.const_data_ptr(), baselines.const_data_ptr(),
                                    out.mutable_data_ptr(), args.batch, sizes.data(), window.data(), strides.data(),
                                    static_cast<int64_t>(sizes.size()), start, count, copy_major,
                                    c10::cuda::getCurrentCUDAStream().stream()),
               "occlude");
  return out;
}

at::Tensor rescale_backward_cuda(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& reference,
                                 double eps, double negative_slope) {
  const auto args = checks::check_rescale_backward(grad, x, reference, eps, negative_slope, kCUDA);
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor out = at::empty(grad.sizes(), grad.options());
  check_launch(cuda::launch_rescale_backward(args.dtype, grad.const_data_ptr(), x.const_data_ptr(),
                                             reference.const_data_ptr(), out.mutable_data_ptr(), args.slope,
                                             args.eps, args.numel, c10::cuda::getCurrentCUDAStream().stream()),
               "rescale_backward");
  return out;
}

}  // namespace
}  // namespace fastxai

TORCH_LIBRARY_IMPL(fastxai, CUDA, m) {
  m.impl("gaussian_perturb", &fastxai::gaussian_perturb_cuda);
  m.impl("moment_accumulate", &fastxai::moment_accumulate_cuda);
  m.impl("path_points", &fastxai::path_points_cuda);
  m.impl("pgd_step", &fastxai::pgd_step_cuda);
  m.impl("weighted_path_accumulate", &fastxai::weighted_path_accumulate_cuda);
  m.impl("lrp_divide", &fastxai::lrp_divide_cuda);
  m.impl("lrp_product", &fastxai::lrp_product_cuda);
  m.impl("masked_blend", &fastxai::masked_blend_cuda);
  m.impl("occlude", &fastxai::occlude_cuda);
  m.impl("rescale_backward", &fastxai::rescale_backward_cuda);
}

#endif  // FASTXAI_WITH_CUDA
