"""Counterfactuals and global surrogates on the bundled digits CNN and on scikit-learn's
breast-cancer table: the README figures.

``PYTHONPATH=. python benchmarks/counterfactual.py [--count 100] [--threads 2]`` (CPU, a few
minutes). Digits: the CNN of ``fastxai.digits`` (default training), the first ``count`` test
images, bounds [0, 1]. Breast cancer: features standardised with the training rows' mean and
std, a 30-32-2 MLP (Adam, 300 full-batch steps), a 75/25 split, bounds the training rows'
per-feature range. Every search: lr 0.05, 200 steps a round; CEM: beta 0.1, 6 steps of its
bisection on c. Reported per method over the inputs: validity (the explanation meets its
goal), and over the valid ones the mean number of features (pixels) changed by more than 0.01,
and the mean L1 / L2 distance (from the input; for pertinent positives from the background 0).
Then the fidelity of distilled students (agreement with the model's class) on the held-out
rows, and the time of one batched call against the loop of one call per input
(``--timing-only --threads 1`` runs that alone).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastxai as fx
from fastxai.counterfactual import CounterfactualResult
from fastxai.digits import accuracy, load_digits, train_digits_cnn


def summary(name: str, result: CounterfactualResult, anchor: torch.Tensor, seconds: float) -> None:
    valid = result.valid
    changed = ((result.counterfactuals - anchor).abs() > 0.01).flatten(1).sum(1).float()
    rate = float(valid.float().mean())
    if valid.any():
        figures = (
            f"changed {float(changed[valid].mean()):6.2f}  L1 {float(result.l1[valid].mean()):6.3f}  "
            f"L2 {float(result.l2[valid].mean()):6.3f}"
        )
    else:
        figures = "no valid explanation"
    print(f"  {name:<28} valid {rate:6.1%}  {figures}  ({seconds:.1f} s)")


def timed(function, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def digits_figures(count: int) -> None:
    (x_train, y_train), (x_test, y_test) = load_digits()
    model, seconds = timed(train_digits_cnn, x_train, y_train)
    print(f"digits CNN: test accuracy {accuracy(model, x_test, y_test):.3f} (trained in {seconds:.1f} s)")
    x = x_test[:count]
    box = dict(bounds=(0.0, 1.0), lr=0.05, steps=200)
    for name, kwargs in (
        ("Wachter L1", dict(distance="l1")),
        ("Wachter L2", dict(distance="l2")),
        ("Wachter elastic (beta 0.1)", dict(distance="elastic", beta=0.1)),
    ):
        result, seconds = timed(fx.wachter, model, x, **kwargs, **box)
        summary(name, result, x, seconds)
    for name, mode, options in (
        ("CEM PN", "pn", {}),
        ("CEM PP", "pp", {}),
        ("CEM PP, start at the input", "pp", {"pp_start": "input"}),
    ):
        result, seconds = timed(fx.cem, model, x, mode, beta=0.1, search_steps=6, **options, **box)
        summary(name, result, x if mode == "pn" else torch.zeros_like(x), seconds)
    flat = x_train.flatten(1)
    for student, options in (
        ("tree", dict(max_depth=6)),
        ("linear", dict(l1=0.001)),
        ("additive", dict(steps=400, batch_size=256)),
    ):
        inputs = flat if student == "additive" else x_train
        test = x_test.flatten(1) if student == "additive" else x_test
        teacher = (lambda v: model(v.view(-1, 1, 8, 8))) if student == "additive" else model
        result, seconds = timed(
            fx.distill, teacher, inputs, y_train, student=student, alpha=0.9, test_inputs=test, **options
        )
        extra = f", {len(result.student.support)} of 64 pixels used" if student == "linear" else ""
        print(f"  distilled {student:<9} {options}: held-out fidelity {result.fidelity:.3f}{extra}", end="")
        print(f" ({seconds:.1f} s)")
    loop_timing(model, x)


def loop_timing(model: nn.Module, x: torch.Tensor, count: int = 16, repeats: int = 2) -> None:
    """One batched Wachter L1 call on ``count`` images against the loop of one call per image
    (same arguments), each timed ``repeats`` times (the best kept)."""
    few = x[:count]
    options = dict(distance="l1", bounds=(0.0, 1.0), lr=0.05, steps=200)
    batched = min(timed(fx.wachter, model, few, **options)[1] for _ in range(repeats))
    looped = min(
        timed(lambda: [fx.wachter(model, few[i : i + 1], **options) for i in range(len(few))])[1]
        for _ in range(repeats)
    )
    print(f"  Wachter L1, {len(few)} images: one batched call {batched:.2f} s, ", end="")
    print(f"loop of single calls {looped:.2f} s ({looped / batched:.1f}x)")


def breast_cancer_figures() -> None:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    data = torch.tensor(bunch.data, dtype=torch.float32)
    labels = torch.tensor(bunch.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train, test = order[:426], order[426:]
    mean, std = data[train].mean(0), data[train].std(0)
    data = (data - mean) / std
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(data[train]), labels[train]).backward()
        optimiser.step()
    model.eval()
    print(f"breast cancer MLP: test accuracy {accuracy(model, data[test], labels[test]):.3f}")
    low, high = data[train].min(0).values, data[train].max(0).values
    x = data[test].clamp(low, high)  # the box is the training range; test rows are put inside it
    box = dict(bounds=(low, high), lr=0.05, steps=200)
    scale = fx.counterfactual.mad(data[train])
    result, seconds = timed(fx.wachter, model, x, distance="l1", scale=scale, **box)
    summary("Wachter L1 (MAD-scaled)", result, x, seconds)
    result, seconds = timed(fx.wachter, model, x, distance="l2", **box)
    summary("Wachter L2", result, x, seconds)
    result, seconds = timed(fx.cem, model, x, "pn", direction="any", beta=0.1, search_steps=6, **box)
    summary("CEM PN (any direction)", result, x, seconds)
    for student, options in (
        ("tree", dict(max_depth=3)),
        ("linear", dict(l1=0.01)),
        ("additive", dict(steps=500)),
    ):
        result, seconds = timed(
            fx.distill,
            model,
            data[train],
            labels[train],
            student=student,
            alpha=0.9,
            test_inputs=data[test],
            **options,
        )
        extra = f", {len(result.student.support)} of 30 features used" if student == "linear" else ""
        print(f"  distilled {student:<9} {options}: held-out fidelity {result.fidelity:.3f}{extra}", end="")
        print(f" ({seconds:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="digits test images to explain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timing-only", action="store_true", help="only the batched-vs-loop timing")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    if arguments.timing_only:
        (x_train, y_train), (x_test, _) = load_digits()
        loop_timing(train_digits_cnn(x_train, y_train), x_test)
        return
    digits_figures(arguments.count)
    breast_cancer_figures()


if __name__ == "__main__":
    main()
