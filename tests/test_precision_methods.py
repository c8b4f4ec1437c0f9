"""``dtype=`` on every method that runs a model: the perturbation methods (one scoring loop,
``_perturbation.perturbed_scores``), DeepLIFT / DeepLiftShap, guided backprop / DeconvNet, the
CAM family and the attacks (the first methods, IG and kin, are ``tests/test_precision.py``'s).

For each: ``dtype=None`` is the call without the argument, bit for bit; with a half dtype the
model runs in it (its first convolution's output is half precision, seen from inside the model)
and the result is in the inputs' dtype; a bad ``dtype`` is refused, naming it, before the model
runs; the model is left as found. On the trained digits CNN, bf16 stays within measured bounds
of float32: the attributions' relative difference, DeepLIFT's completeness against the float32
model, the attacks' success (the figures: ``benchmarks/bf16_accuracy.py``, README "bf16").
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from dtype_checks import (
    BAD,
    BAD_IDS,
    HALF,
    assert_a_bad_dtype_is_refused_before_the_model_runs,
    assert_none_is_the_call_without_it,
    assert_runs_in_the_dtype_and_leaves_the_model,
)
from models import small_cnn
from torch import nn

import fastxai as fx

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bf16_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


_X = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
_BACKGROUND = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
_QUADRANTS = (torch.arange(64).view(8, 8) // 4 % 2 + torch.arange(64).view(8, 8) // 32 * 2).view(1, 1, 8, 8)
_LAYER = "inner.4"  # small_cnn's second convolution, inside DtypeSpy

Call = Callable[..., Any]

# Each a small call on _X: ``call(model, **kw)``.
ATTRIBUTIONS: dict[str, Call] = {
    "feature_ablation": lambda m, **kw: fx.feature_ablation(m, _X, 1, feature_mask=_QUADRANTS, **kw),
    "feature_permutation": lambda m, **kw: fx.feature_permutation(
        m, _X, 1, feature_mask=_QUADRANTS, seed=0, **kw
    ),
    "kernel_shap": lambda m, **kw: fx.kernel_shap(
        m, _X, 1, feature_mask=_QUADRANTS, n_samples=8, seed=0, **kw
    ),
    "lime": lambda m, **kw: fx.lime(m, _X, 1, feature_mask=_QUADRANTS, n_samples=8, seed=0, **kw),
    "lemna": lambda m, **kw: fx.lemna(m, _X, 1, feature_mask=_QUADRANTS, n_samples=8, n_iter=2, seed=0, **kw),
    "shapley_value_sampling": lambda m, **kw: fx.shapley_value_sampling(
        m, _X, 1, feature_mask=_QUADRANTS, n_samples=2, seed=0, **kw
    ),
    "shapley_values": lambda m, **kw: fx.shapley_values(m, _X, 1, feature_mask=_QUADRANTS, **kw),
    "deeplift": lambda m, **kw: fx.deeplift(m, _X, 1, **kw),
    "deeplift-layer": lambda m, **kw: fx.deeplift(m, _X, 1, layer=_LAYER, **kw),
    "deeplift_shap": lambda m, **kw: fx.deeplift_shap(m, _X, 1, baselines=_BACKGROUND, **kw),
    "guided_backprop": lambda m, **kw: fx.guided_backprop(m, _X, 1, **kw),
    "deconvnet": lambda m, **kw: fx.deconvnet(m, _X, 1, **kw),
    "grad_cam": lambda m, **kw: fx.grad_cam(m, _X, 1, layer=_LAYER, **kw),
    "grad_cam_plus_plus": lambda m, **kw: fx.grad_cam_plus_plus(m, _X, 1, layer=_LAYER, **kw),
    "xgrad_cam": lambda m, **kw: fx.xgrad_cam(m, _X, 1, layer=_LAYER, **kw),
    "hires_cam": lambda m, **kw: fx.hires_cam(m, _X, 1, layer=_LAYER, **kw),
    "layer_cam": lambda m, **kw: fx.layer_cam(m, _X, 1, layer=_LAYER, **kw),
    "cam-score_cam": lambda m, **kw: fx.cam(m, _X, 1, layer=_LAYER, method="score_cam", **kw),
    "score_cam": lambda m, **kw: fx.score_cam(m, _X, 1, layer=_LAYER, **kw),
    "guided_grad_cam": lambda m, **kw: fx.guided_grad_cam(m, _X, 1, layer=_LAYER, **kw),
}
ATTACKS: dict[str, Call] = {
    "pgd": lambda m, **kw: fx.pgd(m, _X, eps=0.1, alpha=0.03, steps=3, seed=0, **kw),
    "pgd-restarts": lambda m, **kw: fx.pgd(m, _X, eps=0.1, alpha=0.03, steps=3, restarts=2, seed=0, **kw),
    "fgsm": lambda m, **kw: fx.fgsm(m, _X, eps=0.1, **kw),
    "bim": lambda m, **kw: fx.bim(m, _X, eps=0.1, alpha=0.03, steps=3, early_stop=True, **kw),
    "mifgsm": lambda m, **kw: fx.mifgsm(m, _X, eps=0.1, alpha=0.03, steps=3, **kw),
    "apgd": lambda m, **kw: fx.apgd(m, _X, eps=0.1, steps=3, seed=0, **kw),
    "apgd_targeted": lambda m, **kw: fx.apgd_targeted(m, _X, eps=0.1, steps=2, n_target_classes=2, **kw),
    "cw_l2": lambda m, **kw: fx.cw_l2(m, _X, steps=3, binary_search_steps=2, **kw),
    "deepfool": lambda m, **kw: fx.deepfool(m, _X, steps=3, **kw),
    "fab": lambda m, **kw: fx.fab(m, _X, steps=3, **kw),
    "fab_targeted": lambda m, **kw: fx.fab_targeted(m, _X, steps=2, n_target_classes=2, eps=0.3, **kw),
    "jsma": lambda m, **kw: fx.jsma(m, _X, target_labels=torch.tensor([3, 4]), gamma=0.05, **kw),
    "square_attack": lambda m, **kw: fx.square_attack(m, _X, eps=0.1, n_queries=6, **kw),
    "autoattack": lambda m, **kw: fx.autoattack(
        m, _X, eps=0.1, steps=2, fab_steps=2, square_queries=4, n_target_classes=2, **kw
    ),
    "robust_accuracy": lambda m, **kw: torch.tensor(
        list(fx.robust_accuracy(m, (_X, torch.tensor([3, 4])), eps=0.1, alpha=0.03, steps=2, **kw).values())
    ),
    "transfer_attack": lambda m, **kw: fx.transfer_attack(
        m, m, _X, torch.tensor([3, 4]), eps=0.1, alpha=0.03, steps=2, seed=0, **kw
    )[0],
}
CALLS = {**ATTRIBUTIONS, **ATTACKS}
# what builds the points the model is fed in the half dtype itself (the rest hand the inputs to
# autocast, which rounds them where a convolution reads them)
POINTS_IN_DTYPE = {
    "feature_ablation",
    "feature_permutation",
    "kernel_shap",
    "lime",
    "lemna",
    "shapley_value_sampling",
    "shapley_values",
    "guided_backprop",
    "deconvnet",
    "cam-score_cam",
    "score_cam",
}
POINTS_IN_BOTH = {"guided_grad_cam"}  # Grad-CAM's float32 points, guided backprop's half ones
# the adversarial example is checked by the float32 model, not scored in the dtype
EVALUATED_IN_FLOAT32 = {"robust_accuracy", "transfer_attack"}


@pytest.mark.parametrize("name", list(CALLS))
def test_dtype_none_is_the_call_without_it_bit_for_bit(name: str) -> None:
    assert_none_is_the_call_without_it(CALLS[name])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", list(CALLS))
def test_the_model_runs_in_the_dtype_and_is_left_as_found(name: str, dtype: torch.dtype) -> None:
    points = "dtype" if name in POINTS_IN_DTYPE else "both" if name in POINTS_IN_BOTH else "float32"
    assert_runs_in_the_dtype_and_leaves_the_model(
        CALLS[name], dtype, points, evaluated_in_float32=name in EVALUATED_IN_FLOAT32
    )


@pytest.mark.parametrize(("bad", "error"), BAD, ids=BAD_IDS)
@pytest.mark.parametrize("name", list(CALLS))
def test_a_bad_dtype_is_refused_before_the_model_runs(name: str, bad: object, error: type) -> None:
    assert_a_bad_dtype_is_refused_before_the_model_runs(CALLS[name], bad, error)


def test_lemna_checks_dtype_before_drawing_its_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    module = importlib.import_module("fastxai.attribution.lemna")  # the attribute is the function
    monkeypatch.setattr(module, "_coin_flips", lambda *a: drawn.append(a))
    with pytest.raises(ValueError, match="dtype"):
        fx.lemna(small_cnn(seed=2), _X, 1, dtype=torch.float64)
    assert not drawn


@pytest.mark.parametrize("dtype", HALF)
def test_relu_rescale_pairs_half_precision_pre_activations(dtype: torch.dtype) -> None:
    """Under autocast both DeepLIFT passes record the relus' half-precision arguments, and the
    fused relu rule takes them: the multipliers are the Rescale quotients of those very values,
    computed in float32 (checked against the formula on a one-relu model)."""
    torch.manual_seed(3)
    linear = nn.Linear(6, 5)
    model = nn.Sequential(linear, nn.ReLU(), nn.Linear(5, 1, bias=False))
    nn.init.ones_(model[2].weight)
    x, baseline = torch.randn(4, 6), torch.randn(4, 6)
    got = fx.deeplift(model, x, 0, baseline, multiply_by_inputs=False, dtype=dtype)
    with torch.autocast("cpu", dtype=dtype, cache_enabled=False):
        h, h_ref = linear(x), linear(baseline)  # the pre-activations both passes see
    assert h.dtype == dtype
    h, h_ref = h.float(), h_ref.float()
    quotient = (h.relu() - h_ref.relu()) / (h - h_ref)  # [4, 5], float32 from the half values
    weight = linear.weight.to(dtype).float()  # what autocast's matrix product multiplies by
    want = quotient @ weight  # the chain rule through the rescaled relu, then the first layer
    # the gradient reaches the input through autocast's half-precision matrix product
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    assert not torch.equal(got, fx.deeplift(model, x, 0, baseline, multiply_by_inputs=False))


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor]:
    pytest.importorskip("sklearn")
    return bf16_accuracy.digits_case(4)


# Largest per-sample relative difference bf16 vs fp32 on the digits CNN (4 digits), about twice
# what it measures (tests/test_precision.py's convention; benchmarks/bf16_accuracy.py on 8
# digits, README "bf16").
DIGITS_BOUNDS = {
    "feature_ablation": 0.02,
    "feature_permutation": 0.05,
    "kernel_shap": 0.02,
    "lime": 0.015,
    "shapley_value_sampling": 0.02,
    "shapley_values": 0.01,
    "deeplift": 0.5,  # one digit's relus near their baseline's (as saliency's): see the completeness
    "deeplift_shap": 0.1,
    "guided_backprop": 0.15,
    "deconvnet": 0.15,
    "grad_cam": 0.02,
    "grad_cam_plus_plus": 0.01,
    "xgrad_cam": 0.02,
    "hires_cam": 0.02,
    "layer_cam": 0.015,
    "score_cam": 0.03,
}


@pytest.mark.parametrize("method", list(DIGITS_BOUNDS))
def test_bf16_attributions_close_to_float32_on_the_digits_cnn(method: str, digits) -> None:  # type: ignore[no-untyped-def]
    model, x = digits
    with torch.no_grad():
        target = model(x).argmax(1)
    run = bf16_accuracy.methods(64, 16)[method]
    difference = bf16_accuracy.relative_difference(
        run(model, x, target, torch.bfloat16), run(model, x, target, None)
    )
    assert 0 < float(difference.max()) < DIGITS_BOUNDS[method]


def test_bf16_deeplift_complete_against_the_float32_model(digits) -> None:  # type: ignore[no-untyped-def]
    """Summation to delta with the float32 model's ``f(x) - f(0)``: exact up to float32 rounding
    for the float32 run, within the measured bound for bf16 (measured 1.8e-3 on 4 digits)."""
    model, x = digits
    with torch.no_grad():
        target = model(x).argmax(1)
    run = bf16_accuracy.methods(64, 16)["deeplift"]
    assert float(bf16_accuracy.completeness(model, x, target, run(model, x, target, None)).max()) < 1e-5
    bf16 = bf16_accuracy.completeness(model, x, target, run(model, x, target, torch.bfloat16))
    assert 0 < float(bf16.max()) < 0.01


def test_bf16_attacks_as_strong_as_float32_on_the_digits_cnn() -> None:
    """PGD in bf16 fools the float32 model as often as PGD in float32, within a few points, and
    robust accuracy measured with bf16 PGD is within a few points of float32's. With early
    stopping it would not be: bf16 PGD stops a sample at its first iterate that fools the bf16
    model, and some of those land just short of the float32 boundary (measured on these 64
    digits: 0.266 against 0.203), which is why robust_accuracy turns it off for a half dtype."""
    pytest.importorskip("sklearn")
    model, x = bf16_accuracy.digits_case(64)
    with torch.no_grad():
        y = model(x).argmax(1)
    rates = {}
    for dtype in (None, torch.bfloat16):
        adversarial = fx.pgd(model, x, y, eps=0.1, alpha=0.02, steps=10, seed=0, dtype=dtype)
        with torch.no_grad():
            rates[dtype] = float((model(adversarial).argmax(1) != y).float().mean())
    assert 0.1 < rates[None] < 0.9  # a budget where success is not a foregone conclusion
    assert abs(rates[torch.bfloat16] - rates[None]) <= 0.05
    accuracy = {
        dtype: fx.robust_accuracy(model, (x, y), eps=0.1, alpha=0.02, steps=10, seed=0, dtype=dtype)
        for dtype in (None, torch.bfloat16)
    }
    assert abs(accuracy[torch.bfloat16]["robust_accuracy"] - accuracy[None]["robust_accuracy"]) <= 0.05
    stopped = fx.robust_accuracy(
        model, (x, y), eps=0.1, alpha=0.02, steps=10, seed=0, dtype=torch.bfloat16, early_stop=True
    )
    assert stopped["robust_accuracy"] > accuracy[None]["robust_accuracy"] + 0.03  # what it avoids
