"""The Captum-shaped permutation classes against Captum's own: FeaturePermutation with the same
permutations (replayed into Captum, or a fixed ``perm_func`` in both), ShapleyValues to float
tolerance; tuple inputs, aggregate forwards, one example, futures, refusals, the model's state."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.attribution.permutation import permutations
from fastxai.compat._captum_permutation import FeaturePermutation, ShapleyValues

captum_attr = pytest.importorskip("captum.attr")


class Replay:
    """A Captum ``perm_func`` that applies given permutations, one per call in order."""

    def __init__(self, perms: torch.Tensor) -> None:
        self.perms, self.calls = perms, 0

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        perm = self.perms[self.calls]
        self.calls += 1
        return torch.where(mask, x[perm], x)


class TwoInputModel(nn.Module):
    """f(a, b, scale) = (W_a flatten(a) + tanh(W_b b)) * scale: a [B, 2, 3], b [B, 4], scale [B, 1]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(4, 3, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        return (self.a(a.flatten(1)) + torch.tanh(self.b(b))) * scale


def _two_inputs() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    inputs = (torch.randn(5, 2, 3, generator=generator), torch.randn(5, 4, generator=generator))
    return inputs, torch.rand(5, 1, generator=generator) + 0.5


@pytest.mark.parametrize("per_eval", [1, 3])
def test_feature_permutation_seeded_draws_replayed_into_captum(per_eval: int) -> None:
    model = small_cnn(seed=2).eval()
    x = torch.randn(6, 1, 4, 4)
    mask = (torch.arange(16) // 2).view(1, 1, 4, 4)  # 8 groups
    ours = FeaturePermutation(model).attribute(
        x, target=3, feature_mask=mask, perturbations_per_eval=per_eval, seed=7
    )
    replay = Replay(permutations(8, 6, 7, x.device))  # Captum asks for one group after another
    theirs = captum_attr.FeaturePermutation(model, perm_func=replay).attribute(x, target=3, feature_mask=mask)
    assert replay.calls == 8
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_feature_permutation_fixed_perm_func_tuple_inputs_like_captum() -> None:
    model = TwoInputModel()
    inputs, scale = _two_inputs()
    rotate = torch.tensor([2, 0, 4, 1, 3])

    def perm_func(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x[rotate] * mask + x * mask.logical_not()

    # group 1 spans both inputs; per-example extra argument
    masks = (torch.tensor([[[0, 0, 1], [2, 2, 3]]]), torch.tensor([[1, 4, 4, 5]]))
    kwargs = {"target": 1, "additional_forward_args": (scale,), "feature_mask": masks}
    ours = FeaturePermutation(model, perm_func=perm_func).attribute(inputs, **kwargs)
    theirs = captum_attr.FeaturePermutation(model, perm_func=perm_func).attribute(inputs, **kwargs)
    for mine, captums in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, captums, rtol=1e-5, atol=1e-6)


def test_feature_permutation_of_a_batch_loss_like_captum() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    x, labels = torch.randn(10, 5), torch.randn(10)

    def loss(inputs: torch.Tensor) -> torch.Tensor:  # one number for the whole batch
        return ((net(inputs).squeeze(1) - labels) ** 2).mean()

    ours = FeaturePermutation(loss).attribute(x, seed=4)
    theirs = captum_attr.FeaturePermutation(
        loss, perm_func=Replay(permutations(5, 10, 4, x.device))
    ).attribute(x)
    assert ours.shape == theirs.shape == (1, 5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_feature_permutation_one_example_as_captum() -> None:
    calls: list[int] = []
    model = nn.Linear(3, 2)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    x = torch.randn(1, 3)
    ours = FeaturePermutation(model).attribute(x, target=0)
    theirs = captum_attr.FeaturePermutation(model).attribute(x, target=0)
    assert torch.equal(ours, theirs) and torch.equal(ours, torch.zeros(1, 3))  # no group is permutable
    strict = FeaturePermutation(model)
    strict._min_examples_per_batch_grouped = 1
    calls.clear()
    with pytest.raises(AssertionError, match="at least 2"):
        strict.attribute(x, target=0)
    assert calls == []


def test_attribute_future_is_a_torch_future() -> None:
    model = small_cnn(seed=2).eval()

    def forward(x: torch.Tensor) -> torch.futures.Future:
        future: torch.futures.Future = torch.futures.Future()
        future.set_result(model(x)[:, 1])
        return future

    x = torch.randn(3, 1, 4, 4)
    mask = (torch.arange(16) // 4).view(1, 1, 4, 4)
    for explainer, kwargs in ((FeaturePermutation(forward), {"seed": 0}), (ShapleyValues(forward), {})):
        future = explainer.attribute_future(x, feature_mask=mask, **kwargs)
        assert type(future) is torch.Future
        expected = type(explainer)(lambda x: model(x)[:, 1]).attribute(x, feature_mask=mask, **kwargs)
        torch.testing.assert_close(future.wait(), expected)


@pytest.mark.filterwarnings("ignore:Feature mask is missing")  # Captum's note on the unused id
@pytest.mark.parametrize("per_eval", [1, 5])
def test_shapley_values_match_captum(per_eval: int) -> None:
    model = small_cnn(seed=4).eval()
    x = torch.randn(3, 1, 4, 4)
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 5, 5]]).view(
        1, 1, 4, 4
    )  # id 4 unused
    kwargs = {"baselines": 0.5, "target": [1, 4, 9], "feature_mask": mask}
    ours = ShapleyValues(model).attribute(x, perturbations_per_eval=per_eval, **kwargs)
    theirs = captum_attr.ShapleyValues(model).attribute(x, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_shapley_values_tuple_inputs_and_several_outputs_match_captum() -> None:
    model = TwoInputModel()
    inputs, scale = _two_inputs()
    masks = (torch.tensor([[[0, 0, 1], [1, 2, 2]]]), torch.tensor([[3, 3, 4, 4]]))
    baselines = (torch.full((1, 2, 3), 0.1), 0.2)
    kwargs = {"baselines": baselines, "additional_forward_args": (scale,), "feature_mask": masks}
    for target in (2, None):  # None: every output, [B, 3, *F] per input as Captum gives it
        ours = ShapleyValues(model).attribute(inputs, target=target, **kwargs)
        theirs = captum_attr.ShapleyValues(model).attribute(inputs, target=target, **kwargs)
        for mine, captums in zip(ours, theirs, strict=True):
            torch.testing.assert_close(mine, captums, rtol=1e-5, atol=1e-5)


def test_shapley_values_of_an_aggregate_match_captum() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1))

    def total(x: torch.Tensor) -> torch.Tensor:
        return net(x).sum()

    x = torch.randn(3, 4)
    ours = ShapleyValues(total).attribute(x)
    theirs = captum_attr.ShapleyValues(total).attribute(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_shapley_values_refuse_too_many_groups_before_any_call() -> None:
    calls: list[int] = []
    model = nn.Linear(21, 2)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(ValueError, match="21 groups") as raised:
        ShapleyValues(model).attribute(torch.randn(2, 21), target=0)
    assert isinstance(raised.value, AssertionError)
    assert calls == []


def test_model_state_left_as_found() -> None:
    model = small_cnn(seed=6)
    model.train()
    model.register_forward_hook(lambda module, args, output: None)
    before = model_state(model)
    x = torch.randn(3, 1, 4, 4)
    mask = (torch.arange(16) // 4).view(1, 1, 4, 4)
    FeaturePermutation(model).attribute(x, target=0, feature_mask=mask, seed=0)
    ShapleyValues(model).attribute(x, target=0, feature_mask=mask)
    assert_same_state(before, model_state(model))
    for explainer in (FeaturePermutation(model), ShapleyValues(model)):
        with pytest.raises((ValueError, IndexError, RuntimeError)):
            explainer.attribute(x, target=99, feature_mask=mask)
        assert_same_state(before, model_state(model))
