"""LEMNA against LIME on planted sequence scorers whose decisive positions are known.

``PYTHONPATH=. python benchmarks/lemna.py`` (CPU, 1 thread, about a minute). 64 sequences of
length 20 (values in [0.5, 1]); each scorer reads only positions 5, 6 and 7, through a sigmoid:
``sum`` of the three, ``product`` ``x5 x6 + x7``, ``and`` ``x5 x6 x7`` (an interaction). LEMNA
(defaults: 2 components, fused-lasso penalty 1e-3) and LIME (Lasso, alpha 0.01, cosine kernel)
on the same inputs with 500 samples each, and a random ranking. Reported, as in the paper's
feature deduction test: the mean drop of the score when the top-k features of each input are
nullified (set to 0), k = 1, 2, 3; and the share of inputs whose top 3 are exactly positions
5-7. Then LEMNA's time, batched against one call per input (8 of them, scaled).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

import fastxai as fx

SCORERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sum": lambda x: torch.sigmoid(4 * (x[:, 5] + x[:, 6] + x[:, 7] - 1.5)).unsqueeze(1),
    "product": lambda x: torch.sigmoid(6 * (x[:, 5] * x[:, 6] + x[:, 7] - 0.8)).unsqueeze(1),
    "and": lambda x: torch.sigmoid(8 * (x[:, 5] * x[:, 6] * x[:, 7] - 0.2)).unsqueeze(1),
}


def deduction(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ranking: torch.Tensor, k: int
) -> float:
    top = ranking.topk(k, dim=1).indices
    return float((model(x) - model(x.scatter(1, top, 0.0))).mean())


def main() -> None:
    torch.set_num_threads(1)  # small ops: a second thread only waits on a busy CPU
    x = 0.5 + 0.5 * torch.rand(64, 20, generator=torch.Generator().manual_seed(0))
    random = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    decisive = torch.tensor([5, 6, 7])
    print("| scorer | method | drop top-1 | drop top-2 | drop top-3 | top 3 = positions 5-7 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, model in SCORERS.items():
        timings = {}
        started = time.perf_counter()
        rankings = {"LEMNA": fx.lemna(model, x, 0, n_samples=500, seed=0)}
        timings["LEMNA"] = time.perf_counter() - started
        started = time.perf_counter()
        rankings["LIME"] = fx.lime(model, x, 0, n_samples=500, seed=0)
        timings["LIME"] = time.perf_counter() - started
        rankings["random"] = random
        timings["random"] = 0.0
        for method, ranking in rankings.items():
            drops = " | ".join(f"{deduction(model, x, ranking, k):.3f}" for k in (1, 2, 3))
            found = float((ranking.topk(3, dim=1).indices.sort(1).values == decisive).all(1).float().mean())
            print(f"| {name} | {method} | {drops} | {found:.2f} | {timings[method]:.2f} |")
    model = SCORERS["sum"]
    started = time.perf_counter()
    fx.lemna(model, x, 0, n_samples=500, seed=0)
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(8):
        fx.lemna(model, x[i : i + 1], 0, n_samples=500, seed=0)
    loop = (time.perf_counter() - started) * len(x) / 8
    print(f"\nLEMNA on 64 inputs (sum scorer): batched {batched:.2f} s, one call per input {loop:.2f} s "
          f"(x{loop / batched:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
