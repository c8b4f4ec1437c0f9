"""Interleaved in-process ratio of each perturbation method to its floor (one forward pass, no
gradients, over all perturbed inputs in large batches), on the digits CNN and MLP.

Floor and method run in turns, many rounds; the figure is the median of the per-round ratios,
which is steadier than a ratio of medians on a shared machine. Single-threaded by default.

Two floors: ``repeat`` is the pytest-benchmark floor (``ForwardFloor``: the batch repeated,
``x.repeat(P)``), ``copies`` runs the same forward passes over the very perturbed inputs the
method scores (recorded from one untimed call). On a CPU a small CNN can run measurably faster
on ``x.repeat(P)`` than on P distinct copies (data-dependent kernel time), so the ``copies`` ratio
is the method's own overhead and the ``repeat`` ratio what the benchmark reports.

    .venv/bin/python benchmarks/perturbation_ratio.py [--rounds 200] [--threads 1] [--backend auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_perturbation import CASES, FASTXAI, ForwardFloor, _evaluations, _settings


class _Recorder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.batches = model, []  # type: ignore[var-annotated]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.batches.append(inputs.clone())
        return self.model(inputs)


def _ratio(model_name: str, method: str, rounds: int, backend: str | None) -> tuple[float, float, float]:
    factory, shape, batch = CASES[model_name]
    model = factory()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=generator)
    target = torch.randint(0, 10, (batch,), generator=generator)
    kwargs = _settings(model_name, shape)[method]
    seeded = {"seed": 0} if method in ("kernel_shap", "lime", "shapley_value_sampling") else {}
    function = FASTXAI[method]
    floor = ForwardFloor(model, x, target, _evaluations(method, kwargs, shape))

    def run_method() -> None:
        function(model, x, target, backend=backend, **kwargs, **seeded)

    recorder = _Recorder(model)
    function(recorder, x, target, backend=backend, **kwargs, **seeded)
    batches = recorder.batches

    def copies_floor() -> None:
        with torch.no_grad():
            for rows in batches:
                model(rows).argmax(1)

    for _ in range(3):  # warm-up
        floor.run()
        copies_floor()
        run_method()
    ratios, copy_ratios, floors = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        floor.run()
        first = time.perf_counter()
        copies_floor()
        second = time.perf_counter()
        run_method()
        end = time.perf_counter()
        floors.append(first - start)
        ratios.append((end - second) / (first - start))
        copy_ratios.append((end - second) / (second - first))
    return statistics.median(ratios), statistics.median(copy_ratios), statistics.median(floors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default=None, help="fused-op backend (default: the choice in force)")
    parser.add_argument("--models", default="digits-cnn,digits-mlp")
    parser.add_argument("--methods", default=",".join(FASTXAI))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':<12} {'method':<24} {'repeat':>7} {'copies':>7} {'floor ms':>9}")
    for model_name in args.models.split(","):
        for method in args.methods.split(","):
            ratio, copy_ratio, floor = _ratio(model_name, method, args.rounds, args.backend)
            print(
                f"{model_name:<12} {method:<24} {ratio:7.3f} {copy_ratio:7.3f} {floor * 1e3:9.3f}", flush=True
            )


if __name__ == "__main__":
    main()
