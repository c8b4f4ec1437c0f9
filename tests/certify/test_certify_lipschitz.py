"""lipschitz_bound and lipschitz_radius: exact values where the norm is known, soundness against
gradients found by search and against PGD at the certified radius, state, bad input."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

import fastxai as fx
from fastxai.certify import lipschitz_bound, lipschitz_radius
from fastxai.certify.lipschitz import SAFETY


def operator_norm_estimate(layer: nn.Module, shape: tuple[int, ...], iterations: int = 200) -> float:
    """Power iteration on A^T A of the linear part of ``layer`` (a lower estimate of ||A||)."""
    generator = torch.Generator().manual_seed(0)
    vector = torch.randn(1, *shape, generator=generator, dtype=torch.float64)
    zero = layer(torch.zeros_like(vector)).detach()
    for _ in range(iterations):
        vector = (vector / vector.norm()).requires_grad_(True)
        output = layer(vector) - zero
        (vector,) = torch.autograd.grad(0.5 * output.pow(2).sum(), vector)
    return math.sqrt(float(vector.norm()))


def test_linear_layers_are_exact() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(7, 5)
    exact = float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    assert lipschitz_bound(layer) == pytest.approx(exact, rel=2e-6)
    assert lipschitz_bound(layer) >= exact
    net = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4), nn.Sigmoid(), nn.Linear(4, 3))
    product = 0.25
    for module in net:
        if isinstance(module, nn.Linear):
            product *= float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
    assert lipschitz_bound(net) == pytest.approx(product, rel=1e-5)


@pytest.mark.parametrize(
    "conv, shape",
    [
        (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 9, 10)),
        (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 9, 10)),
        (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (4, 14, 13)),
        (lambda: nn.Conv2d(3, 4, 2, stride=2), (3, 8, 8)),
        (lambda: nn.Conv1d(2, 3, 4, stride=3), (2, 11)),
        (lambda: nn.Conv2d(2, 3, 3, padding="same"), (2, 6, 5)),
    ],
    ids=["pad1", "stride2", "dilated-groups", "2x2-stride2", "conv1d-stride3", "same"],
)
def test_conv_bound_is_above_and_near_the_operator_norm(
    conv: Callable[[], nn.Module], shape: tuple[int, ...]
) -> None:
    torch.manual_seed(1)  # the weights are drawn here, not at collection (whose RNG state varies)
    module = conv().double()
    bound = lipschitz_bound(module, shape)
    estimate = operator_norm_estimate(module, shape)
    assert bound >= estimate
    assert bound <= 1.15 * estimate  # the circulant embedding only loses the boundary effect


def test_pools_batchnorm_and_activations() -> None:
    assert lipschitz_bound(nn.AvgPool2d(2), (1, 8, 8)) == pytest.approx(0.5, rel=1e-5)
    assert lipschitz_bound(nn.AvgPool2d(2)) == pytest.approx(0.5)  # the formula without a shape
    assert lipschitz_bound(nn.AdaptiveAvgPool2d(1), (3, 4, 4)) == pytest.approx(0.25, rel=1e-5)
    overlapping = nn.AvgPool2d(3, stride=1, padding=1)
    assert lipschitz_bound(overlapping, (1, 8, 8)) >= operator_norm_estimate(overlapping.double(), (1, 8, 8))
    assert lipschitz_bound(nn.MaxPool2d(2)) == 1.0  # windows do not overlap
    assert lipschitz_bound(nn.MaxPool2d(3, stride=1)) == 3.0  # an element is in 3 x 3 windows
    assert lipschitz_bound(nn.MaxPool1d(3, stride=2)) == pytest.approx(math.sqrt(2))
    assert lipschitz_bound(nn.AdaptiveMaxPool2d(1), (2, 5, 5)) == 1.0
    assert lipschitz_bound(nn.LeakyReLU(3.0)) == 3.0
    assert lipschitz_bound(nn.Sequential(nn.Tanh(), nn.Sigmoid(), nn.Flatten(), nn.Dropout())) == 0.25
    norm = nn.BatchNorm1d(4).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, -3.0, 0.5, 2.0]))
        norm.running_var.copy_(torch.tensor([1.0, 4.0, 1.0, 16.0]))
    expected = 3.0 / math.sqrt(4.0 + norm.eps)
    assert lipschitz_bound(norm) == pytest.approx(expected, rel=1e-5)


def test_batchnorm_is_folded_into_the_convolution_before_it() -> None:
    torch.manual_seed(2)
    conv, norm = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.running_var.uniform_(0.5, 2.0)
    scaled = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        scaled.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    folded = lipschitz_bound(nn.Sequential(conv, norm), (2, 6, 6))
    assert folded == pytest.approx(lipschitz_bound(scaled, (2, 6, 6)), rel=1e-5)
    assert folded <= lipschitz_bound(conv, (2, 6, 6)) * lipschitz_bound(norm) * (1 + 1e-5)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first = nn.Linear(5, 5)
        self.second = nn.Linear(5, 5)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = x + torch.relu(self.second(torch.tanh(self.first(x))))
        return self.head(torch.cat([hidden, 0.5 * x], dim=1))


def test_residual_blocks_through_fx() -> None:
    model = Residual()
    norms = {
        name: float(torch.linalg.matrix_norm(m.weight.detach().double(), ord=2))
        for name, m in model.named_children()
    }
    inner = 1.0 + norms["first"] * norms["second"]
    expected = norms["head"] * math.sqrt(inner**2 + 0.25)
    assert lipschitz_bound(model) == pytest.approx(expected, rel=1e-5)


def smooth_cnn() -> nn.Module:
    return small_cnn(seed=4, classes=4, activation=nn.Tanh, pool=nn.AvgPool2d).double().eval()


def test_bound_dominates_gradients_found_by_search() -> None:
    model = smooth_cnn()
    bound = lipschitz_bound(model, (1, 6, 6))
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(4, 1, 6, 6, generator=generator, dtype=torch.float64)
    for point in points:
        jacobian = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], point).reshape(
            4, -1
        )
        assert float(torch.linalg.matrix_norm(jacobian, ord=2)) <= bound
    # Gradient ascent on ||grad (f_0 - f_1)||, which the bound caps at sqrt(2) L.
    x = points.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=0.1)
    for _ in range(20):
        with torch.enable_grad():
            difference = model(x)[:, 0] - model(x)[:, 1]
            (grad,) = torch.autograd.grad(difference.sum(), x, create_graph=True)
            size = grad.flatten(1).norm(dim=1)
            optimiser.zero_grad()
            (-size.sum()).backward()
        optimiser.step()
        assert float(size.detach().max()) <= math.sqrt(2) * bound


def test_radius_on_a_linear_model_is_the_formula() -> None:
    torch.manual_seed(6)
    layer = nn.Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    radius = lipschitz_radius(layer, x)
    logits = layer(x).detach().topk(2, dim=1).values
    norm = float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2)) * SAFETY
    expected = (logits[:, 0] - logits[:, 1]) / (math.sqrt(2) * norm)
    torch.testing.assert_close(radius.double(), expected, rtol=1e-5, atol=0)


def test_pgd_at_the_certified_radius_never_changes_the_label() -> None:
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    generator = torch.Generator().manual_seed(8)
    x = 3 * torch.randn(12, 10, generator=generator)
    bound = lipschitz_bound(model)
    radius = lipschitz_radius(model, x, bound=bound)
    with torch.no_grad():
        labels = model(x).argmax(1)
    assert len(set(labels.tolist())) > 1

    def attack(index: int, eps: float) -> torch.Tensor:
        return fx.pgd(
            model,
            x[index : index + 1],
            labels[index : index + 1],
            eps=eps,
            alpha=eps / 4,
            steps=20,
            norm="l2",
            loss="margin",
            bounds=(-10.0, 10.0),
            seed=index,
        )

    for index in range(x.shape[0]):
        eps = float(radius[index])
        adversarial = attack(index, eps)
        assert float((adversarial - x[index]).norm()) <= eps * (1 + 1e-4)
        with torch.no_grad():
            assert int(model(adversarial).argmax(1)) == int(labels[index])
    # The certificate is not vacuous: a few times the radius is enough for PGD on some inputs.
    fooled = 0
    for index in range(x.shape[0]):
        adversarial = attack(index, 5 * float(radius[index]))
        with torch.no_grad():
            fooled += int(model(adversarial).argmax(1)) != int(labels[index])
    assert fooled > 0


def test_state_is_restored_also_on_error() -> None:
    model = small_cnn(seed=9)
    model.train()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    lipschitz_bound(model, (1, 6, 6))
    lipschitz_radius(model, torch.rand(2, 1, 6, 6))
    assert_same_state(before, model_state(model))
    broken = nn.Sequential(model, nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="Softmax"):
        lipschitz_bound(broken, (1, 6, 6))
    assert_same_state(before, model_state(model))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="input_shape is required"):
        lipschitz_bound(nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz_bound(nn.Conv2d(1, 2, 3), (1, 0, 5))
    with pytest.raises(ValueError, match=r"ConvTranspose2d|transposed"):
        lipschitz_bound(nn.ConvTranspose2d(1, 2, 3), (1, 5, 5))
    with pytest.raises(ValueError, match=r"reflect|zeros padding"):
        lipschitz_bound(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (1, 5, 5))
    with pytest.raises(TypeError, match="model"):
        lipschitz_bound(lambda v: v)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bound"):
        lipschitz_radius(nn.Linear(3, 2), torch.rand(2, 3), bound=0.0)
    with pytest.raises(ValueError, match="at least 2 outputs"):
        lipschitz_radius(nn.Linear(3, 1), torch.rand(2, 3))
    with pytest.raises(TypeError, match="inputs"):
        lipschitz_radius(nn.Linear(3, 2), torch.ones(2, 3, dtype=torch.long))
