"""Small models shared by the tests: a CNN with BatchNorm and pooling, an MLP, and models
whose attributions are known in closed form."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(
    seed: int = 0,
    channels: int = 1,
    classes: int = 10,
    activation: type[nn.Module] = nn.ReLU,
    pool: type[nn.Module] = nn.MaxPool2d,
) -> nn.Module:
    """Conv-BN-act-pool, conv-BN-act, global average pool, linear: [N, C, H, W] -> [N, classes].

    With a smooth ``activation`` and ``pool=nn.AvgPool2d`` the model is smooth, so path
    integrals of its gradients converge at the textbook rates.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        activation(),
        pool(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        activation(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )
    # Non-trivial running statistics, so eval-mode BatchNorm is not the identity.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model


def mlp(seed: int = 0, features: int = 20, hidden: int = 16, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


class LinearModel(nn.Module):
    """``f(x) = W flatten(x) + b``: every gradient is a row of W."""

    def __init__(
        self, features: int, classes: int, seed: int = 0, dtype: torch.dtype = torch.float64
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, features, generator=generator, dtype=dtype))
        self.bias = nn.Parameter(torch.randn(classes, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T + self.bias


class QuadraticModel(nn.Module):
    """``f_c(x) = x^T A_c x / 2 + b_c^T x`` with symmetric ``A_c``: ``grad f_c = A_c x + b_c``."""

    def __init__(
        self, features: int, classes: int, seed: int = 0, dtype: torch.dtype = torch.float64
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        half = torch.randn(classes, features, features, generator=generator, dtype=dtype) / features**0.5
        self.a = nn.Parameter(half + half.transpose(1, 2))
        self.b = nn.Parameter(torch.randn(classes, features, generator=generator, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return 0.5 * torch.einsum("ni,cij,nj->nc", flat, self.a, flat) + flat @ self.b.T

    def gradient(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (torch.einsum("nij,nj->ni", self.a[target], flat) + self.b[target]).view_as(x)


def model_state(model: nn.Module) -> tuple:
    """Everything a method must leave as it found it: modes, grad flags, hooks, grads, values."""
    return (
        [module.training for module in model.modules()],
        [parameter.requires_grad for parameter in model.parameters()],
        [
            (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for m in model.modules()
        ],
        [parameter.grad is None for parameter in model.parameters()],
        [tensor.clone() for tensor in model.state_dict().values()],
    )


def assert_same_state(before: tuple, after: tuple) -> None:
    assert before[:4] == after[:4]
    for old, new in zip(before[4], after[4], strict=True):
        assert torch.equal(old, new)


def fail_at_call(model: nn.Module, call: int) -> torch.utils.hooks.RemovableHandle:
    """A crash (RuntimeError "crash") at the model's ``call``-th forward. A hook, not a wrapper
    module: a wrapper is another model to the runner (its class and parameter names), whose
    shards a resumed run of the plain model would refuse."""
    calls = [0]

    def hook(_module: nn.Module, _args: object) -> None:
        calls[0] += 1
        if calls[0] == call:
            raise RuntimeError("crash")

    return model.register_forward_pre_hook(hook)
