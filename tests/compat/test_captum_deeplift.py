"""Captum-compat DeepLift / DeepLiftShap side by side with Captum: tuple inputs, extra
arguments, custom attribution functions, callable baselines, target tuples, deltas."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fastxai.compat import captum as fc

captum = pytest.importorskip("captum.attr")
warnings.filterwarnings("ignore", message=".*(hooks|require gradients).*")


class TwoInputs(nn.Module):
    """Two inputs and a per-example scale among the extra arguments."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)
        self.relu, self.tanh, self.out = nn.ReLU(), nn.Tanh(), nn.Linear(6, 3)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, shift: float = 0.0
    ) -> torch.Tensor:
        return self.out(self.tanh(self.relu(self.a(x1)) + self.b(x2) * scale[:, None] + shift))


def _close(got: object, expected: object) -> None:
    for g, e in zip(
        got if isinstance(got, tuple) else (got,),
        expected if isinstance(expected, tuple) else (expected,),
        strict=True,
    ):
        torch.testing.assert_close(g, e.detach(), rtol=1e-4, atol=1e-5)


def test_registered_in_the_captum_face() -> None:
    assert {"DeepLift", "DeepLiftShap"} <= set(fc.__all__)
    dl = fc.DeepLift(TwoInputs())
    assert dl.has_convergence_delta() and dl.multiplies_by_inputs
    assert not fc.DeepLiftShap(TwoInputs(), multiply_by_inputs=False).multiplies_by_inputs
    with pytest.raises(NotImplementedError, match="attribute_future"):  # as in Captum
        dl.attribute_future((torch.randn(2, 4), torch.randn(2, 3)), additional_forward_args=(torch.ones(2),))


def test_deeplift_tuple_inputs_extra_arguments_and_delta_match_captum() -> None:
    model = TwoInputs()
    inputs = (torch.randn(3, 4), torch.randn(3, 3))
    baselines = (torch.randn(1, 4), 0.5)
    args = (torch.rand(3) + 0.5, 0.25)
    expected, expected_delta = captum.DeepLift(model).attribute(
        inputs, baselines, target=1, additional_forward_args=args, return_convergence_delta=True
    )
    got, delta = fc.DeepLift(model).attribute(
        inputs, baselines, target=1, additional_forward_args=args, return_convergence_delta=True
    )
    _close(got, expected)
    torch.testing.assert_close(delta, expected_delta, rtol=0, atol=1e-5)
    direct = fc.DeepLift(model).compute_convergence_delta(got, baselines, inputs, 1, args)
    torch.testing.assert_close(direct, delta)


def test_multipliers_and_custom_attribution_function_match_captum() -> None:
    model = TwoInputs()
    inputs, args = (torch.randn(2, 4), torch.randn(2, 3)), (torch.ones(2),)

    def custom(multipliers: tuple, inputs: tuple, baselines: tuple) -> tuple:
        return tuple(m * (x - b) ** 2 for m, x, b in zip(multipliers, inputs, baselines, strict=True))

    _close(
        fc.DeepLift(model, multiply_by_inputs=False).attribute(
            inputs, target=0, additional_forward_args=args
        ),
        captum.DeepLift(model, multiply_by_inputs=False).attribute(
            inputs, target=0, additional_forward_args=args
        ),
    )
    _close(
        fc.DeepLift(model).attribute(
            inputs, target=2, additional_forward_args=args, custom_attribution_func=custom
        ),
        captum.DeepLift(model).attribute(
            inputs, target=2, additional_forward_args=args, custom_attribution_func=custom
        ),
    )


def test_deeplift_shap_callable_baselines_custom_function_and_delta_match_captum() -> None:
    model = TwoInputs()
    inputs, args = (torch.randn(2, 4), torch.randn(2, 3)), (torch.rand(2) + 0.5,)

    def background(inputs: tuple) -> tuple:
        return (torch.cat([inputs[0], inputs[0] - 1, torch.zeros(1, 4)]), torch.randn(5, 3))

    torch.manual_seed(3)
    drawn = background(inputs)
    expected, expected_delta = captum.DeepLiftShap(model).attribute(
        inputs, drawn, target=1, additional_forward_args=args, return_convergence_delta=True
    )
    got, delta = fc.DeepLiftShap(model).attribute(
        inputs, lambda: drawn, target=1, additional_forward_args=args, return_convergence_delta=True
    )
    _close(got, expected)
    torch.testing.assert_close(delta, expected_delta, rtol=0, atol=1e-5)

    def first_only(multipliers: tuple) -> tuple:
        return (multipliers[0], multipliers[1] * 0)

    _close(
        fc.DeepLiftShap(model).attribute(inputs, drawn, 2, args, custom_attribution_func=first_only),
        captum.DeepLiftShap(model).attribute(inputs, drawn, 2, args, custom_attribution_func=first_only),
    )


def test_target_tuple_indexes_a_three_dimensional_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 2, 1), nn.ReLU(), nn.Linear(10, 3))  # [B, 2, 3]
    x, base = torch.randn(2, 4, 10), torch.randn(2, 4, 10)
    _close(
        fc.DeepLift(model).attribute(x, base, target=(1, 2)),
        captum.DeepLift(model).attribute(x, base, target=(1, 2)),
    )
    per_example = [(0, 1), (1, 0)]
    _close(
        fc.DeepLift(model).attribute(x, base, target=per_example),
        captum.DeepLift(model).attribute(x, base, target=per_example),
    )


def test_deeplift_shap_refuses_non_tensor_baselines_like_captum() -> None:
    model = TwoInputs()
    inputs = (torch.randn(1, 4), torch.randn(1, 3))
    for baselines in ((0.0, 0.0), ([[0.0] * 4], [[0.0] * 3])):
        with pytest.raises(AssertionError, match="baselines") as raised:
            fc.DeepLiftShap(model).attribute(inputs, baselines, additional_forward_args=(torch.ones(1),))
        assert isinstance(raised.value, TypeError)  # fastxai's rule: TypeError naming the argument


def test_functional_relus_are_rescaled_where_captum_keeps_the_gradient() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.l1, self.l2 = nn.Linear(5, 7), nn.Linear(7, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l2(torch.relu(self.l1(x)))

    model = Functional()
    x, base = torch.randn(4, 5), torch.randn(4, 5)
    _, delta = fc.DeepLift(model).attribute(x, base, target=0, return_convergence_delta=True)
    assert delta.abs().max() < 1e-5
    _, captum_delta = captum.DeepLift(model).attribute(x, base, target=0, return_convergence_delta=True)
    assert captum_delta.abs().max() > 1e-3  # Captum leaves torch.relu with its gradient
