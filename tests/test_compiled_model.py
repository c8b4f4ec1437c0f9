"""A user's compiled model, ``torch.compile(model)`` (an ``OptimizedModule``), with every public method.

Methods that only call the model run it compiled (Dynamo compiles frames); methods that hook its
layers, put a ``TorchFunctionMode`` over its forward or trace it with torch.fx run the original
module (``fastxai._compile.original``: no frame compiled). Either way the result is the plain
model's, layer names are the plain model's, and both the wrapper and the module are left as found.
Dynamo here counts frames and runs the captured graphs as they are (``CompileCounter``), which
is what this checks: tracing, not code generation.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

import fastxai as fx

pytestmark = pytest.mark.usefixtures("one_thread")

testing = pytest.importorskip("torch._dynamo.testing")

_X = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
_Y = torch.tensor([1, 2, 3])
_BACKGROUND = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
_GROUPS = torch.arange(64).view(1, 8, 8) // 16
_TEN = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(2))

# name -> (call, runs compiled). The second field is the decision per method: True where the
# compiled forward runs, False where the original module does (hooks, modes, torch.fx).
CALLS = {
    "saliency": (lambda m: fx.saliency(m, _X, target=_Y), True),
    "input_x_gradient": (lambda m: fx.input_x_gradient(m, _X, target=_Y), True),
    "integrated_gradients": (lambda m: fx.integrated_gradients(m, _X, target=_Y, n_steps=4), True),
    "integrated_gradients_layer": (
        lambda m: fx.integrated_gradients(m, _X, target=_Y, n_steps=4, layer="4"),
        False,
    ),
    "smoothgrad": (lambda m: fx.smoothgrad(m, _X, target=_Y, n_samples=3, seed=0), True),
    "gradient_shap": (
        lambda m: fx.gradient_shap(m, _X, target=_Y, baselines=_BACKGROUND, n_samples=3, seed=0),
        True,
    ),
    "deeplift": (lambda m: fx.deeplift(m, _X, target=_Y), False),
    "deeplift_shap": (lambda m: fx.deeplift_shap(m, _X, target=_Y, baselines=_BACKGROUND), False),
    "guided_backprop": (lambda m: fx.guided_backprop(m, _X, target=_Y), False),
    "deconvnet": (lambda m: fx.deconvnet(m, _X, target=_Y), False),
    "grad_cam": (lambda m: fx.grad_cam(m, _X, target=_Y, layer="4"), False),
    "grad_cam_plus_plus": (lambda m: fx.grad_cam_plus_plus(m, _X, target=_Y, layer="4"), False),
    "hires_cam": (lambda m: fx.hires_cam(m, _X, target=_Y, layer="4"), False),
    "xgrad_cam": (lambda m: fx.xgrad_cam(m, _X, target=_Y, layer="4"), False),
    "layer_cam": (lambda m: fx.layer_cam(m, _X, target=_Y, layer="4"), False),
    "grad_cam_found_layer": (lambda m: fx.grad_cam(m, _X, target=_Y), False),
    "guided_grad_cam": (lambda m: fx.guided_grad_cam(m, _X, target=_Y, layer="4"), False),
    "score_cam": (lambda m: fx.score_cam(m, _X, target=_Y, layer="4"), False),
    "layer_conductance": (lambda m: fx.layer_conductance(m, _X, target=_Y, layer="4", n_steps=4), False),
    "occlusion": (lambda m: fx.occlusion(m, _X, target=_Y, sliding_window_shapes=(1, 4, 4)), True),
    "feature_ablation": (lambda m: fx.feature_ablation(m, _X, target=_Y, feature_mask=_GROUPS), True),
    "kernel_shap": (
        lambda m: fx.kernel_shap(m, _X, target=_Y, n_samples=12, seed=0, feature_mask=_GROUPS),
        True,
    ),
    "lime": (lambda m: fx.lime(m, _X, target=_Y, n_samples=12, seed=0, feature_mask=_GROUPS), True),
    "shapley_value_sampling": (
        lambda m: fx.shapley_value_sampling(m, _X, target=_Y, n_samples=2, seed=0, feature_mask=_GROUPS),
        True,
    ),
    "shapley_values": (lambda m: fx.shapley_values(m, _X, target=_Y, feature_mask=_GROUPS), True),
    "feature_permutation": (
        lambda m: fx.feature_permutation(m, _X, target=_Y, seed=0, feature_mask=_GROUPS),
        True,
    ),
    "lrp": (lambda m: fx.lrp.lrp(m, _X, target=_Y), False),
    "fgsm": (lambda m: fx.fgsm(m, _X, _Y), True),
    "pgd": (lambda m: fx.pgd(m, _X, _Y, steps=2, random_start=False), True),
    "lipschitz_radius": (lambda m: fx.lipschitz_radius(m, _X), False),
    "neuron_importance": (lambda m: fx.neuron_importance(m, _X, layer="4").values, False),
    "layer_activations": (lambda m: fx.layer_activations(m, _X, layer="4"), False),
    "feature_inversion": (lambda m: fx.feature_inversion(m, _X, layer="4", n_steps=2, seed=0), False),
    "network_dissection": (
        lambda m: fx.network_dissection(m, fx.concept_dataset(6, size=8, seed=0), layer="4").best_iou,
        False,
    ),
    "spectral_signatures": (lambda m: fx.spectral_signatures(m, _X, _Y, poison_fraction=0.3), False),
    "steered_detector": (
        lambda m: fx.evaluation.steering.fit_steered_detector(m, _TEN, torch.arange(10), layer="4").scores(
            _X
        ),
        False,
    ),
    "wachter": (lambda m: fx.wachter(m, _X, steps=3, lam_steps=2, lam_bisections=1), True),
}

SLOW_ATTACKS = {
    "bim": (lambda m: fx.bim(m, _X, _Y, steps=2), True),
    "mifgsm": (lambda m: fx.mifgsm(m, _X, _Y, steps=2), True),
    "apgd": (lambda m: fx.apgd(m, _X, _Y, steps=2, seed=0), True),
    "deepfool": (lambda m: fx.deepfool(m, _X, _Y, steps=2), True),
    "cw_l2": (lambda m: fx.cw_l2(m, _X, _Y, steps=2, binary_search_steps=1), True),
    "jsma": (lambda m: fx.jsma(m, _X, torch.tensor([0, 0, 0])), True),
    "fab": (lambda m: fx.fab(m, _X, _Y, steps=2), True),
    "square_attack": (lambda m: fx.square_attack(m, _X, _Y, n_queries=6, seed=0), True),
    "smoothing_predict": (lambda m: fx.smoothing_predict(m, _X, n=8, seed=0), True),
}


def _tensors(result: object) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in _tensors(item)]
    if isinstance(result, dict):
        return [t for item in result.values() for t in _tensors(item)]
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return [t for field in dataclasses.fields(result) for t in _tensors(getattr(result, field.name))]
    return []


def _check(call, runs_compiled: bool) -> None:  # type: ignore[no-untyped-def]
    torch._dynamo.reset()
    model = small_cnn(seed=4).train()  # in training mode: the methods must restore it
    model[0].bias.requires_grad_(False)
    model[4].register_forward_hook(lambda module, args, output: None)  # the user's own hook stays
    counter = testing.CompileCounter()
    compiled = torch.compile(model, backend=counter)
    before, before_wrapper = model_state(model), model_state(compiled)
    torch.manual_seed(5)
    expected = call(model)
    torch.manual_seed(5)
    got = call(compiled)
    for a, b in zip(_tensors(got), _tensors(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert (counter.frame_count > 0) == runs_compiled, counter.frame_count
    assert_same_state(before, model_state(model))
    assert_same_state(before_wrapper, model_state(compiled))


@pytest.mark.parametrize("name", list(CALLS))
def test_compiled_model_works_with_every_method(name: str) -> None:
    _check(*CALLS[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_ATTACKS))
def test_compiled_model_works_with_the_other_attacks(name: str) -> None:
    _check(*SLOW_ATTACKS[name])


def test_hooked_methods_use_the_original_modules_layers() -> None:
    """``layer=`` names and modules are the plain model's, and its hooks go on the original
    module's layers (the wrapper's forward never runs)."""
    torch._dynamo.reset()
    model = small_cnn(seed=4).eval()
    counter = testing.CompileCounter()
    compiled = torch.compile(model, backend=counter)
    by_name = fx.grad_cam(compiled, _X, target=_Y, layer="4")
    by_module = fx.grad_cam(compiled, _X, target=_Y, layer=model[4])
    torch.testing.assert_close(by_name, by_module)
    assert fx.cam_layer(compiled, _X).module is model[6]
    assert counter.frame_count == 0
    with pytest.raises(ValueError, match=r"layer '_orig_mod\.4' is not a submodule"):
        fx.grad_cam(compiled, _X, target=_Y, layer="_orig_mod.4")


def test_a_compiled_model_shares_its_modules_lock() -> None:
    """Both forms change the same submodules, so they are serialised as one model."""
    from fastxai import _model

    model = nn.Linear(2, 2)
    assert _model.model_lock(model) is _model.model_lock(model)
    compiled = torch.compile(model, backend="eager")
    with _model.preserved_state(compiled):
        lock = _model.model_lock(model)
        assert lock._is_owned()  # type: ignore[attr-defined]
