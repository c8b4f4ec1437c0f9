"""Detecting adversarial digits: the attribution-statistics detector, the AmI-style
attribute-steered detector and the feature-squeezing detector, on PGD, CW and JSMA examples.

``PYTHONPATH=. python benchmarks/detectors.py`` (CPU, about a minute). Trains the digits CNN (15
epochs, seed 0) and splits the 450 test images in two halves: the detectors are fitted on the
first (the attribution detector on its clean images and PGD examples of them, being
supervised; the steered and squeezing detectors on clean images only), and scored on the second
half's clean images against the attacks' successful examples of it:

- PGD: L-inf, eps 0.1, step 0.02, 20 steps, random start;
- CW: L2, c = 1, 100 Adam steps, 5 binary-search steps;
- JSMA: target (y + 1) mod 10, theta 1, gamma 0.25 (at most 16 of the 64 pixels).

AUROC (adversarial positive) per detector and attack; "random witnesses" is the steered
detector with each class's witnesses replaced by as many units drawn at random (seed 0), to see
whether the attribution that picks them matters; "confidence" is the baseline score
``1 - max softmax`` (Hendrycks and Gimpel 2017), which needs no detector at all.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import torch

import fastxai as fx
from fastxai.digits import load_digits, train_digits_cnn


def main() -> None:
    torch.set_num_threads(2)
    start = time.perf_counter()
    (x_train, y_train), (x, y) = load_digits()
    model = train_digits_cnn(x_train, y_train)
    fit, held = slice(0, 225), slice(225, 450)
    fit_x, fit_y, held_x, held_y = x[fit], y[fit], x[held], y[held]
    pgd = {"eps": 0.1, "alpha": 0.02, "steps": 20}
    attribution = fx.evaluation.fit_attribution_detector(
        model, fit_x, fx.pgd(model, fit_x, fit_y, seed=0, **pgd)
    )
    steered = fx.evaluation.fit_steered_detector(model, fit_x, fit_y, layer="6")
    # the same number of witnesses per class, picked at random: does the attribution matter?
    generator = torch.Generator().manual_seed(0)
    shuffled = torch.stack([row[torch.randperm(len(row), generator=generator)] for row in steered.witnesses])
    random_steered = dataclasses.replace(steered, witnesses=shuffled)
    squeezing = fx.fit_squeezing_detector(
        model, fit_x, squeezers=[functools.partial(fx.reduce_bit_depth, bits=2)], fpr=0.05
    )

    def confidence(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return 1 - model(points).double().softmax(1).amax(1)

    detectors = {
        "attribution (supervised, PGD)": attribution.score,
        "AmI-style steered": steered.scores,
        "steered, random witnesses": random_steered.scores,
        "squeezing (bit depth 2)": squeezing.scores,
        "confidence baseline": confidence,
    }
    attacks = {
        "PGD": lambda: fx.pgd(model, held_x, held_y, seed=1, **pgd),
        "CW-L2": lambda: fx.cw_l2(model, held_x, held_y, c=1.0, steps=100, binary_search_steps=5),
        "JSMA": lambda: fx.jsma(model, held_x, (held_y + 1) % 10, theta=1.0, gamma=0.25),
    }
    print(f"digits CNN trained and detectors fitted in {time.perf_counter() - start:.1f} s")
    clean_scores = {name: score(held_x) for name, score in detectors.items()}
    rows = []
    for attack, run in attacks.items():
        tic = time.perf_counter()
        adversarial = run()
        with torch.no_grad():
            fooled = model(adversarial).argmax(1) != held_y
        distance = (adversarial - held_x)[fooled].flatten(1)
        cells = [
            f"{fx.evaluation.auroc(clean_scores[name], score(adversarial[fooled])):.3f}"
            for name, score in detectors.items()
        ]
        rows.append(
            f"| {attack} | {float(fooled.double().mean()):.3f} | {float(distance.norm(dim=1).mean()):.2f} | "
            + " | ".join(cells)
            + f" | {time.perf_counter() - tic:.1f} s |"
        )
    print("| attack | success | mean L2 | " + " | ".join(detectors) + " | time |")
    print("|" + "---|" * (len(detectors) + 4))
    print("\n".join(rows))
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
