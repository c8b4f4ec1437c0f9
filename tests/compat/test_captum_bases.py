"""Captum's base classes in the drop-in: every class derives from the bases its Captum counterpart
derives from (``isinstance`` agrees), with Captum's constructors and properties, and a user's
subclass of a base works as it does with Captum."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn

import fastxai.compat.captum as fc

captum_attr = pytest.importorskip("captum.attr")

BASES = ("Attribution", "GradientAttribution", "PerturbationAttribution", "NeuronAttribution")


def network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def build(library: Any, name: str, model: nn.Module) -> Any:
    cls = getattr(library, name)
    if name.startswith(("Layer", "Neuron", "InternalInfluence", "GuidedGradCam")):
        return cls(model, model[0])
    if name == "NoiseTunnel":
        return cls(library.Saliency(model))
    if name == "DataLoaderAttribution":
        return cls(library.FeatureAblation(model))
    if name == "LimeBase":
        model_ = captum_attr._core.lime  # Captum's own defaults, for both libraries
        lasso = pytest.importorskip("captum._utils.models.linear_model").SkLearnLasso()
        similarity = model_.get_exp_kernel_similarity_function()
        return cls(model, lasso, similarity, model_.default_perturb_func, True, lambda s, x, **k: x, None)
    return cls(model)


def method_names() -> list[str]:
    names = []
    for name in fc.__all__:
        theirs = getattr(captum_attr, name, None)
        if (
            isinstance(theirs, type)
            and issubclass(theirs, captum_attr.Attribution)
            and name not in (*BASES, "LayerAttribution")
            and "LLM" not in name  # these need a tokenizer; their bases are checked in test_captum_llm
        ):
            names.append(name)
    return names


@pytest.mark.parametrize("name", method_names())
def test_each_class_has_captums_bases_and_properties(name: str) -> None:
    pytest.importorskip("sklearn")
    model = network()
    ours, theirs = build(fc, name, model), build(captum_attr, name, model)
    for base in BASES:
        assert isinstance(ours, getattr(fc, base)) == isinstance(theirs, getattr(captum_attr, base)), base
    assert ours.multiplies_by_inputs == theirs.multiplies_by_inputs
    assert ours.has_convergence_delta() == theirs.has_convergence_delta()
    for member in ("compute_convergence_delta", "gradient_func", "layer"):
        assert hasattr(ours, member) == hasattr(theirs, member), member
    assert type(ours).get_name() == type(theirs).get_name()


def test_the_lists_cover_the_known_families() -> None:
    names = method_names()
    assert {"Saliency", "Lime", "LimeBase", "KernelShap", "NeuronGradient", "NeuronFeatureAblation"} <= set(
        names
    )
    for base in BASES:
        assert base in fc.__all__


@pytest.mark.parametrize("base", BASES)
def test_constructors_take_captums_arguments(base: str) -> None:
    ours = inspect.signature(getattr(fc, base).__init__).parameters
    theirs = inspect.signature(getattr(captum_attr, base).__init__).parameters
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]


def signed_gradient(base: type) -> type:
    """A user's method written against Captum's ``GradientAttribution``."""

    class SignedGradient(base):  # type: ignore[misc, valid-type]
        def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
            parts = inputs if isinstance(inputs, tuple) else (inputs,)
            parts = tuple(part.detach().requires_grad_() for part in parts)
            grads = self.gradient_func(self.forward_func, parts, target, additional_forward_args)
            signed = tuple(grad.sign() * part.detach() for grad, part in zip(grads, parts, strict=True))
            return signed if isinstance(inputs, tuple) else signed[0]

    return SignedGradient


def test_a_user_subclass_of_gradient_attribution_works_as_with_captum() -> None:
    model = network()
    x = torch.randn(5, 3)
    target = torch.tensor([0, 1, 1, 0, 1])
    ours = signed_gradient(fc.GradientAttribution)(model)
    theirs = signed_gradient(captum_attr.GradientAttribution)(model)
    torch.testing.assert_close(ours.attribute(x, target), theirs.attribute(x, target))
    attributions = theirs.attribute(x, target)
    torch.testing.assert_close(
        ours.compute_convergence_delta(attributions, torch.zeros(1, 3), x, target),
        theirs.compute_convergence_delta(attributions, torch.zeros(1, 3), x, target),
    )
    assert isinstance(ours, fc.GradientAttribution) and not isinstance(ours, fc.PerturbationAttribution)
    assert not ours.has_convergence_delta() and not ours.multiplies_by_inputs
    assert ours.get_name() == "Signed Gradient"


def test_gradient_func_takes_captums_arguments() -> None:
    model = network()
    x = torch.randn(4, 3, requires_grad=True)
    ours = fc.GradientAttribution(model).gradient_func(model, (x,), 1)
    theirs = captum_attr.GradientAttribution(model).gradient_func(model, (x,), 1)
    assert isinstance(ours, tuple) and len(ours) == 1
    torch.testing.assert_close(ours[0], theirs[0])
    with pytest.raises(ValueError, match="target"):
        fc.GradientAttribution(model).gradient_func(model, (x,), None)  # two outputs per example


def test_user_subclasses_of_the_other_bases() -> None:
    model = network()

    class Drop(fc.PerturbationAttribution):
        def attribute(self, inputs: torch.Tensor, target: int = 0) -> torch.Tensor:
            full = self.forward_func(inputs)[:, target]
            return torch.stack(
                [
                    full - self.forward_func(inputs.index_fill(1, torch.tensor([i]), 0.0))[:, target]
                    for i in range(3)
                ],
                dim=1,
            )

    drop = Drop(model)
    assert drop.multiplies_by_inputs and drop.attribute(torch.randn(2, 3)).shape == (2, 3)
    assert not hasattr(drop, "compute_convergence_delta")

    class Activation(fc.NeuronAttribution):
        def attribute(self, inputs: torch.Tensor, neuron_selector: int) -> torch.Tensor:
            taken = []
            handle = self.layer.register_forward_hook(lambda module, args, output: taken.append(output))
            try:
                self.forward_func(inputs)
            finally:
                handle.remove()
            return taken[0][:, neuron_selector]

    neuron = Activation(model, model[0], device_ids=None)
    assert neuron.layer is model[0] and neuron.device_ids is None
    x = torch.randn(2, 3)
    torch.testing.assert_close(neuron.attribute(x, 1), model[0](x)[:, 1])
    with pytest.raises(TypeError, match="forward_func"):
        fc.GradientAttribution(None)  # type: ignore[arg-type]
