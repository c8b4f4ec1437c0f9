"""What ``dtype=torch.bfloat16`` costs in accuracy: each method's attributions in bf16 against
the same method in float32, on a trained digits CNN and a ResNet-18.

Per method and model: the relative difference ``||a_bf16 - a_fp32|| / ||a_fp32||`` per sample
(median and largest over the samples), and for Integrated Gradients the completeness error
``|sum(a) - (f(x) - f(x'))| / |f(x) - f(x')|`` (largest over the samples) with ``f`` the float32
model and ``x' = 0``, for the float32
run, the bf16 run, and the bf16 run with its gradients summed in bfloat16 instead of float32
(``--broken``: what the fused ops' float32 accumulation saves). CPU; bf16 on a CPU without
native bf16 units is emulated and slow, so the figures are about accuracy, not speed.

    PYTHONPATH=. .venv/bin/python benchmarks/bf16_accuracy.py --threads 1   # about a minute
    PYTHONPATH=. .venv/bin/python benchmarks/bf16_accuracy.py --models digits --ig-steps 1024
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))

import fastxai as fx
from fastxai import ops

Method = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.dtype | None], torch.Tensor]


def digits_case(samples: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The bundled digits CNN, trained (15 epochs, seed 0), and test images [samples, 1, 8, 8]."""
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, _) = load_digits()
    return train_digits_cnn(x_train, y_train), x_test[:samples]


def resnet_case(samples: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """torchvision's ResNet-18 (10 classes, random weights seeded 0, eval) on 3x32x32 inputs."""
    import real_models

    torch.manual_seed(0)
    model = real_models.torchvision().models.resnet18(num_classes=10).eval()
    return model, torch.rand(samples, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def methods(ig_steps: int, samples: int) -> dict[str, Method]:
    """Each method as ``f(model, x, target, dtype)``; the same seeds for both dtypes."""

    def background(x: torch.Tensor) -> torch.Tensor:
        return torch.rand(8, *x.shape[1:], generator=torch.Generator().manual_seed(2)) * float(x.max())

    def window(x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[1], *(max(1, size // 4) for size in x.shape[2:]))

    return {
        "integrated_gradients": lambda m, x, t, d: fx.integrated_gradients(
            m, x, target=t, n_steps=ig_steps, dtype=d
        ),
        "smoothgrad": lambda m, x, t, d: fx.smoothgrad(m, x, target=t, n_samples=samples, seed=0, dtype=d),
        "gradient_shap": lambda m, x, t, d: fx.gradient_shap(
            m, x, target=t, baselines=background(x), n_samples=samples, seed=0, dtype=d
        ),
        "saliency": lambda m, x, t, d: fx.saliency(m, x, target=t, abs=False, dtype=d),
        "occlusion": lambda m, x, t, d: fx.occlusion(
            m, x, target=t, sliding_window_shapes=window(x), dtype=d
        ),
        "lrp": lambda m, x, t, d: fx.lrp.lrp(m, x, target=t, dtype=d),
    }


def relative_difference(got: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||got - reference|| / ||reference||`` per sample: [B]."""
    difference = (got.double() - reference.double()).flatten(1).norm(dim=1)
    return difference / reference.double().flatten(1).norm(dim=1).clamp_min(1e-30)


def completeness(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """``|sum(a) - (f(x) - f(0))| / |f(x) - f(0)|`` per sample, ``f`` the float32 model's target score."""
    with torch.no_grad():
        scores = model(torch.cat([x, torch.zeros_like(x)])).double()
    rows = torch.arange(x.shape[0])
    gap = scores[rows, target] - scores[rows + x.shape[0], target]
    return (a.double().flatten(1).sum(1) - gap).abs() / gap.abs().clamp_min(1e-30)


@contextmanager
def bf16_accumulation() -> Iterator[None]:
    """``ops.weighted_path_accumulate`` summing in bfloat16 (the accumulator rounded to bfloat16
    after every step): what IG would give if the fused op did not accumulate in float32."""
    original = ops.weighted_path_accumulate

    def broken(grads: torch.Tensor, weights: torch.Tensor, acc: torch.Tensor, **_: object) -> None:
        weights = weights.to(acc.dtype).reshape(grads.shape[0], -1, *([1] * (grads.dim() - 2)))
        weights = weights.expand(grads.shape[0], grads.shape[1], *([1] * (grads.dim() - 2)))
        for step in range(grads.shape[0]):
            acc.copy_((acc + weights[step] * grads[step].to(acc.dtype)).bfloat16())

    ops.weighted_path_accumulate = broken  # type: ignore[assignment]
    try:
        yield
    finally:
        ops.weighted_path_accumulate = original  # type: ignore[assignment]


def report(name: str, model: torch.nn.Module, x: torch.Tensor, ig_steps: int, samples: int) -> list[str]:
    with torch.no_grad():
        target = model(x).argmax(1)
    lines = []
    for method, run in methods(ig_steps, samples).items():
        reference = run(model, x, target, None)
        bf16 = run(model, x, target, torch.bfloat16)
        diff = relative_difference(bf16, reference)
        line = f"| {name} | {method} | {float(diff.median()):.2e} | {float(diff.max()):.2e} |"
        if method == "integrated_gradients":
            with bf16_accumulation():
                broken = run(model, x, target, torch.bfloat16)
            errors = [completeness(model, x, target, a).max() for a in (reference, bf16, broken)]
            line += " " + " | ".join(f"{float(e):.2e}" for e in errors) + " |"
        else:
            line += " | | |"
        lines.append(line)
        print(line, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits", "resnet18"], choices=["digits", "resnet18"])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--ig-steps", type=int, default=256, help="Integrated Gradients steps")
    parser.add_argument("--noise-samples", type=int, default=32, help="SmoothGrad / GradientSHAP samples")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "| model | method | rel. diff. bf16 vs fp32, median | largest | IG completeness error (largest): "
        "fp32 | bf16 | bf16 summed in bf16 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model, x = (digits_case if name == "digits" else resnet_case)(args.samples)
        report(name, model, x, args.ig_steps, args.noise_samples)


if __name__ == "__main__":
    main()
