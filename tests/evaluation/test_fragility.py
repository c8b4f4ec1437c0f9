"""Fragility of explanations: helpers against scipy, the differentiable explanations against
fastxai's own attributions, and both attacks on the bundled digits CNN."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn
from trust_digits import digits_model

import fastxai as fx
from fastxai.evaluation.fragility import (
    ExplanationConfig,
    _softplus_relus,
    explanation_map,
    interpretation_attack,
    joint_attack,
    rank_correlation,
    topk_intersection,
)

EPS = 0.1


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, x_test, y_test = digits_model()
    return model, x_test[:24], y_test[:24]


def test_topk_intersection_by_hand() -> None:
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    b = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    assert topk_intersection(a, b, 2).tolist() == [0.5, 1.0]
    assert topk_intersection(a, b, 5).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="k must be an int in"):
        topk_intersection(a, b, 6)
    with pytest.raises(ValueError, match="same shape"):
        topk_intersection(a, b[:, :4], 2)


def test_rank_correlation_matches_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy gives the reference Spearman correlation")
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 3, 4), generator=generator).float()  # many ties
    b = a + torch.randint(0, 3, (5, 3, 4), generator=generator).float()
    ours = rank_correlation(a, b)
    for row in range(5):
        expected = stats.spearmanr(a[row].flatten().numpy(), b[row].flatten().numpy()).statistic
        assert float(ours[row]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("explanation", ["saliency", "smoothgrad", "integrated_gradients"])
def test_explanations_match_fastxai_attributions(explanation: str) -> None:
    model = small_cnn(seed=1, classes=3, activation=nn.Tanh, pool=nn.AvgPool2d).double().eval()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    config = ExplanationConfig(explanation, n_samples=5, stdevs=0.2, n_steps=6, seed=3)
    ours = explanation_map(model, x, target, config=config)
    if explanation == "saliency":
        reference = fx.saliency(model, x, target=target)
    elif explanation == "smoothgrad":
        reference = fx.smoothgrad(model, x, target=target, n_samples=5, stdevs=0.2, seed=3)
    else:
        reference = fx.integrated_gradients(model, x, 0.0, target, n_steps=6, method="gausslegendre")
    torch.testing.assert_close(ours, reference.abs().sum(1).float(), rtol=1e-5, atol=1e-7)


def test_softplus_surrogate_hooks_are_undone_and_keep_inplace_inputs() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
    x = torch.randn(4, 3)
    before = model_state(model)
    with _softplus_relus(model, 5.0):
        smooth = model(x)
    expected = model[2](nn.functional.softplus(model[0](x), beta=5.0))
    torch.testing.assert_close(smooth, expected)
    assert_same_state(before, model_state(model))
    torch.testing.assert_close(model(x), model[2](torch.relu(model[0](x))))


@pytest.mark.parametrize("objective", ["topk", "center_of_mass"])
def test_interpretation_attack_keeps_labels_and_moves_saliency(digits, objective: str) -> None:
    model, x, _ = digits
    before_state = model_state(model)
    x_adv, report = interpretation_attack(model, x, eps=EPS, steps=15, k=8, objective=objective)
    assert_same_state(before_state, model_state(model))
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1), model(x).argmax(1))
    assert report.summary()["label_kept_rate"] == 1.0
    # Random sign noise of the same size moves the map much less.
    noise = torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))
    x_noise = (x + EPS * noise).clamp(0, 1)
    noise_overlap = topk_intersection(explanation_map(model, x), explanation_map(model, x_noise), 8).mean()
    if objective == "topk":
        assert float(report.topk_intersection.mean()) < float(noise_overlap) - 0.15
    else:
        noise_map = explanation_map(model, x_noise)
        from fastxai.evaluation.fragility import _center_of_mass

        noise_shift = (_center_of_mass(noise_map) - _center_of_mass(explanation_map(model, x))).norm(dim=1)
        assert float(report.center_shift.mean()) > 1.5 * float(noise_shift.mean())


def test_interpretation_attack_with_smoothgrad(digits) -> None:
    model, x, _ = digits
    _, report = interpretation_attack(
        model, x[:8], explanation="smoothgrad", eps=EPS, steps=8, k=8, n_samples=4, seed=1
    )
    assert report.summary()["label_kept_rate"] == 1.0
    assert float(report.topk_intersection.mean()) < 0.7


def test_joint_attack_keeps_explanations_closer_than_pgd(digits) -> None:
    model, x, y = digits
    before_state = model_state(model)
    x_adv, report = joint_attack(model, x, y, eps=EPS, alpha=0.01, steps=15, lam=1.0)
    assert_same_state(before_state, model_state(model))
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6
    summary = report.summary()
    assert summary["success_rate"] >= 0.3
    assert report.pgd_explanation_distance is not None
    fooled = report.success
    assert float(report.explanation_distance[fooled].mean()) < float(report.pgd_explanation_distance.mean())
    assert summary["explanation_distance"] < summary["pgd_explanation_distance"]


def test_bad_input_is_rejected_before_the_model_runs() -> None:
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x.flatten(1)[:, :3]

    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="explanation"):
        interpretation_attack(model, x, explanation="lime")
    with pytest.raises(ValueError, match="objective"):
        interpretation_attack(model, x, objective="bottomk")
    with pytest.raises(ValueError, match="eps"):
        interpretation_attack(model, x, eps=-1.0)
    with pytest.raises(ValueError, match="steps"):
        joint_attack(model, x, steps=0)
    with pytest.raises(ValueError, match="lam"):
        joint_attack(model, x, lam=-1.0)
    with pytest.raises(ValueError, match="bounds"):
        interpretation_attack(model, x + 2.0)
    assert not calls
