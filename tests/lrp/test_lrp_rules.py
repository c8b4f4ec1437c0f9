"""Every rule re-derived as a textbook formula (explicit sums over i, j) and compared.

Network: layer(a) -> ReLU -> Linear(head, no bias) with LRP-0 on the head, so the relevance
reaching the layer under test is ``R_j = h_j w2_kj`` for target k (hand-derived); the layer
under test gets the rule, in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastxai.lrp as lrp
from fastxai.lrp import rules


@pytest.fixture(autouse=True)
def _float64() -> object:
    """Oracles in float64 (restored afterwards: other test files run in float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _sign0(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z >= 0, 1.0, -1.0)


def _dense_net(seed: int = 0, features: int = 5, hidden: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 3, bias=False))
    return net.double()


def _hidden_relevance(net: nn.Sequential, x: torch.Tensor, target: int) -> torch.Tensor:
    hidden = torch.relu(net[0](x))
    return hidden * net[2].weight[target]  # LRP-0 on the bias-free head: R_j = h_j w_kj


def textbook(
    rule: rules.Rule, a: torch.Tensor, W: torch.Tensor, b: torch.Tensor, R: torch.Tensor
) -> torch.Tensor:
    """The rule for one sample: a [I], W [J, I], b [J], R [J] -> R_in [I], written as sums."""
    I, J = a.shape[0], W.shape[0]  # noqa: E741
    out = torch.zeros(I)
    z_plain = W @ a + b
    for j in range(J):
        for i in range(I):
            if isinstance(rule, rules.Epsilon):
                z = z_plain[j]
                out[i] += a[i] * W[j, i] / (z + rule.epsilon * _sign0(z)) * R[j]
            elif isinstance(rule, rules.AlphaBeta):
                contributions = a * W[j]
                zp = contributions.clamp(min=0).sum() + b[j].clamp(min=0)
                zn = contributions.clamp(max=0).sum() + b[j].clamp(max=0)
                eps = rule.stabilizer
                out[i] += (
                    rule.alpha * contributions[i].clamp(min=0) / (zp + eps * _sign0(zp))
                    - rule.beta * contributions[i].clamp(max=0) / (zn + eps * _sign0(zn))
                ) * R[j]
            elif isinstance(rule, rules.Gamma):
                g, eps = rule.gamma, rule.stabilizer
                up, down = W[j] + g * W[j].clamp(min=0), W[j] + g * W[j].clamp(max=0)
                if z_plain[j] > 0:  # favour positive contributions
                    terms = a.clamp(min=0) * up + a.clamp(max=0) * down
                    z = terms.sum() + b[j] + g * b[j].clamp(min=0)
                elif z_plain[j] < 0:
                    terms = a.clamp(min=0) * down + a.clamp(max=0) * up
                    z = terms.sum() + b[j] + g * b[j].clamp(max=0)
                else:
                    continue
                out[i] += terms[i] / (z + eps * _sign0(z)) * R[j]
            elif isinstance(rule, rules.ZBox):
                low, high = torch.full((I,), float(rule.low)), torch.full((I,), float(rule.high))
                terms = a * W[j] - low * W[j].clamp(min=0) - high * W[j].clamp(max=0)
                z = terms.sum()
                out[i] += terms[i] / (z + rule.stabilizer * _sign0(z)) * R[j]
            elif isinstance(rule, rules.Flat):
                out[i] += 1.0 / (I + rule.stabilizer) * R[j]
            elif isinstance(rule, rules.WSquare):
                out[i] += W[j, i] ** 2 / ((W[j] ** 2).sum() + rule.stabilizer) * R[j]
    return out


RULES = [
    pytest.param(rules.Epsilon(0.0), id="lrp0"),
    pytest.param(rules.Epsilon(0.3), id="epsilon"),
    pytest.param(rules.Gamma(0.25), id="gamma"),
    pytest.param(rules.AlphaBeta(2.0, 1.0), id="alpha2beta1"),
    pytest.param(rules.ZPlus(), id="zplus"),
    pytest.param(rules.ZBox(-1.0, 1.0), id="zbox"),
    pytest.param(rules.Flat(), id="flat"),
    pytest.param(rules.WSquare(), id="wsquare"),
]


@pytest.mark.parametrize("rule", RULES)
def test_rule_matches_textbook_on_linear(rule: rules.Rule) -> None:
    net = _dense_net()
    x = torch.rand(3, 5) * 2 - 1  # signed inputs in the ZBox's [-1, 1]
    target = 1
    R = lrp(net, x, target=target, composite={"0": rule, "2": rules.Epsilon(0.0)})
    R_hidden = _hidden_relevance(net, x, target)
    expected = torch.stack(
        [
            textbook(rule, x[n], net[0].weight.detach(), net[0].bias.detach(), R_hidden[n].detach())
            for n in range(3)
        ]
    )
    torch.testing.assert_close(R, expected, rtol=1e-9, atol=1e-12)


def _conv_as_matrix(conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The convolution as a dense matrix W [J, I] and bias b [J] on flattened inputs."""
    eye = torch.eye(int(torch.tensor(shape).prod())).view(-1, *shape)
    with torch.no_grad():
        columns = (conv(eye) - conv(torch.zeros(1, *shape))).flatten(1)
        bias = conv(torch.zeros(1, *shape)).flatten()
    return columns.T, bias


# Flat on a conv has its own oracle (test_flat_on_conv).
@pytest.mark.parametrize("rule", [param for param in RULES if not isinstance(param.values[0], rules.Flat)])
def test_rule_matches_textbook_on_conv(rule: rules.Rule) -> None:
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    net = nn.Sequential(conv, nn.Flatten(), nn.ReLU(), nn.Linear(3 * 3 * 3, 2, bias=False)).double()
    x = torch.rand(2, 2, 5, 5) * 2 - 1
    R = lrp(net, x, target=0, composite={"0": rule, "3": rules.Epsilon(0.0)})
    W, b = _conv_as_matrix(conv, (2, 5, 5))
    hidden = torch.relu(conv(x).flatten(1)).detach()
    R_hidden = hidden * net[3].weight[0].detach()
    expected = torch.stack([textbook(rule, x[n].flatten(), W, b, R_hidden[n]) for n in range(2)])
    torch.testing.assert_close(R.flatten(1), expected, rtol=1e-8, atol=1e-11)


def test_flat_on_conv() -> None:
    """Flat: each output's relevance shared equally over its receptive field (zero padding counts
    as no input): R_i = sum_j [i in field(j)] / |field(j)| R_j."""
    torch.manual_seed(4)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2, bias=False)).double()
    x = torch.rand(2, 2, 4, 4)
    R = lrp(net, x, target=1, composite={"0": rules.Flat(0.0), "3": rules.Epsilon(0.0)})
    W, _ = _conv_as_matrix(conv, (2, 4, 4))
    connected = (W != 0).double()
    R_hidden = (torch.relu(conv(x)).flatten(1) * net[3].weight[1]).detach()
    expected = (R_hidden / connected.sum(1)) @ connected
    torch.testing.assert_close(R.flatten(1), expected)


def test_pass_rule_leaves_activation_relevance_unchanged() -> None:
    net = _dense_net()
    x = torch.rand(2, 5)
    _, layers = lrp(net, x, target=0, composite={"1": rules.Pass()}, return_layer_relevances=True)
    torch.testing.assert_close(layers["1"], layers["0"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: rules.Epsilon(-1.0), "epsilon"),
        (lambda: rules.AlphaBeta(2.0, 2.0), "alpha - beta"),
        (lambda: rules.Gamma("a"), "gamma"),  # type: ignore[arg-type]
        (lambda: rules.ZBox("low", 1.0), "low"),  # type: ignore[arg-type]
    ],
)
def test_rule_arguments_are_checked(make, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()
