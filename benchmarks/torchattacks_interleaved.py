"""The torchattacks drop-in against torchattacks, interleaved in one process: one thread, CPU
time of the process, rounds alternating the two classes (the order reversed every round), each
turn a block of calls (as many as fill about 0.2 s, at least one):
``OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/torchattacks_interleaved.py [--rounds N]
[--classes NAME ...] [--batch B]``.

Classes, arguments, model (the trained digits CNN), images and seeds as in
``benchmarks/test_torchattacks_compat.py``: every call seeds torch's, numpy's and random's
global generators alike, so both sides do the same work. Reported per class: the median of each
library's per-call time, and the paired ratio (torchattacks' block over fastxai's next to it in
the same round; > 1: fastxai faster) as its median and interquartile range over the rounds."""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from compat_interleaved import interleaved
from test_torchattacks_compat import BATCH, CASES, attack_calls, digits_batch

ROUNDS, WARMUP, BLOCK_SECONDS = 30, 2, 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds per class")
    parser.add_argument("--classes", nargs="+", default=None, help="only these classes (default: all)")
    parser.add_argument("--batch", type=int, default=BATCH, help="digits test images per call")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    digits_batch(args.batch)
    for name in CASES:
        if args.classes is not None and name not in args.classes:
            continue
        methods = attack_calls(name, args.batch)
        start = time.process_time()
        methods[1]()
        calls = max(1, round(BLOCK_SECONDS / (time.process_time() - start)))
        ours, theirs, (low, middle, high) = interleaved(methods, calls, args.rounds, WARMUP)
        print(
            f"{name:9s} batch {args.batch} x{calls:<3d} fastxai {ours * 1e3:8.2f} ms  "
            f"torchattacks {theirs * 1e3:8.2f} ms  torchattacks / fastxai paired median "
            f"{middle:.3f} (IQR {low:.3f}-{high:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
