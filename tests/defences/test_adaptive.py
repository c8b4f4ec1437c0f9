"""The honest evaluation: BPDA's gradient, EOT's expectation, adaptive PGD beating naive PGD on a
squeezed digits CNN, and the squeezing detector's threshold and scores."""

from __future__ import annotations

import functools

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

import fastxai as fx
from fastxai.attacks._core import expected_gradient
from fastxai.defences.randomisation import draw_placements, resize_pad

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    return train_digits_cnn(x_train, y_train, epochs=5), x_test, y_test


def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    return _digits()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
    ).eval()


@pytest.mark.parametrize(
    "make", [lambda m, b: fx.BitDepthReduction(m, 2, bpda=b), lambda m, b: fx.JpegCompression(m, 60, bpda=b)]
)
def test_bpda_gradient_is_the_model_gradient_at_the_transformed_point(make) -> None:  # type: ignore[no-untyped-def]
    model = _cnn()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    adaptive, naive = make(model, True), make(model, False)
    squeezed = adaptive.transform(x).requires_grad_(True)
    (expected,) = torch.autograd.grad(model(squeezed)[:, 1].sum(), squeezed)
    point = x.clone().requires_grad_(True)
    out = adaptive(point)
    assert torch.equal(out, model(squeezed).detach())  # the forward pass is the defended one
    (grad,) = torch.autograd.grad(out[:, 1].sum(), point)
    assert torch.equal(grad, expected)
    point = x.clone().requires_grad_(True)
    (masked,) = torch.autograd.grad(naive(point)[:, 1].sum(), point)
    assert not bool(masked.any())  # rounding: the naive gradient is zero, the defence "holds"


def test_eot_of_one_and_of_many_draws_of_a_deterministic_defence_is_plain_pgd() -> None:
    model = _cnn()
    defended = fx.BitDepthReduction(model, 3, bpda=True)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    options = {"eps": 0.2, "alpha": 0.05, "steps": 5, "seed": 3}
    plain = fx.pgd(defended, x, **options)
    assert torch.equal(fx.pgd(defended, x, eot_samples=1, **options), plain)
    # the mean of identical gradients has their sign: the L-inf steps are the same
    assert torch.equal(fx.pgd(defended, x, eot_samples=3, **options), plain)


def test_eot_gradient_is_the_mean_over_the_draws() -> None:
    model = _cnn()
    defended = fx.RandomResizePad(model, 11, seed=5)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3])
    samples = 5

    def value(logits: torch.Tensor, repeats: int) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, labels.repeat(repeats), reduction="none")

    point = x.clone().requires_grad_(True)
    logits, values, grad = expected_gradient(defended, point, samples, value)
    # the same draws, replayed copy by copy: one gradient per draw, then their mean
    defended.reseed()
    growth, top, left = draw_placements(samples * 4, 8, 8, 11, defended.generator)
    grads, all_logits, all_values = [], [], []
    for copy in range(samples):
        rows = slice(copy * 4, copy * 4 + 4)
        leaf = x.clone().requires_grad_(True)
        out = model(resize_pad(leaf, growth[rows], top[rows], left[rows], 11))
        loss = nn.functional.cross_entropy(out, labels, reduction="none")
        grads.append(torch.autograd.grad(loss.sum(), leaf)[0])
        all_logits.append(out.detach())
        all_values.append(loss.detach())
    torch.testing.assert_close(grad, torch.stack(grads).mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits, torch.stack(all_logits).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, torch.stack(all_values).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(grads[0], grads[1])  # the draws do differ


def test_adaptive_pgd_beats_naive_pgd_on_a_squeezed_digits_cnn() -> None:
    model, x_test, y_test = digits()
    x, y = x_test[:120], y_test[:120]
    before = model_state(model)
    options = {"eps": 0.1, "alpha": 0.02, "steps": 10, "seed": 0}
    for make in (
        lambda b: fx.BitDepthReduction(model, 2, bpda=b),
        lambda b: fx.JpegCompression(model, 75, bpda=b),
    ):
        deployed = make(False)
        naive = _accuracy(deployed, fx.pgd(deployed, x, y, **options), y)
        adaptive = _accuracy(deployed, fx.pgd(make(True), x, y, **options), y)
        assert adaptive < naive - 0.2, (naive, adaptive)
    assert_same_state(before, model_state(model))


def test_eot_pgd_at_least_as_strong_on_randomised_resizing() -> None:
    model, x_test, y_test = digits()
    x, y = x_test[:60], y_test[:60]
    options = {"eps": 0.05, "alpha": 0.01, "steps": 8, "seed": 0}
    defended = fx.RandomResizePad(model, 9, seed=0)
    naive_adv = fx.pgd(defended, x, y, **options)
    eot_adv = fx.pgd(defended, x, y, eot_samples=8, **options)

    def expected_accuracy(points: torch.Tensor) -> float:
        # accuracy averaged over 8 fresh draws of the defence: the quantity EOT attacks
        defended.reseed(100)
        return sum(_accuracy(defended, points, y) for _ in range(8)) / 8

    assert expected_accuracy(eot_adv) <= expected_accuracy(naive_adv)


def test_squeezing_detector_threshold_and_scores() -> None:
    model, x_test, y_test = digits()
    before = model_state(model)
    clean, held, held_y = x_test[:150], x_test[150:250], y_test[150:250]
    squeezers = [functools.partial(fx.reduce_bit_depth, bits=2), functools.partial(fx.median_smooth, size=2)]
    scores = fx.squeezing_scores(model, clean, squeezers=squeezers)
    # the score by hand: the larger L1 distance of the two squeezed predictions
    with torch.no_grad():
        p = model(clean).double().softmax(1)
        by_hand = torch.stack(
            [(p - model(s(clean)).double().softmax(1)).abs().sum(1) for s in squeezers]
        ).amax(0)
    torch.testing.assert_close(scores, by_hand, rtol=1e-12, atol=1e-12)
    for fpr in (0.0, 0.01, 0.05, 0.2):
        detector = fx.fit_squeezing_detector(model, clean, squeezers=squeezers, fpr=fpr)
        flagged = int((scores > detector.threshold).sum())
        assert flagged <= int(fpr * len(clean))  # the false positive rate on the calibration set
        assert detector.calibration_fpr == flagged / len(clean) <= fpr
        lower = scores[scores < detector.threshold]
        if len(lower):  # and the threshold is the lowest that achieves it
            assert int((scores > lower.max()).sum()) > int(fpr * len(clean))
    detector = fx.fit_squeezing_detector(model, clean, squeezers=squeezers[:1], fpr=0.05)
    adversarial = fx.pgd(model, held, held_y, eps=0.1, alpha=0.02, steps=10, seed=0)
    flags, adv_scores = detector.detect(adversarial)
    assert flags.dtype == torch.bool and torch.equal(flags, adv_scores > detector.threshold)
    assert fx.evaluation.auroc(detector.scores(held), adv_scores) > 0.8
    assert_same_state(before, model_state(model))
