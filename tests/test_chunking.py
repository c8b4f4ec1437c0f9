"""What holds across ``chunk_size``: the method's own work is bit-identical, the model's is not.

fastxai draws noise per (seed, sample, row, element) and accumulates in an order fixed by the
sample, so every method gives the same bits for every ``chunk_size`` *when the model gives each
row the same bits whatever batch it runs in*. Ordinary layers do not promise that: a conv or a
matmul picks its blocking (and so its summation order) by batch size, so across chunk sizes a
result moves in the last bits (measured up to 6e-8 on values of order 0.05 below). Both halves
are tested: bit-identical on a model whose arithmetic is per-row (elementwise products and
sums along fixed dims), within a few float32 ulps of the largest value on a conv net.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import real_models
import torch
from torch import nn

import fastxai as fx


class PointwiseConv(nn.Module):
    """A 1x1 convolution written as a broadcast product and a sum over input channels: each
    output element is summed in the same order whatever the batch size."""

    def __init__(self, channels_in: int, channels_out: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels_out, channels_in, generator=generator))
        self.bias = nn.Parameter(torch.randn(channels_out, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) * self.weight[None, :, :, None, None]).sum(2) + self.bias[None, :, None, None]


class Head(nn.Module):
    """A linear layer as a broadcast product and a sum over features (per-row arithmetic)."""

    def __init__(self, features: int, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, features, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).unsqueeze(1) * self.weight[None]).sum(2)


def per_row_net() -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    return nn.Sequential(
        PointwiseConv(1, 4, generator),
        nn.ReLU(),
        PointwiseConv(4, 4, generator),
        nn.ReLU(),
        Head(144, 3, generator),
    ).eval()


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(144, 3),
    ).eval()


X = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
T = torch.tensor([0, 1, 2, 0, 1])
MASK = (torch.arange(36) // 9).view(1, 1, 6, 6).expand(5, 1, 6, 6)
B3 = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
LAYER = "3"  # the second ReLU's output [B, 4, 6, 6] in both nets

Method = Callable[[nn.Module, int | None], torch.Tensor]
METHODS: dict[str, Method] = {
    "saliency": lambda m, c: fx.saliency(m, X, T, chunk_size=c),
    "input_x_gradient": lambda m, c: fx.input_x_gradient(m, X, T, chunk_size=c),
    "guided_backprop": lambda m, c: fx.guided_backprop(m, X, T, chunk_size=c),
    "deconvnet": lambda m, c: fx.deconvnet(m, X, T, chunk_size=c),
    "integrated_gradients": lambda m, c: fx.integrated_gradients(m, X, target=T, n_steps=8, chunk_size=c),
    "ig_gausslegendre": lambda m, c: fx.integrated_gradients(
        m, X, target=T, n_steps=8, method="gausslegendre", chunk_size=c
    ),
    "smoothgrad": lambda m, c: fx.smoothgrad(m, X, T, n_samples=6, stdevs=0.1, seed=0, chunk_size=c),
    "gradient_shap": lambda m, c: fx.gradient_shap(m, X, T, baselines=B3, n_samples=4, seed=0, chunk_size=c),
    "expected_gradients": lambda m, c: fx.expected_gradients(
        m, X, T, baselines=B3, n_samples=4, seed=0, chunk_size=c
    ),
    "deeplift": lambda m, c: fx.deeplift(m, X, T, chunk_size=c),
    "deeplift_shap": lambda m, c: fx.deeplift_shap(m, X, T, baselines=B3, chunk_size=c),
    "occlusion": lambda m, c: fx.occlusion(
        m, X, T, sliding_window_shapes=(1, 2, 2), strides=(1, 2, 2), chunk_size=c
    ),
    "feature_ablation": lambda m, c: fx.feature_ablation(m, X, T, feature_mask=MASK, chunk_size=c),
    "shapley_value_sampling": lambda m, c: fx.shapley_value_sampling(
        m, X, T, feature_mask=MASK, n_samples=2, seed=0, chunk_size=c
    ),
    "shapley_values": lambda m, c: fx.shapley_values(m, X, T, feature_mask=MASK, chunk_size=c),
    "feature_permutation": lambda m, c: fx.feature_permutation(
        m, X, T, feature_mask=MASK, seed=0, chunk_size=c
    ),
    "kernel_shap": lambda m, c: fx.kernel_shap(
        m, X, T, feature_mask=MASK, n_samples=16, seed=0, chunk_size=c
    ),
    "lime": lambda m, c: fx.lime(m, X, T, feature_mask=MASK, n_samples=16, seed=0, chunk_size=c),
    "grad_cam": lambda m, c: fx.grad_cam(m, X, T, layer=LAYER, chunk_size=c),
    "grad_cam_plus_plus": lambda m, c: fx.grad_cam_plus_plus(m, X, T, layer=LAYER, chunk_size=c),
    "xgrad_cam": lambda m, c: fx.xgrad_cam(m, X, T, layer=LAYER, chunk_size=c),
    "hires_cam": lambda m, c: fx.hires_cam(m, X, T, layer=LAYER, chunk_size=c),
    "layer_cam": lambda m, c: fx.layer_cam(m, X, T, layer=LAYER, chunk_size=c),
    "score_cam": lambda m, c: fx.score_cam(m, X, T, layer=LAYER, chunk_size=c),
    "guided_grad_cam": lambda m, c: fx.guided_grad_cam(m, X, T, layer=LAYER, chunk_size=c),
    "layer_conductance": lambda m, c: fx.layer_conductance(m, X, T, layer=LAYER, n_steps=8, chunk_size=c),
}
CHUNKS = (1, 2, 3, None)


def _results(method: Method, model: nn.Module) -> list[torch.Tensor]:
    results = [method(model, chunk) for chunk in CHUNKS]
    return [result[0] if isinstance(result, tuple) else result for result in results]


def test_the_per_row_net_is_batch_invariant() -> None:
    """The premise: every row's output and input gradient has the same bits alone or in a batch."""
    model = per_row_net()
    x = X.clone().requires_grad_(True)
    batched = model(x)
    (grad,) = torch.autograd.grad(batched.gather(1, T.view(-1, 1)).sum(), x)
    for row in range(X.shape[0]):
        alone = X[row : row + 1].clone().requires_grad_(True)
        output = model(alone)
        (alone_grad,) = torch.autograd.grad(output[0, T[row]], alone)
        assert torch.equal(output[0], batched[row]) and torch.equal(alone_grad[0], grad[row])


@pytest.mark.parametrize("name", list(METHODS))
def test_bit_identical_across_chunk_size_when_the_model_is(name: str) -> None:
    results = _results(METHODS[name], per_row_net())
    assert results[0].abs().max() > 0
    for chunk, result in zip(CHUNKS[1:], results[1:], strict=True):
        assert torch.equal(result, results[0]), f"{name}: chunk_size={chunk} differs from chunk_size=1"


@pytest.mark.parametrize("name", list(METHODS))
def test_within_float32_rounding_across_chunk_size_on_a_conv_net(name: str) -> None:
    """A conv's batched arithmetic moves the last bits; the results agree to 1e-5 of the largest
    attribution (measured: at most 1.4e-6, occlusion)."""
    results = _results(METHODS[name], conv_net())
    scale = float(results[0].abs().max())
    for result in results[1:]:
        assert float((result - results[0]).abs().max()) <= 1e-5 * scale


def test_chunk_size_one_is_the_formula_on_single_row_calls_of_a_real_model() -> None:
    """What the README states exactly: fastxai adds no dependence on chunk_size of its own. With
    ``chunk_size=1`` every model call holds one row, and occlusion and saliency equal their
    textbook formulas on single-row calls of a torchvision ResNet-18, bit for bit; at other chunk
    sizes the model's batched arithmetic rounds differently and that alone moves the results
    (occlusion is a difference of two logits, so it moves with the logits' rounding, not the
    attribution's: measured 1.7e-5 of the largest attribution on this model at 64x64)."""
    torch.manual_seed(0)
    model = real_models.torchvision().models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 2])

    def logit(row: torch.Tensor, b: int) -> torch.Tensor:
        with torch.no_grad():
            return model(row[None])[0, target[b]]

    window = 8
    expected = torch.zeros_like(x)
    for b in range(2):
        clean = logit(x[b], b)
        for top in range(0, 32, window):
            for left in range(0, 32, window):
                occluded = x[b].clone()
                occluded[:, top : top + window, left : left + window] = 0
                expected[b, :, top : top + window, left : left + window] = clean - logit(occluded, b)
    occlusion = fx.occlusion(
        model, x, target, sliding_window_shapes=(3, window, window), strides=(3, window, window), chunk_size=1
    )
    assert torch.equal(occlusion, expected)

    # The CPU convolution's backward with several threads is not even repeatable at a fixed batch
    # (measured: 8 of 30 repeats of one row's gradient differ, by up to 6.5e-9); one thread is.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gradients = []
        for b in range(2):
            row = x[b : b + 1].clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(model(row)[0, target[b]], row)
            gradients.append(gradient.abs())
        assert torch.equal(fx.saliency(model, x, target, chunk_size=1), torch.cat(gradients))
    finally:
        torch.set_num_threads(threads)
