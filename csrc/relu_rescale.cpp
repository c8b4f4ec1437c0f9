// fastxai::relu_rescale: relu / leaky_relu whose backward is DeepLIFT's Rescale rule, as one
// native autograd op (the inputs' pass of fastxai.deeplift calls it for every relu).
//
//   forward:   y = relu(x)  (leaky_relu(x, negative_slope) when the slope is not 0)
//   backward:  grad_x = grad * m,  m = (f(x) - f(reference)) / (x - reference),  f'(x) where
//              |x - reference| < eps  (the fused op fastxai::rescale_backward, any backend it has)
//
// The same rule as the Python autograd.Function ReluRescale (fastxai/attribution/_rescale_rules.py),
// which stays the path for in-place calls and for backends without this extension. Here no Python
// runs per call: the forward is one relu, the backward one fused elementwise kernel, dispatched by
// the device of the tensors (CPU, or CUDA when the extension was built with its kernels).

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/leaky_relu.h>
#include <ATen/ops/relu.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cmath>

namespace fastxai {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_relu_rescale(const at::Tensor& x, const at::Tensor& reference, double eps, double negative_slope) {
  TORCH_CHECK_TYPE(reference.scalar_type() == x.scalar_type(), "fastxai: reference must have the dtype of x (",
                   x.scalar_type(), "), got ", reference.scalar_type());
  TORCH_CHECK(reference.device() == x.device(), "fastxai: reference is on ", reference.device(),
              " but x is on ", x.device());
  TORCH_CHECK_VALUE(reference.sizes() == x.sizes(), "fastxai: reference must have the shape of x ", x.sizes(),
                    ", got ", reference.sizes());
  const float rounded_eps = static_cast<float>(eps);
  TORCH_CHECK_VALUE(std::isfinite(eps) && rounded_eps > 0.0f, "fastxai: eps must be finite and > 0 (in float32), got ",
                    eps);
  TORCH_CHECK_VALUE(std::isfinite(negative_slope) && std::isfinite(static_cast<float>(negative_slope)),
                    "fastxai: negative_slope must be finite (within float32's range), got ", negative_slope);
}

at::Tensor relu_forward(const at::Tensor& x, double negative_slope) {
  return negative_slope == 0.0 ? at::relu(x) : at::leaky_relu(x, negative_slope);
}

class ReluRescale : public torch::autograd::Function<ReluRescale> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& reference, double eps,
                            double negative_slope) {
    check_relu_rescale(x, reference, eps, negative_slope);
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, reference});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["negative_slope"] = negative_slope;
    return relu_forward(x, negative_slope);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto rescale_backward =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fastxai::rescale_backward", "")
            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double)>();
    const variable_list saved = ctx->get_saved_variables();
    // The fused kernel reads flat memory: each operand in its contiguous form (no copy when it is).
    at::Tensor grad = rescale_backward.call(grads[0].contiguous(), saved[0].contiguous(), saved[1].contiguous(),
                                            ctx->saved_data["eps"].toDouble(),
                                            ctx->saved_data["negative_slope"].toDouble());
    return {grad, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor relu_rescale_autograd(const at::Tensor& x, const at::Tensor& reference, double eps,
                                 double negative_slope) {
  return ReluRescale::apply(x, reference, eps, negative_slope);
}

// Below autograd (no gradient needed, or fake / meta tensors under tracing): the relu alone.
at::Tensor relu_rescale_forward(const at::Tensor& x, const at::Tensor& reference, double eps,
                                double negative_slope) {
  check_relu_rescale(x, reference, eps, negative_slope);
  return relu_forward(x, negative_slope);
}

}  // namespace
}  // namespace fastxai

TORCH_LIBRARY_FRAGMENT(fastxai, m) {
  m.def("relu_rescale(Tensor x, Tensor reference, float eps, float negative_slope=0.0) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastxai, Autograd, m) { m.impl("relu_rescale", &fastxai::relu_rescale_autograd); }

TORCH_LIBRARY_IMPL(fastxai, CompositeExplicitAutograd, m) {
  m.impl("relu_rescale", &fastxai::relu_rescale_forward);
}
