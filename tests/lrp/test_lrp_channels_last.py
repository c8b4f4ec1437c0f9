"""The channels-last pass of ``lrp`` (4-d CPU inputs of conv nets) against the contiguous one.

Both passes run the same rules on the same values; only the memory layout of the activations
and relevances differs, so the results agree to the convolutions' summation order (float64
here: 1e-12). Covered: every handler a conv net reaches in that layout (z+, gamma, alpha-beta,
flat and z-box first layers, grouped, strided, dilated and 'same'-padded convolutions,
winner-take-all and average max pooling (also ceil-mode and adaptive), average pooling,
LocalResponseNorm, merged BatchNorm, residual sums, concatenation, ``view`` of a channels-last
activation), layer relevances, and the layout of what is returned.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from models import small_cnn
from torch import nn

import fastxai.lrp as lrp
from fastxai.lrp import _plans, core, rules
from fastxai.lrp._linear import CONV_TYPES
from fastxai.lrp.composites import resolve_composite


class ViewNet(nn.Module):
    """Flattens a 4-d activation with ``view``, which a channels-last tensor does not allow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(F.relu(self.conv(x)))
        return self.fc(h.view(h.shape[0], -1))


class BranchNet(nn.Module):
    """Residual sum, channel concatenation, a grouped convolution and functional pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1, groups=2)
        self.mix = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(self.a(h) + h)
        h = torch.cat([h, F.relu(self.b(h))], dim=1)
        h = F.max_pool2d(F.relu(self.mix(h)), 2)
        h = F.avg_pool2d(h, 2)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class OddLayers(nn.Module):
    """Strided, dilated and 'same'-padded convolutions, ceil-mode and adaptive max pooling,
    LocalResponseNorm and padded average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(6, 6, 3, padding=2, dilation=2)
        self.same = nn.Conv2d(6, 4, 3, padding="same")
        self.norm = nn.LocalResponseNorm(3)
        self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.fc = nn.Linear(4 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.dilated(F.relu(self.down(x))))
        h = self.pool(self.norm(F.relu(self.same(h))))
        h = F.avg_pool2d(h, 2, stride=1, padding=1)
        return self.fc(F.adaptive_max_pool2d(h, (2, 1)).flatten(1))


def _vgg() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 4),
    )  # fmt: skip


MODELS: dict[str, Callable[[], nn.Module]] = {
    "vgg": _vgg,
    "bn_cnn": lambda: small_cnn(channels=3),
    "view": ViewNet,
    "branches": BranchNet,
    "odd_layers": OddLayers,
}
COMPOSITES: dict[str, object] = {
    "epsilon_plus_flat": "epsilon_plus_flat",
    "epsilon_gamma_box": lrp.get_composite("epsilon_gamma_box", low=-1.0, high=2.0),
    "epsilon_alpha2_beta1_flat": "epsilon_alpha2_beta1_flat",
    "gamma_everywhere": lrp.Composite([(CONV_TYPES, rules.Gamma(0.25)), (nn.Linear, rules.Epsilon(1e-6))]),
}


def _contiguous_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "_pass_layout", lambda plan, x: torch.contiguous_format)


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("composite", list(COMPOSITES))
@pytest.mark.parametrize("maxpool", ["winner", "average"])
def test_channels_last_pass_equals_contiguous_pass(
    name: str, composite: str, maxpool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(name)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    resolved = COMPOSITES[composite]
    assert core._pass_layout(_plans.cached_plan(model, resolve_composite(resolved)), x) == (
        torch.channels_last
    )
    fast, fast_layers = lrp.lrp(
        model, x, target=1, composite=resolved, maxpool=maxpool, return_layer_relevances=True
    )
    with monkeypatch.context() as patch:
        _contiguous_pass(patch)
        plain, plain_layers = lrp.lrp(
            model, x, target=1, composite=resolved, maxpool=maxpool, return_layer_relevances=True
        )
    assert fast.is_contiguous() and fast.shape == x.shape and fast.dtype == x.dtype
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    assert fast_layers.keys() == plain_layers.keys()
    for key in plain_layers:
        torch.testing.assert_close(fast_layers[key], plain_layers[key], rtol=1e-12, atol=1e-12, msg=key)
    assert plain.abs().sum() > 0


def test_float32_pass_agrees_and_conserves(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32, winner-take-all pooling, epsilon -> 0 and no biases: both passes conserve."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5, bias=False),
    ).eval()  # fmt: skip
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    exact = lrp.Composite([((nn.Linear, *CONV_TYPES), rules.Epsilon(0.0))], stabilizer=0.0)
    fast = lrp.lrp(model, x, target=2, composite=exact)
    with monkeypatch.context() as patch:
        _contiguous_pass(patch)
        plain = lrp.lrp(model, x, target=2, composite=exact)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)
    logits = model(x)[:, 2]
    torch.testing.assert_close(fast.flatten(1).sum(1), logits, rtol=1e-4, atol=1e-5)


def test_layout_is_chosen_only_for_4d_cpu_inputs_of_conv_nets() -> None:
    conv = _model("vgg")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double().eval()
    plan_conv = _plans.cached_plan(conv, resolve_composite("epsilon_plus_flat"))
    plan_mlp = _plans.cached_plan(mlp, resolve_composite("epsilon_plus_flat"))
    image = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert core._pass_layout(plan_conv, image) == torch.channels_last
    assert core._pass_layout(plan_conv, image[:, :, 0]) == torch.contiguous_format  # 3-d input
    assert core._pass_layout(plan_mlp, image[:, :, :2, :2]) == torch.contiguous_format  # no conv


def test_channels_last_input_and_model_state_are_kept() -> None:
    model = _model("view")
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    relevance = lrp.lrp(model, x, target=0)
    assert torch.equal(x, before) and x.is_contiguous(memory_format=torch.channels_last)
    assert relevance.is_contiguous()
    assert all(p.requires_grad for p in model.parameters()) and not model.training
