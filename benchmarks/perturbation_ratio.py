"""Interleaved in-process ratio of each perturbation method to its floor (one forward pass, no
gradients, over all perturbed inputs in large batches), on the digits CNN and MLP.

Floor and method run in turns, many rounds; the figure is the median of the per-round ratios,
which is steadier than a ratio of medians on a shared machine. Single-threaded by default.

Two floors: ``floor`` is the pytest-benchmark floor (``ForwardFloor``: the model over the very
perturbed inputs one fastxai call scores, recorded beforehand), ``repeat`` runs the model over
the batch repeated (``x.repeat(P)``, built inside the timed run), the floor these benchmarks
used before. On a CPU a small CNN runs a repeated batch measurably faster than P distinct copies
(data-dependent kernel time), so ``repeat`` is the harsher of the two there.

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

from test_perturbation import CASES, FASTXAI, SEEDED, ForwardFloor, _evaluations, _settings, perturbed_batches

from fastxai import _scheduling


def _ratio(model_name: str, method: str, rounds: int, backend: str | None) -> tuple[float, float, float]:
    factory, shape, batch = CASES[model_name]
    model = factory()
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=generator)
    target = torch.randint(0, 10, (batch,), generator=generator)
    kwargs = _settings(model_name, shape)[method]
    seeded = {"seed": 0} if method in SEEDED else {}
    function = FASTXAI[method]
    floor = ForwardFloor(model, x, target, perturbed_batches(model, x, target, method, kwargs))
    points = _evaluations(method, kwargs, shape)
    chunk = _scheduling.auto_chunk_size(None, x)

    def repeat_floor() -> None:
        inputs = x.repeat(points, *([1] * (x.dim() - 1)))
        targets = target.repeat(points)
        with torch.no_grad():
            for start in range(0, inputs.shape[0], chunk):
                model(inputs[start : start + chunk]).gather(1, targets[start : start + chunk].view(-1, 1))

    def run_method() -> None:
        function(model, x, target, backend=backend, **kwargs, **seeded)

    for _ in range(3):  # warm-up
        floor.run()
        repeat_floor()
        run_method()
    ratios, repeat_ratios, floors = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        floor.run()
        first = time.perf_counter()
        repeat_floor()
        second = time.perf_counter()
        run_method()
        end = time.perf_counter()
        floors.append(first - start)
        ratios.append((end - second) / (first - start))
        repeat_ratios.append((end - second) / (second - first))
    return statistics.median(ratios), statistics.median(repeat_ratios), statistics.median(floors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default=None, help="fused-op backend (default: the choice in force)")
    parser.add_argument("--models", default="digits-cnn,digits-mlp")
    parser.add_argument("--methods", default=",".join(FASTXAI))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':<12} {'method':<24} {'floor':>7} {'repeat':>7} {'floor ms':>9}")
    for model_name in args.models.split(","):
        for method in args.methods.split(","):
            ratio, repeat_ratio, floor = _ratio(model_name, method, args.rounds, args.backend)
            print(
                f"{model_name:<12} {method:<24} {ratio:7.3f} {repeat_ratio:7.3f} {floor * 1e3:9.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
