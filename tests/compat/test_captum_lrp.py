"""fastxai.compat LRP: each Captum rule re-derived by its textbook formula on a two-layer net and
compared with fastxai and with Captum's own LRP, side by side; Captum's errors and shapes."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

from fastxai.compat._captum_lrp import LRP

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat LRP")
lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")


class TwoLayer(nn.Module):
    """fc2(relu(fc1(x))) with biases; fc1 keeps the width (IdentityRule needs it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.relu, self.fc2 = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def textbook(rule: object, a: torch.Tensor, layer: nn.Linear, relevance: torch.Tensor) -> torch.Tensor:
    """One layer by Captum's formulas: ``z = a W'^T + b'``, ``R_in = a * ((R / (z + eps sign(z))) W')``
    (sign(0) = 1) with ``W' = W`` (epsilon), ``W + gamma W+`` (gamma), ``W+`` (alpha1-beta0);
    ``b' = b`` unless ``set_bias_to_zero``; identity: ``R_in = R``."""
    if type(rule) is lrp_rules.IdentityRule:
        return relevance
    weight, bias = layer.weight.detach().double(), layer.bias.detach().double()
    if type(rule) is lrp_rules.GammaRule:
        weight = weight + rule.gamma * weight.clamp(min=0)
    elif type(rule) is lrp_rules.Alpha1_Beta0_Rule:
        weight = weight.clamp(min=0)
    if getattr(rule, "set_bias_to_zero", False):
        bias = torch.zeros_like(bias)
    z = a @ weight.T + bias
    sign = torch.where(z >= 0, 1.0, -1.0).double()
    return a * ((relevance / (z + sign * rule.STABILITY_FACTOR)) @ weight)


RULES = {
    "epsilon": lambda: lrp_rules.EpsilonRule(epsilon=0.1),
    "gamma": lambda: lrp_rules.GammaRule(gamma=0.5),
    "gamma_no_bias": lambda: lrp_rules.GammaRule(set_bias_to_zero=True),
    "alpha1_beta0": lambda: lrp_rules.Alpha1_Beta0_Rule(),
    "identity": lambda: lrp_rules.IdentityRule(),
}


@pytest.mark.parametrize("first", sorted(RULES))
@pytest.mark.parametrize("second", ["epsilon", "gamma", "alpha1_beta0"])
def test_each_captum_rule_matches_its_formula_and_captum(first: str, second: str) -> None:
    model = TwoLayer().eval()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))  # signed inputs
    target = torch.tensor([0, 2, 1])
    model.fc1.rule, model.fc2.rule = RULES[first](), RULES[second]()  # type: ignore[assignment]
    state = model_state(model)
    got, delta = LRP(model).attribute(x, target=target, return_convergence_delta=True)
    assert_same_state(state, model_state(model))
    a0 = x.double()
    a1 = model.relu(model.fc1(a0.float())).double().detach()
    out = model.fc2(a1.float()).double().detach()
    r2 = torch.zeros_like(out).scatter_(1, target.view(-1, 1), out.gather(1, target.view(-1, 1)))
    expected = textbook(model.fc1.rule, a0, model.fc1, textbook(model.fc2.rule, a1, model.fc2, r2))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-4)
    theirs, theirs_delta = captum_attr.LRP(model).attribute(x, target=target, return_convergence_delta=True)
    torch.testing.assert_close(got, theirs.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(delta, theirs_delta.detach(), atol=1e-4, rtol=1e-4)


def test_output_shapes_targets_and_optional_arguments_as_captum() -> None:
    """Tuple targets on a [B, 2, 3] output, an int target on [B, 6, 1]; ``forward``'s optional
    arguments at their defaults (traced with them, not as more inputs)."""

    class Shaped(nn.Module):
        def __init__(self, shape: tuple[int, ...]) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.fc, self.relu, self.shape = nn.Linear(5, 6), nn.ReLU(), shape

        def forward(
            self, x: torch.Tensor, scale: torch.Tensor | None = None, log: bool = False
        ) -> torch.Tensor:
            x = x if scale is None else x * scale
            out = self.relu(self.fc(x)).view(-1, *self.shape)
            return out.log() if log else out

    x = torch.rand(4, 5)
    model, flat = Shaped((2, 3)).eval(), Shaped((6, 1)).eval()
    for net, target in ((model, (1, 2)), (model, (0, 0)), (flat, 4)):
        got = LRP(net).attribute(x, target=target)
        expected = captum_attr.LRP(net).attribute(x, target=target)
        torch.testing.assert_close(got, expected.detach(), atol=1e-6, rtol=1e-5)


def test_captum_errors() -> None:
    model = TwoLayer()
    model.fc1.rule = 1  # type: ignore[assignment]
    with pytest.raises(TypeError, match="rule"):
        LRP(model)
    model = TwoLayer()
    model.add_module("unused", nn.Sigmoid())  # Captum refuses a leaf without a rule, used or not
    with pytest.raises(TypeError, match="unused"):
        LRP(model).attribute(torch.rand(1, 4), target=0)
    model.unused.rule = lrp_rules.IdentityRule()  # type: ignore[assignment]
    LRP(model).attribute(torch.rand(1, 4), target=0)

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    with pytest.raises(RuntimeError, match="more than once"):
        LRP(Reused()).attribute(torch.rand(2, 3), target=0)
    with pytest.raises(NotImplementedError):
        LRP(TwoLayer()).attribute_future()
    wide = TwoLayer()
    wide.fc2.rule = lrp_rules.IdentityRule()  # type: ignore[assignment]  # 4 -> 3: not an identity
    with pytest.raises(ValueError, match="shape"):
        LRP(wide).attribute(torch.rand(1, 4), target=0)
    soft = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    soft[1].rule = lrp_rules.IdentityRule()  # type: ignore[assignment]  # fastxai has a softmax rule
    with pytest.raises(NotImplementedError, match="Softmax"):
        LRP(soft).attribute(torch.rand(1, 4), target=0)
    normed = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout()).train()
    state = model_state(normed)
    with pytest.raises(ValueError, match="training mode"):
        LRP(normed).attribute(torch.rand(2, 4), target=0)
    assert_same_state(state, model_state(normed))


def test_training_mode_dropout_drops_and_mode_is_kept() -> None:
    """A Dropout in training mode drops (the model runs in its mode, as in Captum); relevance is
    conserved onto the dropped output (no biases, epsilon 1e-9), and the mode is kept."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 1, bias=False), nn.Dropout(0.5)
    )
    model.train()
    x = torch.rand(64, 6)
    relevance, delta = LRP(model).attribute(x, return_convergence_delta=True)
    assert model.training and all(module.training for module in model.modules())
    sums = relevance.sum(1)
    with torch.no_grad():
        undropped = model[2](model[1](model[0](x))).squeeze(1)
    dropped = sums.abs() < 1e-6 * undropped.abs().max()
    assert 0 < int(dropped.sum()) < 64  # some samples dropped, some kept
    torch.testing.assert_close(sums[~dropped], 2 * undropped[~dropped], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-5, rtol=0)


def test_residual_block_as_captum_or_conserving() -> None:
    """A ResNet block (BatchNorm, one ReLU module called twice, a functional skip ``out + x`` from
    the first layer's input): Captum's numbers by default (relevance through the sum as a
    gradient, multiplied by ``x`` where ``x`` also feeds the convolution, as Captum's input hook
    does), in float64 (epsilon 1e-9 makes float32 results noisy); ``functional="lrp"`` splits the
    sum in proportion to the summands and conserves relevance (no biases, epsilon 1e-9)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.conv1, self.bn1 = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.BatchNorm2d(2)
            self.conv2, self.relu = nn.Conv2d(2, 2, 3, padding=1, bias=False), nn.ReLU()
            self.fc = nn.Linear(2 * 16, 3, bias=False)
            with torch.no_grad():
                self.bn1.running_mean.uniform_(-0.1, 0.1)
                self.bn1.running_var.uniform_(0.5, 1.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv2(self.relu(self.bn1(self.conv1(x))))
            return self.fc(self.relu(out + x).flatten(1))

    model = Block().eval().double()
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    got = LRP(model).attribute(x, target=1)
    expected = captum_attr.LRP(model).attribute(x, target=1).detach()
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-7)
    model.bn1.bias.data.zero_()
    model.bn1.running_mean.zero_()  # no shift: relevance is conserved through the BatchNorm too
    conserving, delta = LRP(model, functional="lrp").attribute(x, target=1, return_convergence_delta=True)
    torch.testing.assert_close(delta, torch.zeros_like(delta), atol=1e-6, rtol=0)
    assert not torch.allclose(conserving, LRP(model).attribute(x, target=1))


class GridOutput(nn.Module):
    """A [B, 2, 3] output (per-position scores): a target names one element per sample."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.relu, self.fc2 = nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x))).view(-1, 2, 3)


def test_list_of_tuples_target_matches_captum() -> None:
    """One (row, column) of the [B, 2, 3] output per sample, as Captum's LRP takes it; the same
    through fastxai.lrp, whose relevance of a bias-free net sums to that element."""
    model = GridOutput().eval()
    x = torch.rand(3, 4)
    target = [(0, 1), (1, 2), (1, 0)]
    ours, delta = LRP(model).attribute(x, target=target, return_convergence_delta=True)
    with pytest.warns(UserWarning):
        expected = captum_attr.LRP(model).attribute(x.clone(), target=target)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-5, atol=1e-7)
    output = model(x).detach()
    picked = torch.stack([output[i][t] for i, t in enumerate(target)])
    torch.testing.assert_close(delta, picked - ours.sum(1), rtol=1e-5, atol=1e-6)
    import fastxai

    with torch.no_grad():
        model.fc1.bias.zero_()
        model.fc2.bias.zero_()
    relevance = fastxai.lrp(model, x, target=target, composite="epsilon", chunk_size=2)
    picked = torch.stack([model(x).detach()[i][t] for i, t in enumerate(target)])
    torch.testing.assert_close(relevance.sum(1), picked, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="target index 1"):
        fastxai.lrp(model, x, target=[(0, 1), (1, 3), (1, 0)])
    with pytest.raises(ValueError, match=r"\[batch, classes\] output"):
        fastxai.lrp(model, x, target=None)
