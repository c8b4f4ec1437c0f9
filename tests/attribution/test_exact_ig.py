"""Exact Integrated Gradients on piecewise-linear networks: closed form, completeness at float
rounding, brute-force Riemann sums, refusals that name the layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state, small_cnn
from torch import nn

import fastxai as fx


class Residual(nn.Module):
    """Conv-BN-ReLU stem, max pooling, two residual blocks (functional relu, in-place ReLU,
    leaky ReLU), average pooling, linear head."""

    def __init__(self, seed: int = 0, width: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.block1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.stem(x))
        h = F.relu(h + self.block1(h))
        return self.head(h + self.block2(h))


class Pools(nn.Module):
    """Max pooling with padding, ceil mode and dilation, 1-d max pooling, ReLU6, hard tanh,
    clamp, abs, maximum and PReLU: every kink the exact walk knows."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.pool2 = nn.MaxPool2d(2, dilation=2)
        self.relu6, self.hardtanh, self.prelu = nn.ReLU6(), nn.Hardtanh(-0.5, 0.5), nn.PReLU()
        self.fc = nn.Linear(4 * 2 * 2 + 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool1(F.relu(self.conv1(x)))
        h = h + self.conv2(h)
        side = F.max_pool1d(h.flatten(2), 4)[..., 0]
        h = self.pool2(self.relu6(h * 3))
        h = torch.clamp(h, min=0.1) + self.hardtanh(h).abs()
        return self.fc(torch.cat([self.prelu(h).flatten(1), torch.maximum(side, -side / 2)], 1))


def _completeness(model: nn.Module, x: torch.Tensor, baseline: torch.Tensor, target: int) -> torch.Tensor:
    attributions = fx.integrated_gradients(model, x, baseline, target=target, method="exact")
    with torch.no_grad():
        difference = model(x)[:, target] - model(baseline)[:, target]
    return (attributions.flatten(1).sum(1) - difference).abs() / difference.abs()


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("name", ["cnn", "residual", "pools"])
def test_completeness_at_float_rounding(name: str, dtype: torch.dtype, tolerance: float) -> None:
    models = {
        "cnn": (lambda: small_cnn(seed=4), (4, 1, 8, 8)),
        "residual": (Residual, (3, 3, 9, 7)),
        "pools": (Pools, (3, 2, 9, 11)),
    }
    build, shape = models[name]
    model = build().eval().to(dtype)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=generator).to(dtype)
    baseline = 0.3 * torch.randn(shape, generator=generator).to(dtype)
    assert (_completeness(model, x, baseline, target=1) < tolerance).all()


def test_one_hidden_layer_closed_form() -> None:
    """f = w2 . relu(W1 p + b1): unit j is active on an interval of the path, of length l_j
    found from its two end values, so IG = (x - x') * sum_j w2_j W1_j l_j."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 2)).double()
    x, baseline = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    got, pieces = fx.integrated_gradients(net, x, baseline, target=1, method="exact", return_evaluations=True)
    w1, b1, w2 = net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach()[1]
    start, end = baseline @ w1.T + b1, x @ w1.T + b1  # z_j(0), z_j(1): z_j is affine in a
    crossing = (-start / (end - start)).clamp(0, 1)
    active = torch.where(
        start > 0, torch.where(end > 0, 1.0, crossing), torch.where(end > 0, 1 - crossing, 0.0)
    )
    expected = (x - baseline) * ((w2 * active) @ w1)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # pieces = 1 + the distinct kinks strictly inside (0, 1)
    kinks = ((start > 0) != (end > 0)).sum(1)
    assert torch.equal(pieces, 1 + kinks)


def test_agrees_with_a_dense_riemann_sum() -> None:
    """The midpoint rule is exact on cells without a kink; a cell with one is off by at most
    h * |jump| <= 2 h max|grad| |x - x'|, so 100k points are within pieces * that."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    x = torch.randn(2, 5, dtype=torch.float64) * 2
    exact, pieces = fx.integrated_gradients(net, x, target=0, method="exact", return_evaluations=True)
    n = 100_000
    dense = fx.integrated_gradients(net, x, target=0, method="riemann_middle", n_steps=n)
    coarse = fx.integrated_gradients(net, x, target=0, method="riemann_middle", n_steps=100)
    path = torch.linspace(0, 1, 2001, dtype=torch.float64).view(-1, 1, 1) * x
    grads = fx.saliency(net, path.reshape(-1, 5), target=0, abs=True).view(2001, 2, 5)
    bound = pieces.view(-1, 1) * 2 * grads.amax(0) * x.abs() / n
    assert ((dense - exact).abs() <= 2 * bound).all()
    assert (dense - exact).abs().sum() < (coarse - exact).abs().sum() / 50
    assert (pieces > 3).all()


def test_at_a_layer_and_without_inputs() -> None:
    model = small_cnn(seed=6).eval().double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    got = fx.integrated_gradients(model, x, target=3, layer=model[3], method="exact")
    h = model[:4](x)
    with torch.no_grad():
        difference = model[4:](h)[:, 3] - model[4:](torch.zeros_like(h))[:, 3]
    torch.testing.assert_close(got.flatten(1).sum(1), difference, rtol=1e-10, atol=1e-12)
    integral = fx.integrated_gradients(model, x, target=3, method="exact", multiply_by_inputs=False)
    full = fx.integrated_gradients(model, x, target=3, method="exact")
    torch.testing.assert_close(integral * x, full)


class _Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act, self.out = nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(x)))


class _Functional(nn.Module):
    def __init__(self, what: str) -> None:
        super().__init__()
        self.what, self.fc, self.out = what, nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.what == "sigmoid":
            h = torch.sigmoid(h)
        elif self.what == "square":
            h = h * h
        elif self.what == "compare":
            h = torch.where(h > 0, h, 0.0)  # a kink the walk cannot see: refused at the comparison
        return self.out(h)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_Gelu, r"gelu in layer 'act' \(GELU\)"),
        (
            lambda: nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)),
            r"layer_norm in layer '1'",
        ),
        (lambda: nn.Sequential(nn.Linear(4, 8), nn.Softmax(-1)), r"softmax in layer '1'"),
        (
            lambda: nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False)),
            "batch statistics",
        ),
        (lambda: _Functional("sigmoid"), r"sigmoid in the model \(_Functional\)"),
        (lambda: _Functional("square"), "multiplies two tensors"),
        (lambda: _Functional("compare"), r"gt in the model"),
    ],
)
def test_refuses_what_is_not_piecewise_linear(build, message: str) -> None:
    model = build()
    model.train()
    before = model_state(model)
    with pytest.raises(ValueError, match=message) as error:
        fx.integrated_gradients(model, torch.randn(3, 4), target=1, method="exact")
    assert "method='adaptive'" in str(error.value)
    assert_same_state(before, model_state(model))


def test_the_piece_cap_is_an_error_not_a_wrong_answer() -> None:
    model = small_cnn(seed=7).eval()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(RuntimeError, match="more than max_pieces=3"):
        fx.integrated_gradients(model, x, target=0, method="exact", max_pieces=3)


def test_batched_equals_one_by_one() -> None:
    model = Residual(seed=2).eval().double()
    x = torch.randn(3, 3, 9, 7, dtype=torch.float64)
    target = torch.tensor([0, 4, 2])
    batched, pieces = fx.integrated_gradients(
        model, x, target=target, method="exact", chunk_size=2, return_evaluations=True
    )
    for i in range(3):
        single, count = fx.integrated_gradients(
            model, x[i : i + 1], target=target[i : i + 1], method="exact", return_evaluations=True
        )
        torch.testing.assert_close(single, batched[i : i + 1], rtol=1e-9, atol=1e-12)
        assert count.item() == pieces[i].item()
