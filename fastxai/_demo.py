"""The quick-start job: attributions for a digits CNN on every backend, with timings.

Prints, for each method, the time per backend next to the floor (one forward and backward
over the same number of model inputs), the largest difference from the reference backend,
and IG's completeness error.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import fastxai as fx
from fastxai import _model
from fastxai.digits import accuracy, load_digits, train_digits_cnn


def _best_times(functions: list[Callable[[], Any]], repeats: int) -> tuple[list[float], list[Any]]:
    """Best wall time of each function over ``repeats`` rounds, and its last result.

    The functions take turns within each round, so a slow spell of the machine touches all of
    them alike instead of one.
    """
    results = [function() for function in functions]  # warm-up: allocations, lazy initialisation
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            results[index] = function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best, results


def _floor(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, points: int, chunk: int
) -> Callable[[], None]:
    """One forward+backward over ``points`` copies of the batch, in chunks like the methods."""
    inputs = x.repeat(points, 1, 1, 1)
    targets = target.repeat(points)

    def run() -> None:
        with _model.preserved_state(model):
            for start in range(0, inputs.shape[0], chunk):
                _model.target_gradients(model, inputs[start : start + chunk], targets[start : start + chunk])

    return run


def run_demo(samples: int = 256, points: int = 32, repeats: int = 5, seed: int = 0) -> None:
    torch.manual_seed(seed)
    print(f"fastxai {fx.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for info in fx.backends().values():
        print("  " + str(info))
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_digits(seed)
    model = train_digits_cnn(x_train, y_train, seed=seed)
    print(
        f"\ndigits CNN trained in {time.perf_counter() - start:.1f} s on {len(y_train)} images: "
        f"test accuracy {accuracy(model, x_test, y_test):.3f}"
    )
    x, target = x_test[:samples], y_test[:samples]
    chunk = 512
    methods: dict[str, tuple[int, Callable[[str], Any]]] = {
        "saliency (no fused op)": (1, lambda b: fx.saliency(model, x, target=target, chunk_size=chunk)),
        f"smoothgrad n={points}": (
            points,
            lambda b: fx.smoothgrad(
                model, x, target=target, n_samples=points, stdevs=0.15, seed=seed, chunk_size=chunk, backend=b
            ),
        ),
        f"integrated_gradients n={points}": (
            points,
            lambda b: fx.integrated_gradients(
                model, x, target=target, n_steps=points, chunk_size=chunk, backend=b
            ),
        ),
    }
    names = [name for name, info in fx.backends().items() if info.available and "cpu" in info.devices]
    print(f"\n{len(x)} test images, best of {repeats}; floor = forward+backward over the same inputs\n")
    header = (
        f"{'method':34} {'floor s':>8} " + " ".join(f"{n + ' s':>12}" for n in names) + "   ratio to floor"
    )
    print(header)
    print("-" * len(header))
    for label, (count, method) in methods.items():
        functions = [_floor(model, x, target, count, chunk)] + [functools.partial(method, n) for n in names]
        (floor, *times), (_, *results) = _best_times(functions, repeats)
        ratios = " ".join(f"{name}={t / floor:.2f}x" for name, t in zip(names, times, strict=True))
        print(f"{label:34} {floor:8.3f} " + " ".join(f"{t:12.3f}" for t in times) + "   " + ratios)
        for name, result in zip(names[1:], results[1:], strict=True):
            difference = (result - results[0]).abs().max().item() / results[0].abs().max().item()
            print(f"{'':34} max |{name} - reference| / max|reference| = {difference:.1e}")

    _, delta = fx.integrated_gradients(model, x, target=target, n_steps=points, return_convergence_delta=True)
    with warnings.catch_warnings(record=True) as caught:  # reported below instead
        warnings.simplefilter("always")
        _, adaptive_delta, evaluations = fx.integrated_gradients(
            model,
            x,
            target=target,
            method="adaptive",
            tolerance=1e-2,
            return_convergence_delta=True,
            return_evaluations=True,
        )
    with torch.no_grad():
        scores = model(x).gather(1, target.view(-1, 1)).squeeze(1)
        difference = (scores - model(torch.zeros_like(x)).gather(1, target.view(-1, 1)).squeeze(1)).abs()
    print(
        "\nIG completeness error |sum(attr) - (f(x) - f(0))| / |f(x) - f(0)|, median over images:\n"
        f"  gausslegendre, {points} steps: {(delta.abs() / difference).median().item():.2e}\n"
        f"  adaptive, tolerance 1e-2: {(adaptive_delta.abs() / difference).median().item():.2e} with "
        f"{evaluations.float().mean().item():.1f} model evaluations per image on average"
        + "".join(f"\n  ({warning.message})" for warning in caught)
    )
