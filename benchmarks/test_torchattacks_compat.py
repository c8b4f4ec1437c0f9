"""The torchattacks drop-in against torchattacks: classes added in fastxai.compat.torchattacks
with torchattacks' default arguments, the same model, images, labels and seeds on both sides.

Case: the trained CNN of fastxai.digits on the first 128 of its test images (1x8x8), as
``benchmarks/test_pgd.py``'s digits case. Before every call the global generators that
torchattacks draws from (torch, numpy, random) are seeded alike, so both libraries do the
same work; for the classes that give torchattacks' examples under those seeds the two outputs
are compared once, outside the timing. Not compared: OnePixel (fastxai's draws come from its
own ``seed``, so the populations differ) and EADL1 (torchattacks' first step also moves its
copy of the input, see ``fastxai.compat.torchattacks.EADL1``). The whole file takes about 35 s
on one thread. The paired ratios with their spread: ``benchmarks/torchattacks_interleaved.py``.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from fastxai.compat import torchattacks as fta

BATCH = 128
CASES: dict[str, tuple[dict[str, Any], float | None]] = {
    # class: (arguments other than torchattacks' defaults, max |difference| asserted or None)
    "SINIFGSM": ({}, 0.0),  # m=5 scale copies: one model batch per step
    "VMIFGSM": ({}, 0.0),  # N=5 neighbours: one model batch per step
    "DIFGSM": ({}, 0.0),
    "TPGD": ({}, 0.0),
    "EOTPGD": ({}, 0.0),  # eot_iter=2
    "Jitter": ({}, 0.0),
    "EADL1": ({}, None),
    "OnePixel": ({}, None),  # the populations of every image in one batch per generation
    "Pixle": ({}, 0.0),
    "SPSA": ({}, 0.0),
}


@functools.lru_cache(maxsize=1)
def digits_model_and_test() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    return train_digits_cnn(x_train, y_train), x_test, y_test


def digits_batch(batch: int = BATCH) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The trained digits CNN and the first ``batch`` test images and labels."""
    model, x_test, y_test = digits_model_and_test()
    return model, x_test[:batch], y_test[:batch]


def seeded(function: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``function`` with torch's, numpy's and random's global generators seeded before each call."""

    def call() -> torch.Tensor:
        torch.manual_seed(0)
        np.random.seed(0)  # noqa: NPY002 (torchattacks draws from the legacy global generator)
        random.seed(0)
        return function()

    return call


def attack_calls(name: str, batch: int = BATCH) -> list[Callable[[], torch.Tensor]]:
    """One seeded call of fastxai's class and one of torchattacks' for ``name`` on the digits batch."""
    import torchattacks

    model, x, y = digits_batch(batch)
    kwargs = CASES[name][0]
    attacks = [getattr(namespace, name)(model, **kwargs) for namespace in (fta, torchattacks)]
    return [seeded(functools.partial(attack, x, y)) for attack in attacks]


@pytest.mark.parametrize("implementation", ["fastxai", "torchattacks"])
@pytest.mark.parametrize("name", list(CASES))
def test_torchattacks_compat(benchmark, name: str, implementation: str) -> None:
    pytest.importorskip("torchattacks")
    pytest.importorskip("sklearn")
    ours, theirs = attack_calls(name)
    tolerance = CASES[name][1]
    if tolerance is not None and implementation == "fastxai":
        difference = (ours() - theirs()).abs().max().item()
        assert difference <= tolerance, f"{name}: max |fastxai - torchattacks| {difference}"
    benchmark.group = f"torchattacks-compat-{name}"
    function = ours if implementation == "fastxai" else theirs
    benchmark.pedantic(function, rounds=3, warmup_rounds=1)
