"""DeepLIFT against its floor, interleaved, one thread, CPU time of this thread (steadier than
wall time on a shared machine):
``PYTHONPATH=. python benchmarks/deeplift_ratio.py [rounds] [--mlp-batches 8,32,128,512]``.

The floor is one forward and one backward over ``[x; baseline]`` in one batch. ``--mlp-batches``
adds the MLP at other batch sizes (the default cases: MLP batch 32, ResNet batch 8)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from models import case
from test_deeplift import pair_floor
from torch import nn

import fastxai as fx


def ratio(model: nn.Module, x: torch.Tensor, target: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Median floor and fastxai times (seconds) over ``rounds`` interleaved rounds."""
    baseline = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    runs: dict[str, Callable[[], object]] = {
        "floor": lambda: pair_floor(model, x, baseline, target),
        "fastxai": lambda: fx.deeplift(model, x, target, baseline, chunk_size=2 * x.shape[0]),
    }
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(3):
        for run in runs.values():
            run()
    for _ in range(rounds):
        for key, run in runs.items():
            start = time.thread_time()
            run()
            times[key].append(time.thread_time() - start)
    return statistics.median(times["floor"]), statistics.median(times["fastxai"])


def main(rounds: int, mlp_batches: list[int]) -> None:
    torch.set_num_threads(1)
    for name in ("mlp", "resnet"):
        model, x, target = case(name)
        floor, ours = ratio(model, x, target, rounds if name == "mlp" else max(3, rounds // 4))
        print(
            f"{name:7s} batch {x.shape[0]:4d}  floor {floor * 1e3:7.2f} ms  fastxai {ours * 1e3:7.2f} ms  "
            f"ratio {ours / floor:.2f}"
        )
    model, x, target = case("mlp")
    generator = torch.Generator().manual_seed(3)
    for batch in mlp_batches:
        inputs = torch.rand(batch, *x.shape[1:], generator=generator)
        targets = torch.randint(0, 10, (batch,), generator=generator)
        floor, ours = ratio(model, inputs, targets, max(10, rounds * 32 // batch))
        print(
            f"mlp     batch {batch:4d}  floor {floor * 1e3:7.2f} ms  fastxai {ours * 1e3:7.2f} ms  "
            f"ratio {ours / floor:.2f}"
        )


if __name__ == "__main__":
    sys.path.insert(0, "benchmarks")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=80)
    parser.add_argument("--mlp-batches", default="", help="comma-separated MLP batch sizes")
    args = parser.parse_args()
    main(args.rounds, [int(b) for b in args.mlp_batches.split(",") if b])
