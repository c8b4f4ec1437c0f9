"""DeepLIFT against its floor, interleaved, one thread, CPU time of this thread (steadier than
wall time on a shared machine): ``PYTHONPATH=. python benchmarks/deeplift_ratio.py [rounds]``."""

from __future__ import annotations

import statistics
import sys
import time

import torch
from models import case
from test_deeplift import pair_floor

import fastxai as fx


def main(rounds: int) -> None:
    torch.set_num_threads(1)
    for name in ("mlp", "resnet"):
        model, x, target = case(name)
        baseline = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
        runs = {
            "floor": lambda: pair_floor(model, x, baseline, target),  # noqa: B023
            "fastxai": lambda: fx.deeplift(model, x, target, baseline),  # noqa: B023
        }
        times: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(3):
            for run in runs.values():
                run()
        for _ in range(rounds if name == "mlp" else max(3, rounds // 4)):
            for key, run in runs.items():
                start = time.thread_time()
                run()
                times[key].append(time.thread_time() - start)
        floor, ours = statistics.median(times["floor"]), statistics.median(times["fastxai"])
        ratio = ours / floor
        print(f"{name:7s} floor {floor * 1e3:7.2f} ms  fastxai {ours * 1e3:7.2f} ms  ratio {ratio:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, "benchmarks")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 80)
