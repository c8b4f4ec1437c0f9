"""Bad input: a clear error naming the argument, raised before any work, model untouched;
and the model comes back as it was after success and after an exception."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

import fastxai as fx

METHODS = {
    "saliency": lambda model, x, **kw: fx.saliency(model, x, **kw),
    "input_x_gradient": lambda model, x, **kw: fx.input_x_gradient(model, x, **kw),
    "smoothgrad": lambda model, x, **kw: fx.smoothgrad(model, x, n_samples=3, seed=0, **kw),
    "integrated_gradients": lambda model, x, **kw: fx.integrated_gradients(model, x, n_steps=3, **kw),
    "adaptive_ig": lambda model, x, **kw: fx.integrated_gradients(
        model, x, method="adaptive", max_steps=9, **kw
    ),
    "exact_ig": lambda model, x, **kw: fx.integrated_gradients(model, x, method="exact", **kw),
}


class CountingModel(nn.Module):
    """Counts forward calls, so a test can prove that nothing ran before the error."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn(seed=0)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def _training_model_with_a_hook() -> CountingModel:
    model = CountingModel().train()
    model.inner[0].weight.requires_grad_(False)  # a mixed set of flags to restore
    model.inner[1].register_forward_hook(lambda module, inputs, output: None)
    return model


BAD_COMMON = [
    ("inputs", lambda x: {"x": x.long()}, TypeError, "inputs must be a floating-point"),
    ("inputs", lambda x: {"x": x.clone().index_fill_(0, torch.tensor([0]), float("nan"))}, ValueError, "NaN"),
    ("inputs", lambda x: {"x": x[:0]}, ValueError, "batch >= 1"),
    ("inputs", lambda x: {"x": x.numpy()}, TypeError, "inputs must be a torch.Tensor"),
    ("target", lambda x: {"target": 10}, ValueError, r"target must be in \[0, 10\)"),
    ("target", lambda x: {"target": -1}, ValueError, "target must be in"),
    ("target", lambda x: {"target": torch.tensor([1, 2])}, ValueError, "target must be an int or have shape"),
    ("target", lambda x: {"target": torch.tensor([0.5, 1.0, 2.0])}, TypeError, "integer class indices"),
    ("chunk_size", lambda x: {"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
    ("inputs", lambda x: {"x": torch.empty(x.shape, device="meta")}, ValueError, "meta device"),
    ("target", lambda x: {"target": "3"}, TypeError, "target must be an int.*got str '3'"),
    ("target", lambda x: {"target": 3.0}, TypeError, "target must be an int.*got float"),
]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize(
    ("argument", "change", "error", "message"),
    BAD_COMMON,
    ids=[c[0] + str(i) for i, c in enumerate(BAD_COMMON)],
)
def test_common_bad_input(method: str, argument: str, change, error: type, message: str) -> None:
    model = _training_model_with_a_hook()
    x = torch.randn(3, 1, 8, 8)
    kwargs = {"target": 1} | change(x)
    inputs = kwargs.pop("x", x)
    before = model_state(model)
    with pytest.raises(error, match=message):
        METHODS[method](model, inputs, **kwargs)
    assert_same_state(before, model_state(model))
    # A target range needs the number of classes: one forward without gradients, nothing more.
    assert model.calls <= (1 if argument == "target" else 0)


SPECIFIC = [
    (lambda m, x: fx.smoothgrad(m, x, n_samples=0), ValueError, "n_samples must be an int >= 1"),
    (lambda m, x: fx.smoothgrad(m, x, n_samples=2.5), ValueError, "n_samples"),
    (lambda m, x: fx.smoothgrad(m, x, stdevs=-0.1), ValueError, "stdevs must be finite and >= 0"),
    (
        lambda m, x: fx.smoothgrad(m, x, stdevs=[0.1, 0.2]),
        ValueError,
        "stdevs must be a float or have one value",
    ),
    (lambda m, x: fx.smoothgrad(m, x, nt_type="smooth"), ValueError, "nt_type must be one of"),
    (lambda m, x: fx.smoothgrad(m, x, seed=-1), ValueError, "seed must be None or an int"),
    (lambda m, x: fx.smoothgrad(m, x, backend="cuda"), ValueError, "backend must be one of"),
    (lambda m, x: fx.integrated_gradients(m, x, torch.zeros(2, 1, 8, 8)), ValueError, "baselines of shape"),
    (lambda m, x: fx.integrated_gradients(m, x, torch.zeros(8, 9)), ValueError, "baselines of shape"),
    (
        lambda m, x: fx.integrated_gradients(m, x, torch.zeros(3, 1, 8, 8, dtype=torch.long)),
        TypeError,
        "baselines",
    ),
    (lambda m, x: fx.integrated_gradients(m, x, float("nan")), ValueError, "baselines contain NaN"),
    (lambda m, x: fx.integrated_gradients(m, x, method="simpson"), ValueError, "method must be one of"),
    (lambda m, x: fx.integrated_gradients(m, x, n_steps=0), ValueError, "n_steps"),
    (lambda m, x: fx.integrated_gradients(m, x, method="exact", max_pieces=0), ValueError, "max_pieces"),
    (
        lambda m, x: fx.integrated_gradients(m, x, n_steps=1, method="riemann_trapezoid"),
        ValueError,
        "n_steps",
    ),
    (lambda m, x: fx.integrated_gradients(m, x, method="adaptive", tolerance=0), ValueError, "tolerance"),
    (lambda m, x: fx.integrated_gradients(m, x, method="adaptive", max_steps=2), ValueError, "max_steps"),
    (lambda m, x: fx.saliency("model", x), TypeError, "model must be an nn.Module or a callable"),
    (  # finite in float64, infinite in the inputs' float32, where the model runs
        lambda m, x: fx.integrated_gradients(
            m, x, torch.full((1, 8, 8), 1e300, dtype=torch.float64), target=1
        ),
        ValueError,
        "baselines overflow in the inputs' dtype torch.float32",
    ),
    (
        lambda m, x: fx.integrated_gradients(m, x, target=1, return_evaluations=1),
        TypeError,
        "return_evaluations",
    ),
    (
        lambda m, x: fx.integrated_gradients(m, x, target=1, return_convergence_delta=1),
        TypeError,
        "return_convergence_delta must be a bool",
    ),
    (
        lambda m, x: fx.integrated_gradients(m, x, target=1, multiply_by_inputs=0),
        TypeError,
        "multiply_by_inputs",
    ),
]


def _unavailable_backend() -> str | None:
    absent = [name for name in ("triton", "native") if not fx.backends()[name].available]
    return absent[0] if absent else None


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, b: fx.evaluation.deletion(m, x, x, backend=b),  # target None: the model ran first
        lambda m, x, b: fx.integrated_gradients(m, x, n_steps=3, backend=b),
        lambda m, x, b: fx.smoothgrad(m, x, n_samples=2, backend=b),
        lambda m, x, b: fx.occlusion(m, x, sliding_window_shapes=(1, 2, 2), backend=b),
        lambda m, x, b: fx.evaluation.infidelity(m, x, x, backend=b),
    ],
)
def test_unavailable_backend_refused_before_the_model_runs(call) -> None:
    backend = _unavailable_backend()
    if backend is None:
        pytest.skip("every backend is available here")
    model = _training_model_with_a_hook()
    with pytest.raises(RuntimeError, match=f"backend '{backend}' is not available"):
        call(model, torch.randn(3, 1, 8, 8), backend)
    assert model.calls == 0


@pytest.mark.parametrize(("call", "error", "message"), SPECIFIC)
def test_method_specific_bad_input(call, error: type, message: str) -> None:
    model = _training_model_with_a_hook()
    x = torch.randn(3, 1, 8, 8)
    before = model_state(model)
    with pytest.raises(error, match=message):
        call(model, x)
    assert model.calls == 0
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("method", list(METHODS))
def test_model_restored_after_success(method: str) -> None:
    model = _training_model_with_a_hook()
    before = model_state(model)
    METHODS[method](model, torch.randn(2, 1, 8, 8), target=3)
    assert model.calls > 0
    assert_same_state(before, model_state(model))


class FailingModel(CountingModel):
    """Raises on its first call with gradients (or its second call, for methods that take none),
    after adding a hook of its own."""

    failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.failed and (torch.is_grad_enabled() or self.calls == 1):
            self.failed = True
            self.inner[4].register_forward_hook(lambda module, inputs, output: None)
            raise RuntimeError("model failed")
        return super().forward(x)


@pytest.mark.parametrize("method", list(METHODS))
def test_model_restored_after_an_exception(method: str) -> None:
    model = FailingModel().train()
    model.inner[1].register_forward_hook(lambda module, inputs, output: None)
    before = model_state(model)
    with pytest.raises(RuntimeError, match="model failed"):
        METHODS[method](model, torch.randn(4, 1, 8, 8), target=3, chunk_size=4)
    assert_same_state(before, model_state(model))


def test_model_output_must_be_logits() -> None:
    with pytest.raises(ValueError, match=r"model must return \[batch, classes\]"):
        fx.saliency(lambda x: x.sum(), torch.randn(2, 3), target=0)


# ---- the fused LRP and perturbation ops: errors name the argument -------------------------------

_X = torch.ones(2, 3, 4)
_MASK = torch.zeros(3, 4, dtype=torch.long)
_KEEP = torch.ones(2, 5, 1)
_NOT_BOOL = "copy_major must be a bool"

BAD_OPS = [
    (lambda: fx.ops.lrp_divide(_X.numpy(), _X, 0.1), TypeError, "relevance must be a torch.Tensor"),
    (lambda: fx.ops.lrp_divide(_X, _X.half(), 0.1), TypeError, "z must have the dtype of relevance"),
    (lambda: fx.ops.lrp_divide(_X, _X[:1], 0.1), ValueError, "z must have the shape of relevance"),
    (lambda: fx.ops.lrp_divide(_X, _X, -0.1), ValueError, "eps must be finite and >= 0"),
    (lambda: fx.ops.lrp_divide(_X, _X, float("nan")), ValueError, "eps must be finite"),
    (lambda: fx.ops.lrp_divide(_X, _X, True), TypeError, "eps must be a float"),
    (lambda: fx.ops.lrp_product(_X, _X.long()), TypeError, "c must be a floating-point"),
    (lambda: fx.ops.lrp_product(_X, _X, _X[0]), ValueError, "c_neg must have the shape of activation"),
    (lambda: fx.ops.lrp_product(_X, _X, None, 2.0, 1.0), ValueError, "alpha and beta apply only with c_neg"),
    (lambda: fx.ops.lrp_product(_X, _X, _X, float("inf")), ValueError, "alpha must be finite"),
    (lambda: fx.ops.masked_blend(_X, _X[:, :2], _MASK, _KEEP), ValueError, "baselines must have the shape"),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK.int(), _KEEP), TypeError, "feature_mask must be an int64"),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK[0], _KEEP), ValueError, "feature_mask must have shape"),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK + 1, _KEEP), ValueError, r"feature_mask values .* \[0, 1\)"),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK - 1, _KEEP), ValueError, "feature_mask values"),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK, _KEEP[0]), ValueError, r"keep must have shape \(2, P, M\)"),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK, _KEEP.long()), TypeError, "keep must be a floating-point"),
    (lambda: fx.ops.occlude(_X, _X, (2,), (1, 1), 0, 1), ValueError, "window must be a tuple of 2 ints"),
    (lambda: fx.ops.occlude(_X, _X, (2, 2), (1, 0), 0, 1), ValueError, "strides must hold positive sizes"),
    (lambda: fx.ops.occlude(_X, _X, (2, 5), (1, 1), 0, 1), ValueError, "window .* is larger than the input"),
    (lambda: fx.ops.occlude(_X, _X, (2, 2), (1, 1), 7, 0), ValueError, r"start must be in \[0, 7\)"),
    (lambda: fx.ops.occlude(_X, _X, (2, 2), (1, 1), 2, 5), ValueError, r"count must be in \[0, 5\)"),
    (lambda: fx.ops.occlude(_X, _X, 2, (1, 1), 0, 1), TypeError, "window must be a tuple"),
    (lambda: fx.ops.occlude(_X[:, 0, 0], _X[:, 0, 0], (), (), 0, 1), ValueError, "at least one feature dim"),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK, _KEEP, copy_major=1), TypeError, _NOT_BOOL),
    (lambda: fx.ops.masked_blend(_X, _X, _MASK, _KEEP, copy_major=None), TypeError, _NOT_BOOL),
    (lambda: fx.ops.occlude(_X, _X, (2, 2), (1, 1), 0, 1, copy_major="yes"), TypeError, _NOT_BOOL),
    (lambda: fx.ops.occlude(_X, _X, (2, 2), (1, 1), 0, 1, copy_major=_X.bool()), TypeError, _NOT_BOOL),
    (lambda: fx.ops.occlusion_window_count((3, 4), (4, 1), (1, 1)), ValueError, "window .* is larger"),
    (lambda: fx.ops.gaussian_perturb(_X, float("nan"), 0), ValueError, "sigma must be finite and >= 0"),
    (lambda: fx.ops.gaussian_perturb(_X, -0.5, 0), ValueError, "sigma must be finite and >= 0"),
    (
        lambda: fx.ops.gaussian_perturb(_X, torch.tensor([0.1, float("nan")]), 0),
        ValueError,
        "sigma must be finite and >= 0",
    ),
    (lambda: fx.ops.gaussian_perturb(_X[:0], 0.1, 0), ValueError, "x must have batch >= 1"),
    (lambda: fx.ops.pgd_step(_X, _X, _X, 0.1, float("nan")), ValueError, "eps must be finite and >= 0"),
    (lambda: fx.ops.pgd_step(_X, _X, _X, float("nan"), 0.1), ValueError, "step_size must be finite"),
    (
        lambda: fx.ops.pgd_step(_X, _X, _X, 0.1, torch.tensor([0.1, float("nan")])),
        ValueError,
        "eps must be finite and >= 0",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_OPS)
def test_attribution_ops_bad_input(call, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_attribution_ops_native_host_checks() -> None:
    """Called directly (past fastxai.ops), the native operators still refuse what would read out of bounds."""
    if not fx.backends()["native"].available:
        pytest.skip("native backend not built")
    from fastxai import _native

    with pytest.raises(ValueError, match="feature_mask values must be group ids"):
        _native.masked_blend(_X, _X, _MASK + 3, _KEEP)
    with pytest.raises(ValueError, match="keep must have shape"):
        _native.masked_blend(_X, _X, _MASK, _KEEP[:1])
    with pytest.raises(ValueError, match="count must be in"):
        _native.occlude(_X, _X, [2, 2], [1, 1], 0, 7)
    with pytest.raises(ValueError, match="window"):
        _native.occlude(_X, _X, [4, 2], [1, 1], 0, 1)
    with pytest.raises(TypeError, match="z must have the dtype of relevance"):
        _native.lrp_divide(_X, _X.half(), 0.0)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        _native.lrp_divide(_X, _X, -1.0)
    with pytest.raises(ValueError, match="alpha and beta apply only with c_neg"):
        _native.lrp_product(_X, _X, None, 2.0, 0.0)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        _native.lrp_product(_X.double(), _X.double())
