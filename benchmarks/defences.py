"""What the input-transformation defences are worth on the bundled digits, judged honestly.

``PYTHONPATH=. python benchmarks/defences.py`` (CPU, well under a minute). Trains the digits CNN
(15 epochs, seed 0), then per defence, on the 450 test images:

- clean: accuracy of the defended model;
- PGD: L-inf PGD (eps 0.1, step 0.02, 20 steps, random start, seed 0) run on the defended model
  as deployed: the naive evaluation, whose gradient the defence may mask;
- adaptive: the same PGD with BPDA (``bpda=True``: straight-through gradient of the
  transform) for deterministic defences, with EOT (``eot_samples=16``) for the randomised one;
- either: accuracy on the samples that survive both attacks (per-sample worst case);
- AUROC: the squeezing detector with the defence's transform as its squeezer (L1 distance of
  the softmax before and after), clean test images against the successful PGD examples on the
  undefended model (the attacker unaware of the detector, as Xu et al. evaluate) and against
  the successful adaptive examples (crafted through the defence).

Randomised defences are scored by their mean over 8 draws (reseeded, so the table repeats).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from torch import nn

import fastxai as fx
from fastxai.digits import load_digits, train_digits_cnn

ATTACK = {"eps": 0.1, "alpha": 0.02, "steps": 20, "seed": 0}
EOT_SAMPLES = 16
DRAWS = 8


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the fraction of draws classified correctly (one draw for a deterministic model)."""
    random = getattr(model, "random", False)
    if random:
        model.reseed(1000)  # type: ignore[operator]
    with torch.no_grad():
        hits = [(model(x).argmax(1) == y).double() for _ in range(DRAWS if random else 1)]
    return torch.stack(hits).mean(0)


def auroc_on_fooling(
    model: nn.Module,
    squeezers: list[Callable[[torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    adversarial: torch.Tensor,
    fooled: torch.Tensor,
) -> float:
    clean = fx.squeezing_scores(model, x, squeezers=squeezers)
    attacked = fx.squeezing_scores(model, adversarial[fooled], squeezers=squeezers)
    return fx.evaluation.auroc(clean, attacked) if len(attacked) else float("nan")


def main() -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    (x_train, y_train), (x, y) = load_digits()
    model = train_digits_cnn(x_train, y_train)
    print(f"digits CNN trained in {time.perf_counter() - start:.1f} s; PGD {ATTACK}")
    base_adv = fx.pgd(model, x, y, **ATTACK)
    with torch.no_grad():
        base_fooled = model(base_adv).argmax(1) != y

    defences: list[tuple[str, Callable[[bool], nn.Module]]] = [
        ("none", lambda bpda: model),
        ("bit depth 1", lambda bpda: fx.BitDepthReduction(model, 1, bpda=bpda)),
        ("bit depth 2", lambda bpda: fx.BitDepthReduction(model, 2, bpda=bpda)),
        ("bit depth 3", lambda bpda: fx.BitDepthReduction(model, 3, bpda=bpda)),
        ("median 2x2", lambda bpda: fx.MedianSmoothing(model, 2, bpda=bpda)),
        ("JPEG q75", lambda bpda: fx.JpegCompression(model, 75, bpda=bpda)),
        ("JPEG q50", lambda bpda: fx.JpegCompression(model, 50, bpda=bpda)),
        ("resize+pad 8->9", lambda bpda: fx.RandomResizePad(model, 9, seed=0)),
        ("resize+pad 8->10", lambda bpda: fx.RandomResizePad(model, 10, seed=0)),
    ]
    header = (
        "| defence | clean | PGD (naive) | adaptive PGD | either | AUROC vs PGD | AUROC vs adaptive | time |"
    )
    print(header)
    print("|" + "---|" * 8)
    for name, make in defences:
        tic = time.perf_counter()
        deployed = make(False)
        random = getattr(deployed, "random", False)
        naive_adv = fx.pgd(deployed, x, y, **ATTACK)
        if name == "none":
            adaptive_adv, how = naive_adv, ""
        elif random:
            adaptive_adv, how = fx.pgd(deployed, x, y, eot_samples=EOT_SAMPLES, **ATTACK), " (EOT)"
        else:
            adaptive_adv, how = fx.pgd(make(True), x, y, **ATTACK), " (BPDA)"
        clean = correct(deployed, x, y)
        naive, adaptive = correct(deployed, naive_adv, y), correct(deployed, adaptive_adv, y)
        if name == "none":
            detector = ("-", "-")
        else:
            squeezers = [deployed.transform]  # type: ignore[list-item]
            if random:
                deployed.reseed(2000)  # type: ignore[operator]
            adaptive_fooled = adaptive < 0.5
            detector = (
                f"{auroc_on_fooling(model, squeezers, x, base_adv, base_fooled):.3f}",
                f"{auroc_on_fooling(model, squeezers, x, adaptive_adv, adaptive_fooled):.3f}",
            )
        print(
            f"| {name} | {clean.mean():.3f} | {naive.mean():.3f} | {adaptive.mean():.3f}{how} | "
            f"{torch.minimum(naive, adaptive).mean():.3f} | {detector[0]} | {detector[1]} | "
            f"{time.perf_counter() - tic:.1f} s |"
        )
    # detectors calibrated at 5% FPR (max over squeezers; the first is the paper's MNIST set), on
    # PGD examples against the model
    for label, squeezers in (
        ("bit depth 1 + median 2x2 (Xu et al.'s MNIST set)", [
            functools.partial(fx.reduce_bit_depth, bits=1), functools.partial(fx.median_smooth, size=2)
        ]),
        ("bit depth 2", [functools.partial(fx.reduce_bit_depth, bits=2)]),
        ("bit depth 2 + JPEG q75", [
            functools.partial(fx.reduce_bit_depth, bits=2), functools.partial(fx.jpeg_compress, quality=75)
        ]),
    ):  # fmt: skip
        calibration, test = slice(0, 225), slice(225, 450)
        detector = fx.fit_squeezing_detector(model, x[calibration], squeezers=squeezers, fpr=0.05)
        flags, scores = detector.detect(base_adv[test][base_fooled[test]])
        clean_flags, clean_scores = detector.detect(x[test])
        rates = f"detection rate {flags.double().mean():.3f} on {len(scores)} successful PGD examples"
        print(
            f"detector {label}: AUROC {fx.evaluation.auroc(clean_scores, scores):.3f}; threshold at 5% FPR "
            f"on 225 calibration images: {rates}, false positive rate {clean_flags.double().mean():.3f} "
            "on the other 225 clean images"
        )
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
