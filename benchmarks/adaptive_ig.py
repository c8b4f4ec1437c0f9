"""Model evaluations of adaptive and exact IG against Gauss-Legendre at completeness 1e-3.

``PYTHONPATH=. python benchmarks/adaptive_ig.py`` (CPU, about a minute). Per model and input
set (6 inputs, baseline 0, predicted class): the fewest Gauss-Legendre points (from a 1.5x
ladder) that bring every sample's completeness error ``|sum(attr) - (f(x) - f(0))| / |f(x) -
f(0)|`` to 1e-3; the evaluations at ``tolerance=1e-3`` (gradient points + the two end values)
of the previous midpoint rule (``adaptive_midpoint``) and of the Gauss-panel rule
(``method="adaptive"``); exact IG's pieces (ReLU nets); and attribution errors (relative L1)
against a 4096-point Gauss-Legendre reference: the worst sample's, against Gauss-Legendre's
worst with as many points as the adaptive rule used on average, and per sample against
Gauss-Legendre with that sample's own number of evaluations (the ratio's max and geometric mean).
"""

from __future__ import annotations

import adaptive_midpoint
import torch
from models import small_resnet
from torch import nn

import fastxai as fx
from fastxai import _layer, _model

TOLERANCE = 1e-3
CHUNK = 256
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


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative L1 error per sample [B]."""
    return (a - b).flatten(1).abs().sum(1) / b.flatten(1).abs().sum(1)


def midpoint(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous adaptive rule (midpoint panels cut in three): attributions and evaluations."""
    site, _ = _layer.site_for(model, x, None, None)
    with _model.preserved_state(model):
        site.prepare(CHUNK)
        outcome = adaptive_midpoint.adaptive_path(site, torch.zeros_like(x), target, CHUNK, TOLERANCE, 1025)
    return x * outcome.integral, outcome.evaluations


def at_equal(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, evaluations: torch.Tensor
) -> tuple[int, torch.Tensor]:
    """Gauss-Legendre with as many points as the adaptive rule's mean evaluations: (points, attributions)."""
    equal = max(2, round(float(evaluations.float().mean())))
    return equal, fx.integrated_gradients(model, x, target=target, n_steps=equal)


def own_budget(model: nn.Module, x: torch.Tensor, target: torch.Tensor, points: int) -> torch.Tensor:
    return fx.integrated_gradients(model, x, target=target, n_steps=points)


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
    reference = fx.integrated_gradients(model, x, target=target, n_steps=4096)
    old, old_evaluations = midpoint(model, x, target)
    old_equal, old_gl = at_equal(model, x, target, old_evaluations)
    attributions, delta, evaluations = fx.integrated_gradients(
        model, x, target=target, method="adaptive", tolerance=TOLERANCE,
        return_convergence_delta=True, return_evaluations=True, on_unconverged="ignore",
    )  # fmt: skip
    equal, same_budget = at_equal(model, x, target, evaluations)
    error = relative(attributions, reference)
    # each sample against Gauss-Legendre with that sample's own number of evaluations
    own = torch.stack(
        [own_budget(model, x[i : i + 1], target[i : i + 1], int(evaluations[i])) for i in range(x.shape[0])]
    )
    own = relative(own.squeeze(1), reference)
    pieces = "-"
    if exact:
        _, exact_delta, count = fx.integrated_gradients(
            model, x, target=target, method="exact", return_convergence_delta=True, return_evaluations=True
        )
        pieces = f"{int(count.sum())} ({float((exact_delta.abs() / difference).max()):.0e})"
    gl_total = "not reached" if needed is None else str(needed * x.shape[0])
    return (
        f"| {name} | {gl_total} | {int(old_evaluations.sum())} | {float(relative(old, reference).max()):.1e} "
        f"({float(relative(old_gl, reference).max()):.1e} at {old_equal}) | "
        f"{int(evaluations.sum())} ({int(evaluations.sum()) - 2 * x.shape[0]}) | "
        f"{float((delta.abs() / difference).max()):.1e} | {float(error.max()):.1e} | "
        f"{float(relative(same_budget, reference).max()):.1e} ({equal}) | "
        f"{float((error / own).max()):.2f} ({float((error / own).log().mean().exp()):.2f}) | {pieces} |"
    )


def main() -> None:
    torch.set_num_threads(2)
    models = {
        "ReLU CNN, BN + max pool": (cnn(nn.ReLU, nn.MaxPool2d), True),
        "residual (small_resnet, width 8)": (small_resnet(width=8), True),
        "GELU CNN, BN + avg pool": (cnn(nn.GELU, nn.AvgPool2d), False),
    }
    print(
        "| model, input set | GL evaluations | midpoint adaptive evaluations | midpoint error vs GL-4096 "
        "(GL at equal evaluations) | Gauss adaptive evaluations (gradients) | Gauss max completeness | "
        "Gauss error vs GL-4096 | GL error at equal evaluations (points) | Gauss / GL at each sample's "
        "own evaluations, max (geo. mean) | exact pieces (max completeness) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (model, exact) in models.items():
        for seed in (0, 1):
            x = torch.randn(6, 3, 13, 17, generator=torch.Generator().manual_seed(seed))
            print(row(f"{name}, set {seed}", model, x, exact), flush=True)


if __name__ == "__main__":
    main()
