"""Counterfactuals on real data: the bundled digits CNN and scikit-learn's breast-cancer table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastxai as fx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor]:
    pytest.importorskip("sklearn")
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, _) = load_digits()
    model = train_digits_cnn(x_train[:900], y_train[:900], epochs=3)
    return model, x_test[:8]


def test_digits_wachter_valid_and_l1_sparser_than_l2(digits) -> None:
    model, x = digits
    options = dict(bounds=(0.0, 1.0), lr=0.05, steps=60, lam_bisections=1)
    l1 = fx.wachter(model, x, distance="l1", **options)
    l2 = fx.wachter(model, x, distance="l2", **options)
    for result in (l1, l2):
        assert result.valid.float().mean() >= 0.85
        assert bool((result.counterfactuals >= 0).all() and (result.counterfactuals <= 1).all())
        with torch.no_grad():
            assert torch.equal(model(result.counterfactuals).argmax(1), result.predictions)
        assert bool((result.predictions[result.valid] != result.original[result.valid]).all())
    both = l1.valid & l2.valid
    changed = lambda r: ((r.counterfactuals - x).abs() > 1e-3).flatten(1).sum(1)[both].float().mean()  # noqa: E731
    assert changed(l1) < changed(l2) / 2


def test_digits_cem_pertinent_negatives_only_add_ink(digits) -> None:
    model, x = digits
    result = fx.cem(model, x, "pn", beta=0.1, bounds=(0.0, 1.0), lr=0.05, steps=60, search_steps=2)
    assert result.valid.float().mean() >= 0.75
    assert bool((result.counterfactuals >= x).all() and (result.counterfactuals <= 1).all())
    assert bool((result.predictions[result.valid] != result.original[result.valid]).all())


def test_breast_cancer_mlp_counterfactuals_valid_within_the_feature_ranges() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_breast_cancer()
    data = torch.tensor(bunch.data, dtype=torch.float32)
    labels = torch.tensor(bunch.target)
    data = (data - data.mean(0)) / data.std(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(data[:400]), labels[:400]).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        assert (model(data[400:]).argmax(1) == labels[400:]).float().mean() > 0.9
    low, high = data.min(0).values, data.max(0).values
    x = data[400:416]
    scale = fx.counterfactual.mad(data[:400])
    result = fx.wachter(model, x, distance="l1", scale=scale, bounds=(low, high), lr=0.05, steps=80)
    assert result.valid.float().mean() >= 0.9
    assert bool((result.counterfactuals >= low).all() and (result.counterfactuals <= high).all())
    pn = fx.cem(model, x, "pn", direction="any", bounds=(low, high), lr=0.05, steps=80, search_steps=3)
    assert pn.valid.float().mean() >= 0.9
