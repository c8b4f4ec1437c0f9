"""DeepLIFT against its floor, interleaved, one thread, CPU time of this thread (steadier than
wall time on a shared machine):
``PYTHONPATH=. python benchmarks/deeplift_ratio.py [rounds] [--mlp-batches 8,32,128,512] [--captum]``.

The floor is one forward and one backward over ``[x; baseline]`` in one batch, with random
baselines (one per input) and with zero baselines (Captum's default, which fastxai runs as one
row). ``--mlp-batches``
adds the MLP at other batch sizes (the default cases: MLP batch 32, ResNet batch 8).
``--captum`` also times Captum's ``DeepLift`` / ``DeepLiftShap`` against fastxai.compat's on the
cases of benchmarks/test_compat.py (Captum's defaults), interleaved the same way."""

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


def ratio(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, rounds: int, baselines: str = "random"
) -> tuple[float, float]:
    """Median floor and fastxai times (seconds) over ``rounds`` interleaved rounds; ``baselines``:
    ``"random"`` (one per input) or ``"zero"`` (Captum's default: all equal, so fastxai runs
    them as one row)."""
    if baselines == "zero":
        baseline = torch.zeros_like(x)
    else:
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


def captum_ratios(rounds: int) -> None:
    """Captum's time over fastxai.compat's for DeepLift and DeepLiftShap (16 baselines)."""
    import warnings

    import captum.attr as captum_attr
    from test_compat import CASES

    from fastxai.compat import captum as fc

    warnings.filterwarnings("ignore")  # Captum's notice about hooks on every call
    for name, (factory, shape, batch) in CASES.items():
        model = factory()
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(batch, *shape, generator=generator)
        target = torch.randint(0, 10, (batch,), generator=generator)
        background = torch.rand(16, *shape, generator=generator)
        for cls, kwargs in (("DeepLift", {}), ("DeepLiftShap", {"baselines": background})):
            ours, theirs = getattr(fc, cls)(model), getattr(captum_attr, cls)(model)
            runs: dict[str, Callable[[], object]] = {
                "fastxai": lambda: ours.attribute(x, target=target, **kwargs),  # noqa: B023
                "captum": lambda: theirs.attribute(x, target=target, **kwargs),  # noqa: B023
            }
            times: dict[str, list[float]] = {key: [] for key in runs}
            for _ in range(2):
                for run in runs.values():
                    run()
            for _ in range(rounds if name != "resnet" else max(3, rounds // 3)):
                for key, run in runs.items():
                    start = time.thread_time()
                    run()
                    times[key].append(time.thread_time() - start)
            a, c = statistics.median(times["fastxai"]), statistics.median(times["captum"])
            print(
                f"{name:11s} {cls:13s} fastxai {a * 1e3:7.2f} ms  captum {c * 1e3:7.2f} ms  "
                f"captum/fastxai {c / a:.2f}"
            )


def main(rounds: int, mlp_batches: list[int]) -> None:
    torch.set_num_threads(1)
    for baselines in ("random", "zero"):
        for name in ("mlp", "resnet"):
            model, x, target = case(name)
            floor, ours = ratio(model, x, target, rounds if name == "mlp" else max(3, rounds // 4), baselines)
            print(
                f"{name:7s} batch {x.shape[0]:4d} baselines {baselines:6s}  floor {floor * 1e3:7.2f} ms  "
                f"fastxai {ours * 1e3:7.2f} ms  ratio {ours / floor:.2f}"
            )
        model, x, target = case("mlp")
        generator = torch.Generator().manual_seed(3)
        for batch in mlp_batches:
            inputs = torch.rand(batch, *x.shape[1:], generator=generator)
            targets = torch.randint(0, 10, (batch,), generator=generator)
            floor, ours = ratio(model, inputs, targets, max(10, rounds * 32 // batch), baselines)
            print(
                f"mlp     batch {batch:4d} baselines {baselines:6s}  floor {floor * 1e3:7.2f} ms  "
                f"fastxai {ours * 1e3:7.2f} ms  ratio {ours / floor:.2f}"
            )


if __name__ == "__main__":
    sys.path.insert(0, "benchmarks")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", type=int, nargs="?", default=80)
    parser.add_argument("--mlp-batches", default="", help="comma-separated MLP batch sizes")
    parser.add_argument("--captum", action="store_true", help="also Captum's DeepLift / DeepLiftShap")
    args = parser.parse_args()
    main(args.rounds, [int(b) for b in args.mlp_batches.split(",") if b])
    if args.captum:
        captum_ratios(max(10, args.rounds // 3))
