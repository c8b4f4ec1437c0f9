"""Captum's ``DataLoaderAttribution(FeatureAblation)`` against fastxai's drop-in on a digits-size
MLP (64-64-10) over a ``DataLoader`` of scikit-learn's 8x8 digits (1797 images, batch 64, 29
batches; offline), one thread. Rounds interleave the two (Captum, then fastxai); reported: the
median time of each and the median of the per-round ratios. Every case first checks that both
give the same attributions.

    PYTHONPATH=. .venv/bin/python benchmarks/dataloader_speed.py --rounds 5

Cases: the default metric (every output concatenated: per-example ablation of all 10 logits),
and the accuracy (correct predictions counted by ``reduce``) with 64 one-pixel groups and with
16 2x2 groups; Captum at its default ``perturbations_per_pass=1`` and at its fastest setting
(every group in one pass), fastxai at its default.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr._core.dataloader_attr import DataLoaderAttribution as CaptumDataLoaderAttribution
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastxai.compat.captum import DataLoaderAttribution, FeatureAblation


def count_correct(accum: Any, output: torch.Tensor, inputs: tuple[Any, ...]) -> torch.Tensor:
    correct = (output.argmax(1) == inputs[1]).sum()
    return correct if accum is None else accum + correct


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    grid = (torch.arange(8).view(8, 1) // 2 * 4 + torch.arange(8).view(1, 8) // 2).reshape(1, 64)
    ours_dl = DataLoaderAttribution(FeatureAblation(model))
    theirs_dl = CaptumDataLoaderAttribution(CaptumFeatureAblation(model))
    cases: list[tuple[str, dict[str, Any]]] = [
        ("default metric (all outputs), 64 groups", {}),
        ("accuracy, 64 groups", {"reduce": count_correct}),
        ("accuracy, 16 2x2 groups", {"reduce": count_correct, "feature_mask": (grid,)}),
    ]
    for name, kwargs in cases:
        groups = 16 if "feature_mask" in kwargs else 64
        for per_pass in (1, groups):

            def theirs(kwargs: dict[str, Any] = kwargs, per_pass: int = per_pass) -> Any:
                return theirs_dl.attribute(
                    loader, input_roles=(0, 2), perturbations_per_pass=per_pass, **kwargs
                )

            def ours(kwargs: dict[str, Any] = kwargs) -> Any:
                return ours_dl.attribute(loader, input_roles=(0, 2), **kwargs)

            torch.testing.assert_close(ours(), theirs(), rtol=1e-5, atol=1e-5)
            captum_times, fastxai_times = [], []
            for _ in range(args.rounds):
                captum_times.append(timed(theirs))
                fastxai_times.append(timed(ours))
            ratios = [c / f for c, f in zip(captum_times, fastxai_times, strict=True)]
            print(
                f"{name}, captum perturbations_per_pass={per_pass}: captum "
                f"{statistics.median(captum_times) * 1e3:.0f} ms, fastxai "
                f"{statistics.median(fastxai_times) * 1e3:.1f} ms, captum/fastxai "
                f"{statistics.median(ratios):.1f} (median of {args.rounds} interleaved rounds)"
            )


if __name__ == "__main__":
    main()
