"""The benchmark models: an MLP 784-512-512-10 (where the work around the model shows) and a
small ResNet-style CNN on 3x32x32 inputs (where the model dominates)."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """A ResNet basic block. ``module_relus``: its ReLUs as ``nn.ReLU`` modules (one per use)
    instead of ``torch.relu`` calls; the same function, but a library that modifies only
    ``nn.ReLU`` modules (Captum's GuidedBackprop, Deconvolution and DeepLift) then modifies
    them all, so that it computes what fastxai computes."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, module_relus: bool = False) -> None:
        super().__init__()
        self.relu1: nn.Module | None = nn.ReLU() if module_relus else None
        self.relu2: nn.Module | None = nn.ReLU() if module_relus else None
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False), nn.BatchNorm2d(channels_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu1 = self.relu1 or torch.relu
        relu2 = self.relu2 or torch.relu
        out = relu1(self.bn1(self.conv1(x)))
        return relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


def small_resnet(classes: int = 10, width: int = 16, module_relus: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        BasicBlock(width, width, 1, module_relus),
        BasicBlock(width, 2 * width, 2, module_relus),
        BasicBlock(2 * width, 4 * width, 2, module_relus),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, classes),
    ).eval()


class SmallVGG(nn.Module):
    """VGG-style: conv-ReLU pairs and max pooling, no residuals; the flatten is functional so
    that Captum's LRP (which has no rule for nn.Flatten) applies."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, 1, 1), nn.ReLU(), nn.Conv2d(out, out, 3, 1, 1), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def small_vgg(classes: int = 10, width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return SmallVGG(classes, width).eval()


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    ).eval()


def digits_mlp() -> nn.Module:
    """An MLP 64-64-10 on digits-size inputs [N, 1, 8, 8] (a forward of well under a millisecond)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def digits_cnn_model() -> nn.Module:
    """The CNN of fastxai.digits, random weights, eval mode."""
    from fastxai.digits import digits_cnn

    torch.manual_seed(0)
    return digits_cnn().eval()


CASES = {
    # name: (model factory, input shape of one sample, batch)
    "mlp": (mlp, (784,), 32),
    "resnet": (small_resnet, (3, 32, 32), 8),
}


ROUNDS = {"mlp": 40, "resnet": 12}
"""Timed rounds per case: about 1 s of model work each, enough for a steady median."""


def case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    factory, shape, batch = CASES[name]
    model = factory()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=generator)
    target = torch.randint(0, 10, (batch,), generator=generator)
    return model, x, target


def floor(model: nn.Module, x: torch.Tensor, target: torch.Tensor, points: int) -> torch.Tensor:
    """The least any method pays: one forward+backward over ``points`` copies of the batch, in
    one pass, gradients for the inputs only."""
    inputs = x.repeat(points, *([1] * (x.dim() - 1)))
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        inputs = inputs.contiguous(memory_format=torch.channels_last)  # keep the caller's layout
    inputs = inputs.requires_grad_(True)
    scores = model(inputs).gather(1, target.repeat(points).view(-1, 1))
    (gradient,) = torch.autograd.grad(scores.sum(), inputs)
    return gradient


class PairedFloor:
    """The floor, timed in alternation with the implementation under test.

    Passed as pytest-benchmark's ``setup`` (run, untimed by pytest-benchmark, before every
    round), it times one floor run per round itself, so implementation and floor share the
    machine's slow and fast spells; ``median`` is what the report divides by.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, points: int) -> None:
        self.model, self.x, self.target, self.points = model, x, target, points
        self.times: list[float] = []

    def __call__(self) -> None:
        import time

        if torch.cuda.is_available() and self.x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.run()
        if self.x.is_cuda:
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - start)

    def run(self) -> None:
        floor(self.model, self.x, self.target, self.points)

    @property
    def median(self) -> float:
        ordered = sorted(self.times)
        return ordered[len(ordered) // 2]
