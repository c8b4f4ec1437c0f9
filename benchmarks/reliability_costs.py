"""What the reliability checks of issue 21 cost, against the work they guard (one thread, CPU).

- The runner's identity: hashing a model's parameters and buffers (once per run) and a batch of
  inputs (as each shard reads it), against the batch's work (the prediction forward + saliency),
  on a random-weight ResNet-18 with [16, 3, 224, 224] inputs.
- LRP's stale-plan check (a one-sample forward compared with the plan's output): ``fastxai.lrp``
  with and without it on the models of ``benchmarks/lrp_ratio.py`` (batch 8 and 32), interleaved
  rounds, process CPU time, medians.

    PYTHONPATH=. .venv/bin/python benchmarks/reliability_costs.py
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))  # real_models; after benchmarks/

from models import case, small_vgg

import fastxai as fx
from fastxai import _fingerprint
from fastxai.lrp import core


def _best(function: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def runner_hashing() -> None:
    from real_models import torchvision

    model = torchvision().models.resnet18(num_classes=10).eval()
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    fingerprint = _best(lambda: _fingerprint.model_fingerprint(model))
    x = torch.randn(16, 3, 224, 224)
    hashing = _best(lambda: _fingerprint.update_tensor(hashlib.sha256(), x))
    target = model(x).argmax(1)
    work = _best(lambda: model(x), 2) + _best(lambda: fx.saliency(model, x, target=target), 2)
    print(
        f"runner: ResNet-18 parameters+buffers {size / 1e6:.1f} MB hashed in {fingerprint * 1e3:.1f} ms "
        f"(once per run); a [16, 3, 224, 224] batch in {hashing * 1e3:.1f} ms against {work * 1e3:.0f} ms of "
        f"work (forward + saliency): {100 * hashing / work:.2f}%"
    )


def lrp_check(name: str, batch: int, rounds: int = 25) -> None:
    model, x, target = case("resnet")
    if name == "vgg":
        model = small_vgg()
    x, target = x.repeat(batch // x.shape[0], 1, 1, 1), target.repeat(batch // x.shape[0])
    checked = core._plan_may_be_stale
    times: dict[str, list[float]] = {"with": [], "without": []}
    fx.lrp(model, x, target=target)
    try:
        for _ in range(rounds):
            for key in times:
                core._plan_may_be_stale = checked if key == "with" else (lambda _model: False)
                started = time.process_time()
                fx.lrp(model, x, target=target, composite="epsilon_plus_flat")
                times[key].append(time.process_time() - started)
    finally:
        core._plan_may_be_stale = checked
    with_check, without = (statistics.median(times[key]) * 1e3 for key in ("with", "without"))
    print(
        f"lrp {name} (batch {x.shape[0]}): {with_check:.2f} ms with the plan check, {without:.2f} ms "
        f"without (+{100 * (with_check / without - 1):.1f}%)"
    )


def main() -> None:
    torch.set_num_threads(1)
    runner_hashing()
    for batch in (8, 32):
        for name in ("resnet", "vgg"):
            lrp_check(name, batch)


if __name__ == "__main__":
    main()
