"""Sizes that cannot fit, in the fragility measures, the detector, the attacks and randomised
smoothing: refused before any model call, with the argument and the estimate named. (The
attribution methods' limits are in test_resource_limits.py.) No test allocates what it refuses:
either the estimate is beyond any machine, or ``available_bytes`` is patched down."""

from __future__ import annotations

import pytest
import torch
from models import small_cnn
from torch import nn

import fastxai as fx
from fastxai import _budget
from fastxai import evaluation as ev
from fastxai.attacks._core import iterative_attack
from fastxai.evaluation import report


class Counting(nn.Module):
    """A small real CNN (10 classes) that counts its forward calls: zero calls proves nothing ran."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn(seed=0).eval()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.fixture
def model() -> Counting:
    return Counting()


X = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([1, 2])
HUGE_SAMPLES = 2**31  # below the noise counter limit (2**32): 3.0 TiB of noisy copies
SG = ev.ExplanationConfig("smoothgrad", n_samples=HUGE_SAMPLES)

HUGE = [
    ("explanation_map", lambda m: ev.explanation_map(m, X, config=SG), "n_samples"),
    (
        "interpretation_attack",
        lambda m: ev.interpretation_attack(m, X, explanation="smoothgrad", n_samples=HUGE_SAMPLES, steps=1),
        "n_samples",
    ),
    (
        "joint_attack",
        lambda m: ev.joint_attack(m, X, Y, explanation="smoothgrad", n_samples=HUGE_SAMPLES, steps=1),
        "n_samples",
    ),
    ("attribution_features", lambda m: ev.attribution_features(m, X, config=SG), "n_samples"),
    ("fit_attribution_detector", lambda m: ev.fit_attribution_detector(m, X, X, config=SG), "n_samples"),
    ("pgd", lambda m: fx.pgd(m, X, Y, eps=0.1, alpha=0.01, steps=1, restarts=10**12), "restarts"),
    (
        "mifgsm",
        lambda m: iterative_attack(
            m, X, Y, eps=0.1, alpha=0.01, steps=1, restarts=10**12, momentum_decay=1.0
        ),
        "restarts",
    ),
    (
        "robust_accuracy",
        lambda m: fx.robust_accuracy(m, (X, Y), eps=0.1, alpha=0.01, steps=1, restarts=10**12),
        "restarts",
    ),
]


@pytest.mark.parametrize(("call", "argument"), [case[1:] for case in HUGE], ids=[case[0] for case in HUGE])
def test_sizes_beyond_any_machine_refused_before_work(model: Counting, call, argument: str) -> None:
    """Before: the allocator failed on terabytes after the first model call (explanation maps,
    PGD's restarts), or, in robust_accuracy, after the clean pass of every batch."""
    value = HUGE_SAMPLES if argument == "n_samples" else 10**12
    with pytest.raises(ValueError, match=rf"{argument}={value}: .* need [\d.]+ [TP]iB .*available about"):
        call(model)
    assert model.calls == 0


def test_the_estimates_follow_the_memory_available(model: Counting, monkeypatch) -> None:
    """The estimates by hand: a SmoothGrad map holds 3 copies of n_samples x B inputs (noise,
    model batch, its gradient): 3 * 1000 * 2 * 64 * 4 B = 1.46 MiB; PGD holds 4 copies of
    restarts x B inputs: 4 * 1000 * 2 * 64 * 4 B = 1.95 MiB. With 1 MiB both are refused, and
    sizes that fit still run."""
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(ValueError, match=r"n_samples=1000: .* need 1\.5 MiB on cpu; available about 1\.0"):
        ev.explanation_map(model, X, config=ev.ExplanationConfig("smoothgrad", n_samples=1000))
    with pytest.raises(ValueError, match=r"restarts=1000: .* need 2\.0 MiB on cpu; available about 1\.0"):
        fx.pgd(model, X, Y, eps=0.1, alpha=0.01, steps=1, restarts=1000)
    # IG: 3 copies of n_steps x B inputs, 3 * 1000 * 2 * 64 * 4 B as well
    with pytest.raises(ValueError, match=r"n_steps=1000: .* need 1\.5 MiB"):
        ev.explanation_map(model, X, config=ev.ExplanationConfig("integrated_gradients", n_steps=1000))
    assert model.calls == 0
    ev.explanation_map(model, X, config=ev.ExplanationConfig("smoothgrad", n_samples=100))
    fx.pgd(model, X, Y, eps=0.1, alpha=0.01, steps=1, restarts=100)
    assert model.calls > 0


def test_detector_checks_both_sets_before_either_runs(model: Counting, monkeypatch) -> None:
    """Before: the clean set's features were computed, then the larger adversarial set failed."""
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 1 << 20)
    config = ev.ExplanationConfig("smoothgrad", n_samples=300)  # 2 rows fit (450 KiB), 8 do not
    big = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=r"n_samples=300: .* copies of 8 inputs"):
        ev.fit_attribution_detector(model, X, big, config=config)
    assert model.calls == 0


def test_fragility_gauss_legendre_cap_before_the_model_runs(model: Counting) -> None:
    """Before: the cap was reported by the quadrature after the attack's first model calls."""
    with pytest.raises(ValueError, match=r"n_steps=100000: Gauss-Legendre takes at most 16384"):
        ev.interpretation_attack(model, X, explanation="integrated_gradients", n_steps=100_000, steps=1)
    assert model.calls == 0


def test_fragility_smoothgrad_noise_counter_limit(model: Counting, monkeypatch) -> None:
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 1 << 62)
    with pytest.raises(ValueError, match=r"n_samples=8589934592: the noise generator numbers at most"):
        ev.explanation_map(model, X, config=ev.ExplanationConfig("smoothgrad", n_samples=2**33))
    assert model.calls == 0


def test_jsma_pairwise_search_refused_for_large_inputs(model: Counting, monkeypatch) -> None:
    """JSMA scores every pair of features: [B, F, F]. 4 inputs of 16 x 16 = 256 features hold
    (24 * 4 + 1) * 256**2 B = 6.1 MiB; with 1 MiB available that is refused, naming the inputs."""
    monkeypatch.setattr(_budget, "available_bytes", lambda device: 1 << 20)
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(
        ValueError, match=r"inputs=\(4, 1, 16, 16\): .* over 256 features need 6\.1 MiB .* fewer samples"
    ):
        fx.jsma(model, x, torch.tensor([1, 2, 3, 4]))
    assert model.calls == 0
    fx.jsma(model, X, torch.tensor([3, 4]), gamma=0.05)  # 64 features: fits
    assert model.calls > 0


def test_substitute_rounds_double_the_data_set(model: Counting) -> None:
    """Before: 60 rounds doubled the data set until the allocator failed, after the oracle's
    queries and the substitute's training of the first rounds."""
    substitute = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"rounds=60: the augmented data set \(2 x 2\*\*60 points\)"):
        fx.train_substitute(model, X, substitute, rounds=60)
    assert model.calls == 0
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1, got 0"):
        fx.train_substitute(model, X, substitute, rounds=1, batch_size=0)
    assert model.calls == 0


def test_smoothing_noise_counter_limit_before_the_votes(model: Counting) -> None:
    """Before: 2**32 + 1 votes were counted up to the Philox counter's limit, then failed."""
    with pytest.raises(ValueError, match=r"n=4294967297: the noise generator numbers at most 2\*\*32"):
        fx.certify.smoothing_predict(model, X, n=2**32 + 1, seed=0)
    with pytest.raises(ValueError, match=r"n0 \+ n=4294967306: the noise generator"):
        fx.certify.smoothing_certify(model, X, n0=10, n=2**32, seed=0)
    assert model.calls == 0


def test_sensitivity_seed_that_overflows_the_generator(model: Counting) -> None:
    """Before: torch's 'Overflow when unpacking long long' after the unperturbed explanations."""
    with pytest.raises(ValueError, match=r"seed must be at most 18446688733643 with n_perturb_samples=10"):
        ev.sensitivity_max(lambda x, target: fx.saliency(model, x, target), X, target=Y, seed=2**60)
    assert model.calls == 0
    largest = (2**64 - 10) // 1_000_003
    ev.sensitivity_max(lambda x, target: fx.saliency(model, x, target), X, target=Y, seed=largest)
    assert model.calls > 0


@pytest.mark.parametrize("seeds", [2.5, True, 0])
def test_faithfulness_table_random_seeds_checked(model: Counting, seeds: object) -> None:
    with pytest.raises(ValueError, match="random_seeds must be an int >= 1"):
        report.faithfulness_table(model, X, Y, {}, random_seeds=seeds)  # type: ignore[arg-type]
    assert model.calls == 0
