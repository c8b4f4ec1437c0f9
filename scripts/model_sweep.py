"""Run the main gradient methods on every torchvision classification model (random weights,
nothing downloaded) and print one line per model: ``ok``, ``NONFINITE`` or the error.

    PYTHONPATH=. python scripts/model_sweep.py [--methods saliency lrp ...] [--models resnet18 ...]

64x64 inputs (224 for the ViTs, Swins and Inceptions, whose patching or pooling needs it); the
largest models (``SKIPPED``) are left out to keep a run to a few minutes on a CPU. A refusal is
printed, not raised: the sweep shows which architectures each method takes.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import real_models  # makes the torchvision import work on a CPU machine

import fastxai as fx

METHODS: dict[str, Callable[[torch.nn.Module, torch.Tensor, int], torch.Tensor]] = {
    "saliency": lambda model, x, target: fx.saliency(model, x, target),
    "lrp": lambda model, x, target: fx.lrp(model, x, target),
    "deeplift": lambda model, x, target: fx.deeplift(model, x, target),
    "guided": lambda model, x, target: fx.guided_backprop(model, x, target),
}
SKIPPED = {
    "vit_h_14", "vit_l_16", "vit_l_32", "vit_b_32", "regnet_y_128gf", "regnet_y_32gf",
    "regnet_y_16gf", "efficientnet_b6", "efficientnet_b7", "swin_b", "swin_v2_b", "maxvit_t",
    "convnext_base", "convnext_large",
}  # fmt: skip
LARGE_INPUT = ("vit", "swin", "inception", "googlenet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--models", nargs="+", default=None, help="torchvision model names")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torchvision = real_models._import_torchvision()
    models = torchvision.models
    names = args.models or [name for name in models.list_models(module=models) if name not in SKIPPED]
    for name in names:
        size = 224 if any(key in name for key in LARGE_INPUT) else 64
        inception = name in ("inception_v3", "googlenet")
        options = {"aux_logits": False, "init_weights": False} if inception else {}
        model = models.get_model(name, weights=None, **options).eval()
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        start, results = time.perf_counter(), []
        for method in args.methods:
            try:
                attribution = METHODS[method](model, x, 0)
                results.append(f"{method}:{'ok' if bool(torch.isfinite(attribution).all()) else 'NONFINITE'}")
            except Exception as error:  # the sweep reports refusals, it does not stop at them
                results.append(f"{method}:FAIL[{type(error).__name__}: {str(error)[:120]}]")
        print(f"{name} {size} {time.perf_counter() - start:.1f}s {' '.join(results)}", flush=True)


if __name__ == "__main__":
    main()
