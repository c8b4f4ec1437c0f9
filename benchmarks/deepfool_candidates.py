"""DeepFool with every class against the top-``candidates`` classes on a 1000-class timm model
(random weights, nothing downloaded): time and the adversarial examples' L2 distances.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/deepfool_candidates.py [--model resnet18]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import real_models  # makes the torchvision import (timm needs it) work on a CPU machine

import fastxai as fx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    real_models._import_torchvision()
    import timm

    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    x = torch.rand(2, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    for candidates in (10, None):
        start = time.perf_counter()
        adversarial = fx.deepfool(model, x, y, steps=args.steps, candidates=candidates)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            fooled = (model(adversarial).argmax(1) != y).tolist()
        distances = [round(d, 4) for d in (adversarial - x).flatten(1).norm(dim=1).tolist()]
        print(f"{args.model} candidates={candidates}: {seconds:.1f} s, fooled {fooled}, L2 {distances}")


if __name__ == "__main__":
    main()
