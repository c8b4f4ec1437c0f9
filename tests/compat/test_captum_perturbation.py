"""The Captum-shaped perturbation classes: Captum's numbers where deterministic, exact values on
linear models for the sampled ones, tuple inputs, extra forward arguments, refusals."""

from __future__ import annotations

import pytest
import torch
from models import LinearModel, assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.compat._captum_perturbation import (
    FeatureAblation,
    KernelShap,
    Lime,
    Occlusion,
    ShapleyValueSampling,
)

captum_attr = pytest.importorskip("captum.attr")


class TwoInputModel(nn.Module):
    """f(a, b, scale) = (W_a flatten(a) + W_b b) * scale: a [B, 2, 3], b [B, 4], scale [B, 1]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(4, 3, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        return (self.a(a.flatten(1)) + self.b(b)) * scale


@pytest.mark.parametrize("per_eval", [1, 4])
@pytest.mark.parametrize(("window", "strides"), [((1, 3, 3), 2), ((1, 2, 2), (1, 2, 2)), ((1, 4, 4), 3)])
def test_occlusion_matches_captum(per_eval: int, window: tuple[int, ...], strides: object) -> None:
    model = small_cnn(seed=1).eval()
    x = torch.randn(3, 1, 8, 8)
    target = [2, 0, 7]
    kwargs = {"sliding_window_shapes": window, "strides": strides, "baselines": 0.25, "target": target}
    ours = Occlusion(model).attribute(x, perturbations_per_eval=per_eval, **kwargs)
    theirs = captum_attr.Occlusion(model).attribute(x, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours_tuple = Occlusion(model).attribute((x,), **{**kwargs, "sliding_window_shapes": (window,)})
    assert isinstance(ours_tuple, tuple)
    torch.testing.assert_close(ours_tuple[0], theirs, rtol=1e-5, atol=1e-6)


class ImageAndVector(nn.Module):
    """An image and a vector through their own layers, joined, gated by a per-example mask."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.conv, self.image_fc = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3 * 36, 5)
        self.vector_fc, self.head = nn.Linear(7, 5), nn.Linear(10, 3)

    def forward(self, image: torch.Tensor, vector: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.image_fc(torch.relu(self.conv(image)).flatten(1)))
        return self.head(torch.cat([a, torch.relu(self.vector_fc(vector))], dim=1) * mask)


@pytest.mark.parametrize("per_eval", [1, 4])
def test_occlusion_of_several_inputs_matches_captum(per_eval: int) -> None:
    """Each input occluded in turn with its own window, strides and baseline, the others and a
    per-example extra argument as given: Captum's numbers, one attribution per input."""
    model = ImageAndVector().eval()
    generator = torch.Generator().manual_seed(6)
    image, vector = torch.rand(3, 2, 6, 6, generator=generator), torch.rand(3, 7, generator=generator)
    mask = (torch.rand(3, 10, generator=generator) > 0.3).float()
    for kwargs in (
        {"sliding_window_shapes": ((1, 3, 2), (2,)), "strides": ((1, 2, 1), 2), "baselines": (0.0, 0.5)},
        {"sliding_window_shapes": ((2, 2, 2), (3,)), "strides": None, "baselines": (0.25, 0.1)},
    ):
        args = {**kwargs, "target": torch.tensor([0, 2, 1]), "additional_forward_args": (mask,)}
        ours = Occlusion(model).attribute((image, vector), perturbations_per_eval=per_eval, **args)
        theirs = captum_attr.Occlusion(model).attribute((image, vector), **args)
        assert isinstance(ours, tuple) and len(ours) == 2
        for got, expected in zip(ours, theirs, strict=True):
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    shared = Occlusion(model).attribute((image, vector), **{**args, "baselines": 0.25})  # one number for all
    per_input = Occlusion(model).attribute((image, vector), **{**args, "baselines": (0.25, 0.25)})
    for got, expected in zip(shared, per_input, strict=True):
        torch.testing.assert_close(got, expected)


def test_feature_ablation_matches_captum_with_gapped_mask() -> None:
    model = small_cnn(seed=2).eval()
    x = torch.randn(2, 1, 6, 6)
    mask = ((torch.arange(36) // 9) * 10).view(1, 1, 6, 6)  # ids 0, 10, 20, 30: Captum skips the gaps
    base = torch.randn(2, 1, 6, 6)
    ours = FeatureAblation(model).attribute(
        x, baselines=base, target=3, feature_mask=mask, perturbations_per_eval=2
    )
    theirs = captum_attr.FeatureAblation(model).attribute(x, baselines=base, target=3, feature_mask=mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_feature_ablation_tuple_inputs_and_per_example_args_match_captum() -> None:
    model = TwoInputModel()
    a, b = torch.randn(3, 2, 3), torch.randn(3, 4)
    scale = torch.tensor([[1.0], [2.0], [-0.5]])
    masks = (torch.tensor([[0, 0, 1], [1, 2, 2]]).unsqueeze(0), torch.tensor([[3, 3, 4, 4]]))
    kwargs = {
        "baselines": (0.5, torch.zeros(1, 4)),
        "target": 1,
        "additional_forward_args": (scale,),
        "feature_mask": masks,
    }
    ours = FeatureAblation(model).attribute((a, b), perturbations_per_eval=3, **kwargs)
    theirs = captum_attr.FeatureAblation(model).attribute((a, b), **kwargs)
    assert isinstance(ours, tuple) and len(ours) == 2
    for mine, captums in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, captums, rtol=1e-5, atol=1e-6)


def _linear_groups(model: LinearModel, x: torch.Tensor, mask: torch.Tensor, target: int) -> torch.Tensor:
    contribution = model.weight[target].detach() * x.flatten(1)
    groups = int(mask.max()) + 1
    return torch.zeros(x.shape[0], groups, dtype=x.dtype).index_add_(1, mask.flatten(), contribution)


@pytest.mark.filterwarnings("ignore:You are providing multiple inputs")
@pytest.mark.parametrize("cls", [KernelShap, ShapleyValueSampling])
def test_shapley_classes_exact_on_linear_model_like_captum(cls: type) -> None:
    model = LinearModel(16, 3, dtype=torch.float32)
    x = torch.randn(2, 1, 4, 4)
    mask = (torch.arange(16) // 4).view(1, 1, 4, 4)
    expected = _linear_groups(model, x, mask, 2)
    ours = cls(model).attribute(
        x, target=2, feature_mask=mask, n_samples=25, perturbations_per_eval=4, seed=0
    )
    torch.testing.assert_close(ours, expected[:, mask.flatten()].view_as(x), rtol=1e-4, atol=1e-5)
    theirs = getattr(captum_attr, cls.__name__)(model).attribute(x, target=2, feature_mask=mask, n_samples=25)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    if cls is KernelShap:
        flat = cls(model).attribute(x, target=2, feature_mask=mask, n_samples=25, return_input_shape=False)
        torch.testing.assert_close(flat, expected, rtol=1e-4, atol=1e-5)


def test_lime_linear_regression_surrogate_recovers_linear_model() -> None:
    linear_model = pytest.importorskip("captum._utils.models.linear_model")
    model = LinearModel(16, 3, dtype=torch.float32)
    x = torch.randn(2, 16)
    mask = (torch.arange(16) // 4).view(1, 16)
    lime = Lime(model, interpretable_model=linear_model.SkLearnLinearRegression())
    got = lime.attribute(x, target=0, feature_mask=mask, n_samples=60, return_input_shape=False, seed=0)
    torch.testing.assert_close(got, _linear_groups(model, x, mask, 0), rtol=1e-4, atol=1e-4)


def test_lime_default_lasso_close_to_captum() -> None:
    """Both fit Lasso(alpha=0.01) on random samples of a linear model with big coefficients:
    the coefficients agree to the shrinkage and sampling noise."""
    model = LinearModel(8, 2, dtype=torch.float32)
    with torch.no_grad():
        model.weight.mul_(5)
    x = torch.randn(1, 8) + 2
    mask = (torch.arange(8) // 2).view(1, 8)
    ours = Lime(model).attribute(
        x, target=1, feature_mask=mask, n_samples=400, return_input_shape=False, seed=0
    )
    torch.manual_seed(0)
    theirs = captum_attr.Lime(model).attribute(
        x, target=1, feature_mask=mask, n_samples=400, return_input_shape=False
    )
    scale = _linear_groups(model, x, mask, 1).abs().max()
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=0, atol=0.05 * float(scale))


def test_model_state_restored_and_mode_kept() -> None:
    model = small_cnn(seed=3).eval()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 1, 4, 4)
    FeatureAblation(model).attribute(x, target=1)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        KernelShap(model).attribute(x, target=50, n_samples=20)
    assert_same_state(before, model_state(model))
    model.train()  # like Captum, the model runs in the mode it is in
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    Occlusion(model).attribute(x, sliding_window_shapes=(1, 2, 2), strides=2, target=1)
    assert all(seen) and model.training


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda m, x: Occlusion(m).attribute((x, x), sliding_window_shapes=(1, 2, 2)),
            ValueError,
            "sliding_window_shapes must be a tuple with one entry per input",
        ),
        (  # the second input's window is checked before the first input is occluded
            lambda m, x: Occlusion(m).attribute((x, x), sliding_window_shapes=((1, 2, 2), (1, 5, 5))),
            ValueError,
            r"sliding_window_shapes\[1\]",
        ),
        (
            lambda m, x: Occlusion(m).attribute(
                (x, x), sliding_window_shapes=((1, 2, 2),) * 2, strides=(1, 2, 3)
            ),
            ValueError,
            "strides must be a tuple with one entry per input",
        ),
        (
            lambda m, x: FeatureAblation(m).attribute(x, perturbations_per_eval=0),
            ValueError,
            "perturbations_per_eval",
        ),
        (lambda m, x: Lime(m, similarity_func=1.0), TypeError, "similarity_func"),
        (lambda m, x: Lime(m, interpretable_model=object()), TypeError, "interpretable_model"),
        (lambda m, x: KernelShap(m).attribute(x, target=1, n_samples=0), ValueError, "n_samples"),
        (
            lambda m, x: KernelShap(m).attribute(
                x,
                target=1,
                feature_mask=torch.zeros(1, 1, 4, 4, dtype=torch.long) + 2,
                return_input_shape=False,
            ),
            ValueError,
            "feature_mask",
        ),
        (
            lambda m, x: FeatureAblation(m).attribute(x, feature_mask=torch.zeros(1, 1, 4, 4)),
            TypeError,
            "integer",
        ),
    ],
)
def test_refusals_before_any_model_call(call, error: type, match: str) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    model = small_cnn(seed=4).eval()
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(error, match=match):
        call(model, torch.randn(2, 1, 4, 4))
    assert calls == []
