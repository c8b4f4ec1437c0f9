"""The attribution-statistics detector: AUROC against scikit-learn, held-out detection of PGD
examples on the digits CNN, state and bad input."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from trust_digits import digits_model

import fastxai as fx
from fastxai.evaluation.detection import FEATURES, attribution_features, auroc, fit_attribution_detector


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn gives the reference AUROC")
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 6, (40,), generator=generator).double()
    adversarial = torch.randint(2, 9, (25,), generator=generator).double()
    labels = [0] * 40 + [1] * 25
    expected = metrics.roc_auc_score(labels, torch.cat([clean, adversarial]).numpy())
    assert auroc(clean, adversarial) == pytest.approx(expected, abs=1e-12)
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auroc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5


def test_detector_separates_pgd_examples_on_held_out_digits() -> None:
    model, x_test, y_test = digits_model()
    before = model_state(model)
    fit_x, fit_y = x_test[:150], y_test[:150]
    held_x, held_y = x_test[150:300], y_test[150:300]
    attack = {"eps": 0.1, "alpha": 0.02, "steps": 10}
    detector = fit_attribution_detector(model, fit_x, fx.pgd(model, fit_x, fit_y, seed=0, **attack))
    held_adv = fx.pgd(model, held_x, held_y, seed=1, **attack)
    score = auroc(detector.score(held_x), detector.score(held_adv))
    assert score > 0.75, score
    assert_same_state(before, model_state(model))
    features = attribution_features(model, held_x[:5])
    assert features.shape == (5, len(FEATURES)) and bool(torch.isfinite(features).all())
    torch.testing.assert_close(
        attribution_features(model, held_x[:5], chunk_size=2), features, rtol=1e-4, atol=1e-5
    )


def test_bad_input() -> None:
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x.flatten(1)[:, :3]

    x = torch.rand(4, 1, 4, 4)
    with pytest.raises(ValueError, match="adversarial inputs must have the shape"):
        fit_attribution_detector(model, x, torch.rand(4, 1, 4, 5))
    with pytest.raises(ValueError, match="at least 2"):
        fit_attribution_detector(model, x[:1], x)
    with pytest.raises(ValueError, match="l2"):
        fit_attribution_detector(model, x, x, l2=-1.0)
    with pytest.raises(TypeError, match="inputs"):
        fit_attribution_detector(model, x, x.long())
    assert not calls
    with pytest.raises(ValueError, match="scores_clean"):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="scores_adversarial"):
        auroc(torch.tensor([1.0]), torch.tensor([[1.0]]))
