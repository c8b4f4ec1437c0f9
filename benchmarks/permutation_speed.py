"""Captum's ``FeaturePermutation`` and ``ShapleyValues`` (default arguments) against fastxai's
drop-in on the digits-size MLP, batch 32, one thread, median wall time:
``PYTHONPATH=. python benchmarks/permutation_speed.py``.

Captum's ``ShapleyValues`` walks ``M * M!`` steps, so it runs on 6 and 7 groups only; for 16
groups the script extrapolates Captum's time from its measured time per step."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from captum import attr as captum_attr
from torch import nn

from fastxai.compat import captum as fc


def median(function: Callable[[], object], runs: int) -> float:
    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, ours: float, theirs: float) -> None:
    print(
        f"{name}: captum {theirs * 1e3:.2f} ms, fastxai {ours * 1e3:.2f} ms, "
        f"captum/fastxai {theirs / ours:.1f}"
    )


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(32, 64), torch.randint(0, 10, (32,))
    grid = (torch.arange(8).view(8, 1) // 2 * 4 + torch.arange(8).view(1, 8) // 2).reshape(
        1, 64
    )  # 16 2x2 groups
    ours_fp, theirs_fp = fc.FeaturePermutation(model), captum_attr.FeaturePermutation(model)
    report("FeaturePermutation, 64 groups (default mask)",
           median(lambda: ours_fp.attribute(x, target=y), 20),
           median(lambda: theirs_fp.attribute(x, target=y), 20))  # fmt: skip
    report("FeaturePermutation, 16 2x2 groups",
           median(lambda: ours_fp.attribute(x, target=y, feature_mask=grid), 20),
           median(lambda: theirs_fp.attribute(x, target=y, feature_mask=grid), 20))  # fmt: skip
    ours_sv, theirs_sv = fc.ShapleyValues(model), captum_attr.ShapleyValues(model)
    per_step = 0.0
    for groups, runs in ((6, 20), (7, 3)):
        mask = (torch.arange(64) * groups // 64).view(1, 64)
        ours = median(lambda: ours_sv.attribute(x, target=y, feature_mask=mask), 20)  # noqa: B023
        theirs = median(lambda: theirs_sv.attribute(x, target=y, feature_mask=mask), runs)  # noqa: B023
        report(f"ShapleyValues, {groups} groups", ours, theirs)
        per_step = theirs / (groups * math.factorial(groups))
    ours16 = median(lambda: ours_sv.attribute(x, target=y, feature_mask=grid), 20)
    steps = 16 * math.factorial(16)
    print(
        f"ShapleyValues, 16 2x2 groups: fastxai {ours16 * 1e3:.1f} ms; Captum's {steps:.3g} steps at "
        f"{per_step * 1e6:.0f} us per step (measured at 7 groups) would take about "
        f"{steps * per_step / 3.15e7:.0f} years"
    )


if __name__ == "__main__":
    main()
