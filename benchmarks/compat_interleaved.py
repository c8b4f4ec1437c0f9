"""The one-pass Captum drop-ins against Captum, interleaved in one process: one thread, CPU time
of the process, median of 60 rounds (after 3 warm-up rounds), rounds alternating the two classes:
``PYTHONPATH=. python benchmarks/compat_interleaved.py [--captum-first]``.

These classes cost one forward and one backward, as Captum's do, so their ratios in
``benchmarks/test_compat.py`` (separate runs per class) move by +-10% between runs; alternating
the two in one process measures the difference itself. Models, inputs and targets as in
``benchmarks/test_compat.py`` (the small ResNet at batch 8, the digits MLP at batch 32)."""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from models import digits_mlp, small_resnet
from torch import nn

from fastxai.compat import captum as fc

ROUNDS, WARMUP = 60, 3
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captum-first", action="store_true", help="time Captum first in each round")
    args = parser.parse_args()
    import captum.attr as captum_attr

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    # the allocator's steady state, as in benchmarks/test_compat.py
    model = small_resnet(module_relus=True)
    big = torch.rand(512, *RESNET).requires_grad_(True)
    torch.autograd.grad(model(big)[:, 0].sum(), big)
    del model, big
    for name, factory, shape, batch, needs_layer in CASES:
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
        calls = 200 if shape[0] == 1 else 1  # a sub-millisecond call is timed 200 at a time
        order = [1, 0] if args.captum_first else [0, 1]
        times: list[list[float]] = [[], []]
        for round_ in range(WARMUP + ROUNDS):
            for index in order:
                start = time.process_time()
                for _ in range(calls):
                    methods[index].attribute(x, **kwargs)
                if round_ >= WARMUP:
                    times[index].append((time.process_time() - start) / calls)
        ours, theirs = statistics.median(times[0]), statistics.median(times[1])
        print(
            f"{name:26s} {'x'.join(map(str, shape)):8s} fastxai {ours * 1e3:7.3f} ms  "
            f"captum {theirs * 1e3:7.3f} ms  captum / fastxai {theirs / ours:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
