"""MI-Face model inversion: the box-corner optimum of a linear model, the output-only gradient
estimate, and reconstructions of the digits classes that a separately trained model recognises."""

from __future__ import annotations

import copy

import pytest
import torch
from poisoned_digits import clean_model, digits, model_state
from torch import nn

import fastxai as fx
from fastxai.privacy import inversion, inversion_scores, model_inversion

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 3))


def test_linear_model_inverts_to_the_box_corner() -> None:
    """With no regulariser, p_t of a linear softmax model grows along ``w_t - sum_j p_j w_j``; in
    the box [0, 1] the cost keeps falling towards the corner picked by the sign of that
    direction at the corner itself, found here by brute force over the 64 corners."""
    model = _linear()
    corners = torch.tensor([[(i >> j) & 1 for j in range(6)] for i in range(64)], dtype=torch.float32)
    with torch.no_grad():
        best = corners[model(corners.view(64, 1, 6)).log_softmax(1)[:, 2].argmax()]
    result = model_inversion(model, 2, input_shape=(1, 6), steps=200, lr=0.05, tv=0.0, l2=0.0, restarts=2)
    torch.testing.assert_close(result.inputs[:, 0], best.expand(2, 6), rtol=0, atol=1e-3)
    with torch.no_grad():
        top = model(corners.view(64, 1, 6)).softmax(1)[:, 2].max()
    assert result.probability.shape == (2,)
    assert float(result.probability.min()) == pytest.approx(float(top), rel=1e-3)


def test_gradient_estimate_converges_to_the_gradient() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    x = torch.rand(3, 1, 16, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 3])
    with torch.enable_grad():
        leaf = x.clone().requires_grad_(True)
        (exact,) = torch.autograd.grad(
            inversion._model_term(model(leaf), target, "log_probability").sum(), leaf
        )
    estimate = inversion._estimated_gradient(model, x, target, "log_probability", 1e-3, 4000, 0, 0, 4096)
    cosine = torch.nn.functional.cosine_similarity(estimate.flatten(1), exact.flatten(1))
    assert bool((cosine > 0.9).all()), cosine
    torch.testing.assert_close(estimate.norm(dim=(1, 2)), exact.norm(dim=(1, 2)), rtol=0.15, atol=0)


def test_digits_reconstructions_are_recognised_by_another_model() -> None:
    """MI-Face on a digits CNN (seed 0), judged by one trained with seed 1: far above the 10%
    a blank image or a guess gets, and closer to the target's class mean than to the others."""
    (x_train, y_train), _ = digits()
    model, judge = clean_model(0), clean_model(1)
    classes = list(range(10))
    result = model_inversion(model, classes, input_shape=(1, 8, 8), steps=300, restarts=2, seed=0)
    assert result.inputs.shape == (10, 2, 1, 8, 8)
    assert float(result.probability.mean()) > 0.9
    scores = inversion_scores(result.inputs, classes, judge=judge, reference=(x_train, y_train))
    assert scores.recognition >= 0.3, scores
    assert scores.nearest_mean >= 0.2 and scores.distance < scores.other_distance, scores
    blank = inversion_scores(torch.zeros(10, 2, 1, 8, 8), classes, judge=judge, reference=(x_train, y_train))
    assert blank.recognition <= 0.1 and blank.nearest_mean == pytest.approx(0.1)
    again = model_inversion(model, classes[:2], input_shape=(1, 8, 8), steps=5, restarts=2, seed=0)
    twice = model_inversion(model, classes[:2], input_shape=(1, 8, 8), steps=5, restarts=2, seed=0)
    assert torch.equal(again.inputs, twice.inputs)


def test_outputs_only_inversion_is_recognised() -> None:
    (x_train, y_train), _ = digits()
    model, judge = clean_model(0), clean_model(1)
    classes = list(range(10))
    result = model_inversion(
        model, classes, input_shape=(1, 8, 8), steps=150, gradient="estimate", n_queries=8, sigma=0.1, seed=0
    )
    assert result.queries == 151 * 17
    scores = inversion_scores(result.inputs, classes, judge=judge, reference=(x_train, y_train))
    assert scores.recognition >= 0.3, scores


def test_inversion_scores_by_hand() -> None:
    x = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]]).view(4, 1, 2)
    y = torch.tensor([0, 0, 1, 1])  # class means (0, 1) and (4, 1)

    class Constant(nn.Module):
        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.0, 1.0]]).expand(inputs.shape[0], 2)

    rec = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]])  # [2 targets, 1 restart, 1, 2]
    scores = inversion_scores(rec, [0, 1], judge=Constant(), reference=(x, y))
    assert scores.recognition == 0.5  # the judge always says 1
    assert scores.nearest_mean == 0.5  # (1, 1) is nearer class 0's mean
    assert scores.distance == pytest.approx((0 + 3) / 2)
    assert scores.other_distance == pytest.approx((4 + 1) / 2)


def test_model_left_as_found() -> None:
    model = copy.deepcopy(_linear()).train()
    model[1].register_forward_hook(lambda *args: None)
    model[1].bias.requires_grad_(False)
    before = model_state(model)
    model_inversion(model, [0, 1], input_shape=(1, 6), steps=3)
    model_inversion(model, 0, input_shape=(1, 6), steps=2, gradient="estimate", n_queries=2)
    inversion_scores(
        torch.rand(2, 1, 6), 1, judge=model, reference=(torch.rand(4, 1, 6), torch.tensor([0, 1, 1, 2]))
    )
    assert model_state(model) == before
    with pytest.raises(ValueError, match="target must be in"):
        model_inversion(model, [0, 3], input_shape=(1, 6), steps=3)
    assert model_state(model) == before


BAD = [
    (lambda m: model_inversion(m, "0", input_shape=(1, 6)), TypeError, "target"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 0)), ValueError, "input_shape"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), steps=0), ValueError, "steps"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), lr=-1), ValueError, "lr"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), loss="ce"), ValueError, "loss"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), tv=-1), ValueError, "tv"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), l2=float("inf")), ValueError, "l2"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), bounds=(1, 1)), ValueError, "bounds"),
    (lambda m: model_inversion(m, 0, input_shape=(6,), blur_every=2), ValueError, "blur_every"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), restarts=0), ValueError, "restarts"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), gradient="zoo"), ValueError, "gradient"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), n_queries=0), ValueError, "n_queries"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), sigma=0), ValueError, "sigma"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), seed=-2), ValueError, "seed"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), prior=torch.zeros(6)), ValueError, "prior"),
    (lambda m: model_inversion(m, 0, input_shape=(1, 6), chunk_size=0), ValueError, "chunk_size"),
    (lambda m: model_inversion("m", 0, input_shape=(1, 6)), TypeError, "model"),
    (
        lambda m: inversion_scores(
            torch.rand(2, 1, 6), [0, 1], judge=m, reference=(torch.rand(4, 1, 6), torch.tensor([0, 1, 1, 2]))
        ),
        ValueError,
        "reconstructions",
    ),
    (
        lambda m: inversion_scores(
            torch.rand(1, 3, 1, 6), [5], judge=m, reference=(torch.rand(4, 1, 6), torch.tensor([0, 1, 1, 2]))
        ),
        ValueError,
        "no example",
    ),
    (
        lambda m: inversion_scores(torch.rand(2, 1, 6), 0, judge=m, reference=torch.rand(4, 1, 6)),
        TypeError,
        "reference",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_refused_before_the_model_runs(call, error, message) -> None:  # type: ignore[no-untyped-def]
    calls = []
    model = _linear()
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=message):
        call(model)
    assert not calls


def test_exported() -> None:
    assert fx.model_inversion is model_inversion and fx.privacy.inversion_scores is inversion_scores
