"""LRP cost relative to the floor, measured in one process by alternating the implementations.

On a shared machine absolute times drift; ratios of runs interleaved round by round do not (much).
Every round times, in turn, the floor (one forward+backward of the batch, ``models.floor``), the
same floor with the batch in channels-last memory layout (as ``fastxai.lrp`` runs its pass on
the CPU: the figure that says how much of the gain is the layout),
``fastxai.lrp`` with ``epsilon_plus_flat``, Captum's LRP (VGG-style only: it has no rule for
residual sums) and Zennit's ``EpsilonPlusFlat`` (with its BatchNorm canonizer) when importable.
Reported: best-of-rounds time / best-of-rounds floor, and the median of per-round ratios. With
``--clock cpu`` (the default) each run is timed by the process's CPU time, which does not count
the time other processes hold the cores; run it with ``--threads 1`` then (OpenMP workers that
spin-wait would count too).

    .venv/bin/python benchmarks/lrp_ratio.py --rounds 40 --threads 1   # Zennit: make setup installs it
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
# appended, not prepended: tests/models.py must not shadow benchmarks/models.py
sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))

import real_models
from models import case, floor, small_vgg

import fastxai.lrp as lrp


def _implementations(
    name: str, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, backends: list[str]
) -> dict[str, Callable[[], object]]:
    x_cl = x.contiguous(memory_format=torch.channels_last)
    functions: dict[str, Callable[[], object]] = {
        "floor": lambda: floor(model, x, target, 1),
        # the floor for a user who runs gradients channels-last (fastxai's pass on the CPU is)
        "floor-channels-last": lambda: floor(model, x_cl, target, 1),
    }
    for backend in backends:
        functions[f"fastxai-{backend}"] = lambda backend=backend: lrp(
            model, x, target=target, composite="epsilon_plus_flat", backend=backend
        )
    try:
        from captum.attr import LRP

        if name == "vgg":
            explainer = LRP(model)
            functions["captum"] = lambda: explainer.attribute(x, target=target)
    except ImportError:
        pass
    if importlib.util.find_spec("zennit") is not None:
        real_models.zennit()  # zennit imports torchvision, whose CPU-machine import needs the workaround
    try:
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat

        def zennit_lrp() -> torch.Tensor:
            composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
            with Gradient(model, composite) as attributor:
                onehot = torch.nn.functional.one_hot(target, 10).to(x.dtype)
                return attributor(x, onehot)[1]

        functions["zennit"] = zennit_lrp
    except ImportError:
        pass
    return functions


def measure(name: str, rounds: int, backends: list[str], clock: str) -> dict[str, tuple[float, float]]:
    """{implementation: (best / best floor, median of per-round ratios)} for model ``name``."""
    model, x, target = case("resnet")
    if name == "vgg":
        model = small_vgg()
    functions = _implementations(name, model, x, target, backends)
    times: dict[str, list[float]] = {key: [] for key in functions}
    for function in functions.values():
        function()  # warm-up: traces, caches, allocator
    now = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(rounds):
        for key, function in functions.items():
            start = now()
            function()
            times[key].append(now() - start)
    best_floor = min(times["floor"])
    return {
        key: (
            min(values) / best_floor,
            statistics.median(v / f for v, f in zip(values, times["floor"], strict=True)),
        )
        for key, values in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--models", default="vgg,resnet")
    parser.add_argument("--backends", default="auto", help="comma-separated: auto, native, reference")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, rounds {args.rounds}, "
        f"clock {args.clock}, fastxai from {os.path.dirname(lrp.__file__)}"
    )
    for name in args.models.split(","):
        results = measure(name, args.rounds, args.backends.split(","), args.clock)
        for key, (best, median) in results.items():
            print(f"{name:7s} {key:18s} best/best-floor {best:5.2f}   median per-round ratio {median:5.2f}")


if __name__ == "__main__":
    main()
