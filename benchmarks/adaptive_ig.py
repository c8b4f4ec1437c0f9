"""Model evaluations of adaptive and exact IG against Gauss-Legendre at completeness 1e-3.

``PYTHONPATH=. python benchmarks/adaptive_ig.py [--models NAME ...]`` (CPU). Per model and input
set (baseline 0, the predicted class, random weights):

- GL: the fewest Gauss-Legendre points (from a 1.5x ladder up to ``LADDER[-1]``) that bring every
  sample's completeness error ``|sum(attr) - (f(x) - f(0))| / |f(x) - f(0)|`` to 1e-3 (found by
  trying, which a user cannot do), and the attributions' error there;
- adaptive at ``tolerance=1e-3``: its evaluations, completeness, error, and the samples it reports
  as not converged (``on_unconverged``);
- errors: relative L1 against a reference, worst sample; against Gauss-Legendre's worst with as
  many evaluations as the adaptive rule's mean, and per sample against Gauss-Legendre with that
  sample's own number of evaluations (the ratio's max and geometric mean);
- exact IG's pieces (the small ReLU nets).

Evaluations count the two end values ``f(x)``, ``f(x')`` per sample for *both* rules: neither can
know its completeness error without them (forward passes without a backward, counted as one).

The reference is a graded composite rule (``reference``): n-point Gauss-Legendre on ``[2^-7, 1]``
(n = 4096 for the nets with kinks and ConvNeXt, 512 for the smooth GELU CNN and DeiT, where
Gauss-Legendre converges geometrically and 40 points are complete to rounding) and 8-point
Gauss-Legendre on each of the geometric panels ``[2^-(k+1), 2^-k]`` down to ``2^-100``; plain
4096-point Gauss-Legendre cannot integrate a path whose score jumps within ``a < 1e-8`` of the
baseline (timm's ConvNeXt with its zero-initialised biases: every
layer norm of a zero input), because its first node sits at ``1.45 / n^2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable

import torch
from models import small_resnet
from torch import nn

import fastxai as fx

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))

TOLERANCE = 1e-3
LADDER = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
GRADED_PANELS = 100
"""Geometric panels ``[2^-(k+1), 2^-k]`` for k = 7..99 in the reference: below ``2^-100`` a
float32 model's path is linear in ``a`` (every layer norm's eps dominates) and contributes
``2^-100`` times its gradient, under 1e-12 of the score on ConvNeXt."""


def _bn_statistics(model: nn.Module) -> nn.Module:
    """Random running statistics and affine parameters, so that eval-mode batch norm is not
    (nearly) the identity: with torchvision's defaults a bias-free ReLU ResNet is positively
    homogeneous, its path linear, and every rule exact with one point."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


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


def _timm() -> object | None:
    if importlib.util.find_spec("timm") is None or importlib.util.find_spec("torchvision") is None:
        return None
    import real_models  # the CPU-machine workaround for a CUDA torchvision wheel

    real_models._import_torchvision()
    import timm

    return timm


def resnet18() -> nn.Module | None:
    if importlib.util.find_spec("torchvision") is None:
        return None
    import real_models

    torch.manual_seed(0)
    return _bn_statistics(real_models._import_torchvision().models.resnet18(num_classes=10))


def convnext_atto() -> nn.Module | None:
    timm = _timm()
    if timm is None:
        return None
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()  # type: ignore[attr-defined]


def deit_tiny() -> nn.Module | None:
    timm = _timm()
    if timm is None:
        return None
    torch.manual_seed(0)
    return timm.create_model(  # type: ignore[attr-defined]
        "deit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64
    ).eval()


def relu_cnn() -> nn.Module:
    return cnn(nn.ReLU, nn.MaxPool2d)


def gelu_cnn() -> nn.Module:
    return cnn(nn.GELU, nn.AvgPool2d)


def residual() -> nn.Module:
    return small_resnet(width=8)


Case = tuple[str, Callable[[], nn.Module | None], tuple[int, ...], int, bool, int]
# name: (title, model factory (None when its package is missing), input shape, inputs per set, exact IG,
# the reference's points on [2^-7, 1])
MODELS: dict[str, Case] = {
    "relu_cnn": ("ReLU CNN, BN + max pool, 3x13x17", relu_cnn, (3, 13, 17), 6, True, 4096),
    "small_resnet": ("residual (small_resnet, width 8), 3x13x17", residual, (3, 13, 17), 6, True, 4096),
    "gelu_cnn": ("GELU CNN, BN + avg pool, 3x13x17", gelu_cnn, (3, 13, 17), 6, False, 512),
    "resnet18": ("torchvision resnet18 (random BN stats), 3x32x32", resnet18, (3, 32, 32), 3, False, 4096),
    "convnext_atto": ("timm convnext_atto, 3x32x32", convnext_atto, (3, 32, 32), 3, False, 4096),
    "deit_tiny": ("timm deit_tiny_patch16 (img_size 64), 3x64x64", deit_tiny, (3, 64, 64), 3, False, 512),
}


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Relative L1 error per sample [B]."""
    return (a - b).flatten(1).abs().sum(1) / b.flatten(1).abs().sum(1)


def reference(model: nn.Module, x: torch.Tensor, target: torch.Tensor, points: int) -> torch.Tensor:
    """IG by the graded composite rule (module docstring), in float64 sums."""
    total = (1 - 2.0**-7) * fx.integrated_gradients(
        model, x, x * 2.0**-7, target=target, n_steps=points, multiply_by_inputs=False
    ).double()
    lows = torch.tensor([2.0 ** -(k + 1) for k in range(7, GRADED_PANELS)])
    highs = 2 * lows
    count = lows.numel()
    ends = (highs.view(-1, *[1] * x.dim()) * x).flatten(0, 1)  # [P * B, *F]
    starts = (lows.view(-1, *[1] * x.dim()) * x).flatten(0, 1)
    panel = fx.integrated_gradients(
        model, ends, starts, target=target.repeat(count), n_steps=8, multiply_by_inputs=False
    ).double()
    total += ((highs - lows).double().view(-1, *[1] * x.dim()) * panel.view(count, *x.shape)).sum(0)
    return x.double() * total


def gauss_legendre(model: nn.Module, x: torch.Tensor, target: torch.Tensor, points: int) -> torch.Tensor:
    return fx.integrated_gradients(model, x, target=target, n_steps=points)


def row(title: str, model: nn.Module, x: torch.Tensor, exact: bool, points: int) -> str:
    with torch.no_grad():
        target = model(x).argmax(1)
        scores = model(torch.cat([x, torch.zeros_like(x)])).gather(1, target.repeat(2).view(-1, 1)).squeeze(1)
    signed = (scores[: x.shape[0]] - scores[x.shape[0] :]).double()
    difference = signed.abs()
    truth = reference(model, x, target, points)
    truth_completeness = float(((truth.flatten(1).sum(1) - signed).abs() / difference).max())
    checked: dict[int, tuple[bool, float]] = {}  # points: (every sample complete, worst error)

    def complete(n: int) -> bool:
        if n not in checked:
            attributions, delta = fx.integrated_gradients(
                model, x, target=target, n_steps=n, return_convergence_delta=True
            )
            good = bool((delta.abs() <= TOLERANCE * difference).all())
            checked[n] = (good, float(relative(attributions, truth).max()))
        return checked[n][0]

    needed = next((n for n in LADDER if complete(n)), None)
    needed_error = "-" if needed is None else f"{checked[needed][1]:.1e}"
    # as a user without the oracle would: 1, 2, 4, ... points until the delta is within the tolerance
    powers = [2**k for k in range(LADDER[-1].bit_length())]
    first = next((k for k, n in enumerate(powers) if complete(n)), None)
    doubling = None if first is None else sum(powers[: first + 1])
    half = reference(model, x, target, points // 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attributions, delta, evaluations = fx.integrated_gradients(
            model, x, target=target, method="adaptive", tolerance=TOLERANCE,
            return_convergence_delta=True, return_evaluations=True,
        )  # fmt: skip
    reported = sum("adaptive integrated gradients" in str(w.message) for w in caught)
    error = relative(attributions, truth)
    equal = max(1, round(float(evaluations.double().mean())) - 2)
    same_budget = relative(gauss_legendre(model, x, target, equal), truth)
    # each sample against Gauss-Legendre with that sample's own number of evaluations
    own = torch.cat(
        [
            relative(
                gauss_legendre(model, x[i : i + 1], target[i : i + 1], max(1, int(count) - 2)),
                truth[i : i + 1],
            )
            for i, count in enumerate(evaluations.tolist())
        ]
    )
    pieces = "-"
    if exact:
        _, exact_delta, count = fx.integrated_gradients(
            model, x, target=target, method="exact", return_convergence_delta=True, return_evaluations=True
        )
        pieces = f"{int(count.sum())} ({float((exact_delta.abs() / difference).max()):.0e})"
    batch = x.shape[0]
    adaptive_total = int(evaluations.sum())
    if needed is None:
        gl = f"> {(LADDER[-1] + 2) * batch} (> {LADDER[-1]})"
        ratio = f"< {adaptive_total / ((LADDER[-1] + 2) * batch):.2f}"
    else:
        gl = f"{(needed + 2) * batch} ({needed})"
        ratio = f"{adaptive_total / ((needed + 2) * batch):.2f}"
    if doubling is None:
        user = f"> {doubling_cap(batch)} | < {adaptive_total / doubling_cap(batch):.2f}"
    else:
        user = f"{(doubling + 2) * batch} | {adaptive_total / ((doubling + 2) * batch):.2f}"
    unconverged = (delta.abs().double() > TOLERANCE * difference).sum()
    ratios = error / own
    return (
        f"| {title} | {gl} | {needed_error} | {adaptive_total} ({adaptive_total - 2 * batch}) | {ratio} | "
        f"{float((delta.abs().double() / difference).max()):.1e} | {int(unconverged)} / {batch} "
        f"({'reported' if reported else 'not reported'}) | {float(error.max()):.1e} | "
        f"{float(same_budget.max()):.1e} ({equal}) | "
        f"{float(ratios.max()):.2g} ({float(ratios.log().mean().exp()):.2g}) | {pieces} | "
        f"{truth_completeness:.0e} | {float(relative(half, truth).max()):.0e} | {user} |"
    )


def doubling_cap(batch: int) -> int:
    """Evaluations of 1, 2, 4, ..., ``LADDER[-1]`` points and the two end values, ``batch`` samples."""
    return (2 * LADDER[-1] - 1 + 2) * batch


HEADER = (
    "| model, input set | GL evaluations incl. ends (points) | GL error at that count | adaptive "
    "evaluations incl. ends (gradients) | adaptive / GL evaluations | adaptive max completeness | samples "
    "short of 1e-3 (reported?) | adaptive error vs reference | GL error at equal evaluations (points) | "
    "adaptive / GL error at each sample's own evaluations, max (geo. mean) | exact pieces (max "
    "completeness) | reference max completeness | reference vs the same with half its points | GL doubling "
    "1, 2, 4, ... points until complete, as a user would (evaluations incl. ends) | adaptive / GL doubling "
    "|\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--sets", type=int, default=2, help="input sets per model (seeds 0, 1, ...)")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    print(HEADER)
    for name in arguments.models:
        title, build, shape, batch, exact, points = MODELS[name]
        model = build()
        if model is None:
            print(f"| {title} | skipped: its package (torchvision / timm) is not installed |", flush=True)
            continue
        for seed in range(arguments.sets):
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
            print(row(f"{title}, set {seed}", model, x, exact, points), flush=True)


if __name__ == "__main__":
    main()
