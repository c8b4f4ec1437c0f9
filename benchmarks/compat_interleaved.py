"""The one-pass Captum drop-ins against Captum, interleaved in one process: one thread, CPU time
of the process, rounds alternating the two classes (the order reversed every round), each turn a
block of calls (10 on the ResNet, 200 on the MLP):
``PYTHONPATH=. python benchmarks/compat_interleaved.py [--rounds N] [--classes NAME ...]``.

These classes cost one forward and one backward, as Captum's do, so their ratios in
``benchmarks/test_compat.py`` (separate runs per class) move by +-10% between runs; alternating
the two in one process measures the difference itself. Reported per class: the median of each
library's per-call time, and the paired ratio (Captum's block over fastxai's next to it in the
same round) as its median and interquartile range over the rounds: the spread says how much of a
few-percent difference is the machine. Models, inputs and targets as in
``benchmarks/test_compat.py`` (the small ResNet at batch 8, the digits MLP at batch 32)."""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from models import digits_mlp, small_resnet
from torch import nn

from fastxai.compat import captum as fc

ROUNDS, WARMUP = 80, 3
RESNET = (3, 32, 32)
CASES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], int, bool]] = [
    # class, model, input shape, batch, needs a layer
    ("Saliency", lambda: small_resnet(module_relus=True), RESNET, 8, False),
    ("InputXGradient", lambda: small_resnet(module_relus=True), RESNET, 8, False),
    ("GuidedBackprop", lambda: small_resnet(module_relus=True), RESNET, 8, False),
    ("Deconvolution", lambda: small_resnet(module_relus=True), RESNET, 8, False),
    ("GradientShap", lambda: small_resnet(module_relus=True), RESNET, 8, False),
    ("LayerGradCam", lambda: small_resnet(module_relus=True), RESNET, 8, True),
    ("LayerActivation", lambda: small_resnet(module_relus=True), RESNET, 8, True),
    ("LayerGradientXActivation", lambda: small_resnet(module_relus=True), RESNET, 8, True),
    ("LayerActivation", digits_mlp, (1, 8, 8), 32, True),
]


def case_calls(
    case: tuple[str, Callable[[], nn.Module], tuple[int, ...], int, bool], captum_attr: Any
) -> tuple[list[Callable[[], Any]], int]:
    """One call of fastxai's class and one of Captum's for ``case`` (model, input and target
    built here, the same for both), and how many calls make a block of it."""
    name, factory, shape, batch, needs_layer = case
    model = factory()
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(x).argmax(1)
    layer = [module for module in model.modules() if isinstance(module, nn.ReLU)][-1]
    kwargs: dict[str, Any] = {} if name == "LayerActivation" else {"target": target}
    if name == "GradientShap":
        kwargs["baselines"] = torch.zeros(4, *shape)
    methods = [
        getattr(namespace, name)(model, layer) if needs_layer else getattr(namespace, name)(model)
        for namespace in (fc, captum_attr)
    ]
    calls = 200 if shape[0] == 1 else 10  # a block of calls per turn
    return [functools.partial(method.attribute, x, **kwargs) for method in methods], calls


def interleaved(
    methods: Sequence[Callable[[], object]], calls: int, rounds: int, warmup: int
) -> tuple[float, float, list[float]]:
    """Times ``methods`` (fastxai's call, the peer's) in alternating blocks of ``calls`` calls,
    the order reversed every round, ``warmup`` rounds untimed: (fastxai's median seconds per
    call, the peer's, the quartiles of the paired ratio peer / fastxai over the rounds)."""
    times: list[list[float]] = [[], []]
    for round_ in range(warmup + rounds):
        for index in (0, 1) if round_ % 2 else (1, 0):
            start = time.process_time()
            for _ in range(calls):
                methods[index]()
            if round_ >= warmup:
                times[index].append((time.process_time() - start) / calls)
    ratios = [peer / fastxai for fastxai, peer in zip(times[0], times[1], strict=True)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.quantiles(ratios, n=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds per class")
    parser.add_argument("--classes", nargs="+", default=None, help="only these classes (default: all)")
    args = parser.parse_args()
    import captum.attr as captum_attr

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    # the allocator's steady state, as in benchmarks/test_compat.py
    model = small_resnet(module_relus=True)
    big = torch.rand(512, *RESNET).requires_grad_(True)
    torch.autograd.grad(model(big)[:, 0].sum(), big)
    del model, big
    for case in CASES:
        name, shape = case[0], case[2]
        if args.classes is not None and name not in args.classes:
            continue
        methods, calls = case_calls(case, captum_attr)
        ours, theirs, (low, middle, high) = interleaved(methods, calls, args.rounds, WARMUP)
        print(
            f"{name:26s} {'x'.join(map(str, shape)):8s} fastxai {ours * 1e3:7.3f} ms  "
            f"captum {theirs * 1e3:7.3f} ms  captum / fastxai paired median {middle:.3f} "
            f"(IQR {low:.3f}-{high:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
