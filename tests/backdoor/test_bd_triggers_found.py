"""Finding the trigger: Neural Cleanse's anomaly index and the SentiNet-like localisation, on a
planted 2x2 patch backdoor (target 7) of the digits CNN, and their formulas."""

from __future__ import annotations

import copy
import statistics

import pytest
import torch
from poisoned_digits import clean_model, model_state, planted
from torch import nn

import fastxai as fx
from fastxai import backdoor as bd

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cleansed():  # type: ignore[no-untyped-def]
    case = planted("patch2")
    return case, fx.neural_cleanse(case.model, case.x_test[:128], seed=0)


def test_anomaly_index_is_hampels_test() -> None:
    norms = torch.tensor([9.0, 10.0, 11.0, 12.0, 3.0, 10.5])
    median = statistics.median(norms.tolist())
    mad = statistics.median(abs(v - median) for v in norms.tolist())
    expected = [abs(v - median) / (1.4826 * mad) for v in norms.tolist()]
    torch.testing.assert_close(bd.anomaly_index(norms), torch.tensor(expected, dtype=torch.float64))
    assert bd.anomaly_index(torch.tensor([2.0, 2.0, 2.0, 1.0])).tolist() == [0.0, 0.0, 0.0, float("inf")]


def test_neural_cleanse_flags_the_backdoor_target(cleansed) -> None:  # type: ignore[no-untyped-def]
    case, found = cleansed
    assert found.classes.tolist() == list(range(10))
    assert case.target in found.flagged, (found.anomaly_index, found.l1)
    assert found.anomaly_index[case.target] > 2
    assert int(found.l1.argmin()) == case.target
    assert bool((found.success >= 0.99).all())  # every class was reached, the target most cheaply
    # the reverse-engineered mask sits mostly on the planted patch (4 of 64 pixels)
    mask = found.masks[case.target, 0]
    on_patch = float(mask[case.trigger.region[0]].sum() / mask.sum())
    assert on_patch > 0.5, on_patch
    # each trigger does what it was kept for: stamped on held-out images it sends them to its class
    held_out = case.x_test[128:192]
    stamped = (1 - found.masks[case.target]) * held_out + found.masks[case.target] * found.patterns[
        case.target
    ]
    with torch.no_grad():
        assert float((case.model(stamped).argmax(1) == case.target).float().mean()) > 0.9


def test_neural_cleanse_on_a_clean_model_leaves_that_class_alone(cleansed) -> None:  # type: ignore[no-untyped-def]
    case, poisoned_found = cleansed
    found = fx.neural_cleanse(clean_model(), case.x_test[:128], seed=0)
    assert case.target not in found.flagged
    assert found.l1[case.target] > 2 * poisoned_found.l1[case.target]


def test_neural_cleanse_is_seeded(cleansed) -> None:  # type: ignore[no-untyped-def]
    case, _ = cleansed
    again = fx.neural_cleanse(case.model, case.x_test[:32], classes=[0, 7, 8], steps=20, seed=3)
    twice = fx.neural_cleanse(case.model, case.x_test[:32], classes=[0, 7, 8], steps=20, seed=3)
    assert torch.equal(again.masks, twice.masks) and torch.equal(again.l1, twice.l1)
    assert again.masks.shape == (3, 1, 8, 8) and again.patterns.shape == (3, 1, 8, 8)


def test_localisation_finds_the_patch() -> None:
    """Input x gradient's top 4 pixels on triggered digits fall on the 2x2 patch far above the
    4 / 64 of a random choice, and pasted into clean digits they turn them into the target;
    the same region size taken from untriggered digits flips almost none."""
    case = planted("patch2")
    others = case.x_test[case.y_test != case.target]
    suspects = fx.apply_trigger(others[:48], case.trigger)
    pool = case.x_test[-64:]

    def input_x_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return fx.input_x_gradient(model, x, target)

    found = fx.trigger_localisation(case.model, suspects, pool, k=4, attribution=input_x_gradient)
    inside = float((found.regions & case.trigger.region).flatten(1).sum(1).double().mean() / 4)
    assert inside > 0.4, inside
    assert float(found.flip_rate.mean()) > 0.4
    control = fx.trigger_localisation(case.model, others[48:96], pool, k=4, attribution=input_x_gradient)
    assert float(control.flip_rate.mean()) < 0.15
    # the default explanation (saliency) also points at the patch, less sharply
    default = fx.trigger_localisation(case.model, suspects, pool, k=4)
    assert float((default.regions & case.trigger.region).flatten(1).sum(1).double().mean() / 4) > 0.25


def test_localisation_flip_rate_by_brute_force() -> None:
    case = planted("patch2")
    suspects = fx.apply_trigger(case.x_test[:5], case.trigger)
    pool = case.x_test[100:112]
    found = fx.trigger_localisation(case.model, suspects, pool, k=6, chunk_size=7)
    assert bool((found.regions.flatten(1).sum(1) == 6).all())
    saliency = fx.saliency(case.model, suspects, found.predicted)
    with torch.no_grad():
        pool_predicted = case.model(pool).argmax(1)
        for b in range(5):
            region = torch.zeros(64, dtype=torch.bool)
            region[saliency[b].flatten().topk(6).indices] = True
            assert torch.equal(found.regions[b].flatten(), region)
            pasted = torch.where(region.view(1, 1, 8, 8), suspects[b], pool)
            wanted = pool_predicted != found.predicted[b]
            hits = (case.model(pasted).argmax(1) == found.predicted[b]) & wanted
            assert float(found.flip_rate[b]) == pytest.approx(float(hits.sum()) / max(int(wanted.sum()), 1))


def test_model_left_as_found() -> None:
    case = planted("patch2")
    model = copy.deepcopy(case.model).train()
    model[6].register_forward_hook(lambda *args: None)
    model[9].bias.requires_grad_(False)
    before = model_state(model)
    x = case.x_test[:16]
    fx.neural_cleanse(model, x, classes=[0, 1, 2], steps=3)
    fx.trigger_localisation(model, x[:4], x[4:], k=3)
    assert model_state(model) == before

    def broken(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return inputs[:, 0]

    with pytest.raises(ValueError, match="attribution must return"):
        fx.trigger_localisation(model, x[:4], x[4:], attribution=broken)
    with pytest.raises(ValueError, match="classes must be in"):
        fx.neural_cleanse(model, x, classes=[0, 1, 12])
    assert model_state(model) == before


BAD = [
    (lambda m, x: fx.neural_cleanse(m, x, steps=0), ValueError, "steps"),
    (lambda m, x: fx.neural_cleanse(m, x, lr=0), ValueError, "lr"),
    (lambda m, x: fx.neural_cleanse(m, x, cost_multiplier=1.0), ValueError, "cost_multiplier"),
    (lambda m, x: fx.neural_cleanse(m, x, attack_threshold=1.2), ValueError, "attack_threshold"),
    (lambda m, x: fx.neural_cleanse(m, x, classes=[1, 2]), ValueError, "classes"),
    (lambda m, x: fx.neural_cleanse(m, x, bounds=(1, 0)), ValueError, "bounds"),
    (lambda m, x: fx.neural_cleanse(m, x * 3), ValueError, "bounds"),
    (lambda m, x: fx.neural_cleanse(m, x, seed=1.5), ValueError, "seed"),
    (lambda m, x: fx.trigger_localisation(m, x, x, k=0), ValueError, "k must"),
    (lambda m, x: fx.trigger_localisation(m, x, x, k=65), ValueError, "k must"),
    (lambda m, x: fx.trigger_localisation(m, x, x[:, :, :4]), ValueError, "clean must"),
    (lambda m, x: fx.trigger_localisation(m, x, x, attribution="saliency"), TypeError, "attribution"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_refused_before_the_model_runs(call, error, message) -> None:  # type: ignore[no-untyped-def]
    calls = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=message):
        call(model, torch.rand(6, 1, 8, 8))
    assert not calls
