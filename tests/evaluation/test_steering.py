"""The AmI-style attribute-steered detector: gradient x activation in closed form, planted
witnesses found, the steered model's score by hand, held-out PGD examples on the digits CNN,
state and bad input."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn
from trust_digits import digits_model

import fastxai as fx
from fastxai.evaluation.steering import fit_steered_detector, unit_attributions


class PooledHead(nn.Module):
    """conv -> ReLU (the layer) -> global mean -> linear: dz_c / da_{u,p} = W_cu / P."""

    def __init__(self, units: int = 6, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, units, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(units, classes)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_unit_attribution_is_weight_times_mean_activation() -> None:
    model = PooledHead().double()
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    classes = torch.tensor([0, 1, 2, 1, 0])
    with fx._model.preserved_state(model):
        attributions = unit_attributions(model, model.act, x, classes)
    with torch.no_grad():
        pooled = model.act(model.conv(x)).mean(dim=(2, 3))
    torch.testing.assert_close(attributions, model.head.weight[classes] * pooled, rtol=1e-12, atol=1e-12)


class Planted(nn.Module):
    """Class c reads only units 2c and 2c + 1 (weight 1): those are its witnesses."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.units = nn.Identity()
        self.head = nn.Linear(2 * classes, classes, bias=False)
        with torch.no_grad():
            self.head.weight.zero_()
            for c in range(classes):
                self.head.weight[c, 2 * c : 2 * c + 2] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(x))


def test_planted_witnesses_found_and_steered_score_by_hand() -> None:
    model = Planted()
    x = torch.rand(40, 8, generator=torch.Generator().manual_seed(0)) + 0.1
    labels = torch.arange(40) % 4
    detector = fit_steered_detector(
        model, x, labels, layer="units", witnesses=0.25, strengthen=2.0, weaken=0.3
    )
    expected = torch.zeros(4, 8, dtype=torch.bool)
    for c in range(4):
        expected[c, 2 * c : 2 * c + 2] = True
    assert torch.equal(detector.witnesses, expected)
    probe = torch.rand(6, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(probe)
        scale = torch.where(expected[logits.argmax(1)], 2.0, 0.3)
        steered = model.head(probe * scale)
    by_hand = (logits.double().softmax(1) - steered.double().softmax(1)).abs().sum(1)
    torch.testing.assert_close(detector.scores(probe), by_hand, rtol=1e-6, atol=1e-7)
    neutral = fit_steered_detector(model, x, labels, layer="units", strengthen=1.0, weaken=1.0)
    assert not bool(neutral.scores(probe).any())  # an unsteered model agrees with itself


def test_steered_detector_separates_pgd_examples_on_held_out_digits() -> None:
    model, x_test, y_test = digits_model()
    before = model_state(model)
    detector = fit_steered_detector(model, x_test[:150], y_test[:150], layer="6")
    held_x, held_y = x_test[150:300], y_test[150:300]
    adversarial = fx.pgd(model, held_x, held_y, eps=0.1, alpha=0.02, steps=10, seed=1)
    with torch.no_grad():
        fooled = model(adversarial).argmax(1) != held_y
    score = fx.evaluation.auroc(detector.scores(held_x), detector.scores(adversarial[fooled]))
    assert score > 0.7, score
    assert_same_state(before, model_state(model))
    torch.testing.assert_close(detector.scores(held_x[:7], chunk_size=3), detector.scores(held_x[:7]))


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"layer": "nope"}, ValueError, "layer 'nope' is not a submodule"),
        ({"layer": nn.ReLU()}, ValueError, "not a submodule"),
        ({"witnesses": 0.0}, ValueError, r"witnesses must be a fraction in \(0, 1\]"),
        ({"witnesses": 1.5}, ValueError, "witnesses"),
        ({"strengthen": -1.0}, ValueError, "strengthen must be a finite number >= 0"),
        ({"weaken": float("nan")}, ValueError, "weaken"),
        ({"labels": torch.tensor([0, 1])}, ValueError, r"labels must be a tensor of class indices \[6\]"),
        ({"labels": torch.zeros(6)}, TypeError, "labels must be integer class indices|integer"),
        ({"inputs": torch.zeros(6, 1, 4, 4).long()}, TypeError, "inputs must be a floating-point"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_input_refused_before_the_model_runs(change: dict, error: type, message: str) -> None:
    model = PooledHead()
    arguments = {"inputs": torch.rand(6, 1, 4, 4), "labels": torch.tensor([0, 1, 2, 0, 1, 2]), "layer": "act"}
    arguments.update(change)
    with pytest.raises(error, match=message):
        fit_steered_detector(model, arguments.pop("inputs"), arguments.pop("labels"), **arguments)
    assert model.calls == 0


def test_labels_out_of_range_or_missing_a_class() -> None:
    model = PooledHead().train()
    before = model_state(model)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        fit_steered_detector(model, torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 5]), layer="act")
    with pytest.raises(ValueError, match=r"missing \[2\]"):
        fit_steered_detector(model, torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 1]), layer="act")
    assert_same_state(before, model_state(model))
