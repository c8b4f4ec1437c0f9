"""Model evaluations of adaptive and exact IG against Gauss-Legendre at completeness 1e-3.

``PYTHONPATH=. python benchmarks/adaptive_ig.py`` (CPU, about a minute). Per model and input
set (6 inputs, baseline 0, predicted class): the fewest Gauss-Legendre points (from a 1.5x
ladder) that bring every sample's completeness error ``|sum(attr) - (f(x) - f(0))| / |f(x) -
f(0)|`` to 1e-3, the adaptive rule's evaluations at ``tolerance=1e-3`` (gradient points + the
two end values), exact IG's pieces (ReLU nets), and the attribution error (relative L1, worst
sample) against a 4096-point Gauss-Legendre reference, of adaptive and of Gauss-Legendre with
as many points as adaptive used on average.
"""

from __future__ import annotations

import torch
from models import small_resnet
from torch import nn

import fastxai as fx

TOLERANCE = 1e-3
LADDER = [
    2,
    3,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
]


def cnn(activation: type[nn.Module], pool: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), activation(), pool(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), activation(), pool(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).flatten(1).abs().sum(1) / b.flatten(1).abs().sum(1)).max())


def row(name: str, model: nn.Module, x: torch.Tensor, exact: bool) -> str:
    target = model(x).argmax(1)
    with torch.no_grad():
        difference = (model(x) - model(torch.zeros_like(x))).gather(1, target.view(-1, 1)).squeeze(1).abs()
    needed = None
    for n in LADDER:
        _, delta = fx.integrated_gradients(model, x, target=target, n_steps=n, return_convergence_delta=True)
        if bool((delta.abs() <= TOLERANCE * difference).all()):
            needed = n
            break
    attributions, delta, evaluations = fx.integrated_gradients(
        model, x, target=target, method="adaptive", tolerance=TOLERANCE,
        return_convergence_delta=True, return_evaluations=True, on_unconverged="ignore",
    )  # fmt: skip
    reference = fx.integrated_gradients(model, x, target=target, n_steps=4096)
    equal = max(2, round(float(evaluations.float().mean())))
    same_budget = fx.integrated_gradients(model, x, target=target, n_steps=equal)
    pieces = "-"
    if exact:
        _, exact_delta, count = fx.integrated_gradients(
            model, x, target=target, method="exact", return_convergence_delta=True, return_evaluations=True
        )
        pieces = f"{int(count.sum())} ({float((exact_delta.abs() / difference).max()):.0e})"
    gl_total = "not reached" if needed is None else str(needed * x.shape[0])
    return (
        f"| {name} | {gl_total} | {int(evaluations.sum())} | {float((delta.abs() / difference).max()):.1e} | "
        f"{pieces} | {relative(attributions, reference):.1e} | "
        f"{relative(same_budget, reference):.1e} ({equal}) |"
    )


def main() -> None:
    torch.set_num_threads(2)
    models = {
        "ReLU CNN, BN + max pool": (cnn(nn.ReLU, nn.MaxPool2d), True),
        "residual (small_resnet, width 8)": (small_resnet(width=8), True),
        "GELU CNN, BN + avg pool": (cnn(nn.GELU, nn.AvgPool2d), False),
    }
    print(
        "| model, input set | GL evaluations | adaptive evaluations | adaptive max completeness | "
        "exact pieces (max completeness) | adaptive error vs GL-4096 | "
        "GL error at equal evaluations (points) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (model, exact) in models.items():
        for seed in (0, 1):
            x = torch.randn(6, 3, 13, 17, generator=torch.Generator().manual_seed(seed))
            print(row(f"{name}, set {seed}", model, x, exact), flush=True)


if __name__ == "__main__":
    main()
