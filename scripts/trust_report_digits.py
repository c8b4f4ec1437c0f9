"""Trust figures for the bundled digits CNN: randomized-smoothing and Lipschitz certified
accuracy, fragility of saliency maps, and the attribution-based adversarial detector.

    .venv/bin/python scripts/trust_report_digits.py [--count 100] [--n 2000]

With sigma = 0.25 the largest radius n samples can certify is sigma * Phi^-1(0.001 ** (1 / n)):
0.68 for n = 2000, 0.80 for n = 10000; r = 1.0 needs n of about 250000.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastxai as fx
from fastxai.certify import certified_accuracy, lipschitz_bound, lipschitz_radius, smoothing_certify
from fastxai.digits import accuracy, digits_cnn, load_digits, train_digits_cnn
from fastxai.evaluation.detection import auroc, fit_attribution_detector
from fastxai.evaluation.fragility import (
    explanation_map,
    interpretation_attack,
    joint_attack,
    topk_intersection,
)

RADII = [0.0, 0.25, 0.5, 1.0]
SIGMA = 0.25


def train_with_noise(x: torch.Tensor, y: torch.Tensor, sigma: float, epochs: int = 15) -> nn.Module:
    """Gaussian data augmentation, as Cohen et al. train their base classifiers."""
    torch.manual_seed(0)
    model = digits_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            noisy = x[batch] + sigma * torch.randn(x[batch].shape, generator=generator)
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(noisy), y[batch]).backward()
            optimiser.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="test inputs to certify")
    parser.add_argument("--n", type=int, default=2000, help="noise samples per input for smoothing")
    args = parser.parse_args()
    count, n = args.count, args.n
    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_digits()
    model = train_digits_cnn(x_train, y_train)
    noisy_model = train_with_noise(x_train, y_train, SIGMA)
    x, y = x_test[:count], y_test[:count]
    plain_accuracy, noisy_accuracy = accuracy(model, x_test, y_test), accuracy(noisy_model, x_test, y_test)
    print(f"clean accuracy: {plain_accuracy:.3f} (noise-trained: {noisy_accuracy:.3f})")

    for name, net in (("plain", model), ("noise-trained", noisy_model)):
        pred, radius = smoothing_certify(net, x, sigma=SIGMA, n0=100, n=n, alpha=0.001, seed=0)
        figures = certified_accuracy(pred, radius, y, RADII)
        print(
            f"smoothing sigma={SIGMA} n={n}, {name} model, certified accuracy: "
            + ", ".join(f"r={r}: {value:.3f}" for r, value in figures.items())
        )

    bound = lipschitz_bound(model, (1, 8, 8))
    radius = lipschitz_radius(model, x, bound=bound)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    lipschitz_figures = certified_accuracy(
        torch.where(correct, y, -1), radius, y, [0.0, 0.01, 0.05, *RADII[1:]]
    )
    print(
        f"Lipschitz bound {bound:.4g}; median certified radius {float(radius.median()):.4g}; "
        "certified accuracy: " + ", ".join(f"r={r}: {value:.3f}" for r, value in lipschitz_figures.items())
    )

    eps, k = 0.1, 8
    subset = x[:64]
    _, report = interpretation_attack(model, subset, eps=eps, steps=30, k=k)
    noise = torch.sign(torch.randn(subset.shape, generator=torch.Generator().manual_seed(1)))
    noise_overlap = topk_intersection(
        explanation_map(model, subset), explanation_map(model, (subset + eps * noise).clamp(0, 1)), k
    )
    print(
        f"interpretation attack (saliency, L-inf eps={eps}, top-{k}): {report.summary()}; "
        f"random sign noise of the same size: top-{k} intersection {float(noise_overlap.mean()):.3f}"
    )
    _, joint = joint_attack(model, subset, y[:64], eps=eps, alpha=0.01, steps=30, lam=1.0)
    print(f"joint attack (Zhang et al., lam=1) vs plain PGD: {joint.summary()}")

    attack = {"eps": eps, "alpha": 0.02, "steps": 10}
    fit_x, fit_y = x_test[:200], y_test[:200]
    held_x, held_y = x_test[200:400], y_test[200:400]
    detector = fit_attribution_detector(model, fit_x, fx.pgd(model, fit_x, fit_y, seed=0, **attack))
    held_adv = fx.pgd(model, held_x, held_y, seed=1, **attack)
    held_auroc = auroc(detector.score(held_x), detector.score(held_adv))
    print(
        f"detector (PGD L-inf eps={eps}), held-out AUROC: {held_auroc:.3f}; "
        f"PGD accuracy on held-out: {accuracy(model, held_adv, held_y):.3f}"
    )
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
