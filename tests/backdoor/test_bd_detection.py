"""Spectral signatures and activation clustering: the formulas on a model whose representation is
known, and the poisoned items they find in a planted digits backdoor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from poisoned_digits import model_state, planted
from torch import nn

import fastxai as fx
from fastxai import backdoor as bd

pytestmark = pytest.mark.usefixtures("one_thread")

CONV = "6"  # the digits CNN's ReLU after its second convolution: [32, 4, 4] before pooling


def _linear_model(features: int, classes: int) -> nn.Module:
    """The representation the detectors read (the last Linear's input) is the flattened input."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, classes))


def _planted_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three Gaussian classes in 12 dims; 20 of class 1's 100 items sit 6 sigma off along one
    direction (the poisoned items); returns (x [300, 1, 12], y, poisoned indices)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 12, generator=generator)
    y = torch.arange(3).repeat_interleave(100)
    poisoned = torch.arange(100, 120)
    x[poisoned, 3] += 6.0
    return x.unsqueeze(1), y, poisoned


def test_spectral_scores_are_the_squared_top_singular_projection() -> None:
    x, y, _ = _planted_features()
    found = fx.spectral_signatures(_linear_model(12, 3), x, y, poison_fraction=0.2)
    for c in range(3):
        r = x[y == c, 0].double().numpy()
        r = r - r.mean(0)
        v = np.linalg.svd(r, full_matrices=False)[2][0]
        np.testing.assert_allclose(found.scores[y == c].numpy(), (r @ v) ** 2, rtol=1e-9, atol=1e-12)
    # round(1.5 * 0.2 * 100) = 30 removed per class, the top scores of each
    assert found.flagged.numel() == 90
    precision, recall = bd.precision_recall(found.flagged, torch.arange(100, 120))
    assert recall == 1.0 and precision == pytest.approx(20 / 90)
    only = fx.spectral_signatures(_linear_model(12, 3), x, y, poison_fraction=0.2, classes=[1])
    assert bd.precision_recall(only.flagged, torch.arange(100, 120)) == (pytest.approx(20 / 30), 1.0)
    assert bool((only.scores[y != 1] == 0).all())


@pytest.mark.parametrize("reduction", ["pca", "ica"])
def test_activation_clustering_flags_exactly_the_planted_cluster(reduction: str) -> None:
    x, y, poisoned = _planted_features()
    found = fx.activation_clustering(_linear_model(12, 3), x, y, reduction=reduction, seed=0)
    assert found.suspicious.tolist() == [False, True, False]
    if reduction == "pca":
        assert torch.equal(found.flagged, poisoned)
        assert found.relative_size[1] == pytest.approx(0.2)
    else:  # whitening gives the poison's direction no more weight than each of 9 noise directions
        precision, recall = bd.precision_recall(found.flagged, poisoned)
        assert recall >= 0.9 and precision >= 0.7, (precision, recall)
    # the clean classes are one blob: 2-means halves it (no small cluster) with a low silhouette
    assert bool((found.relative_size[[0, 2]] > 0.35).all())
    assert found.silhouette[1] > found.silhouette[[0, 2]].max()


def test_precision_recall_by_hand() -> None:
    assert bd.precision_recall(torch.tensor([1, 2, 3, 4]), torch.tensor([2, 4, 9])) == (
        0.5,
        pytest.approx(2 / 3),
    )
    assert bd.precision_recall(torch.tensor([], dtype=torch.long), torch.tensor([1])) == (0.0, 0.0)


def test_detectors_find_the_poisoned_digits() -> None:
    """3x3 patch on 5% of the training set (67 items, a third of class 0). A random guess of the
    same size finds the base rate (5% of the set, 33% of class 0) at recall = the share flagged."""
    case = planted("patch3")
    x, y, truth = case.poisoned.inputs, case.poisoned.labels, case.poisoned.indices
    share = truth.numel() / int((y == case.target).sum())
    base_rate = truth.numel() / y.numel()

    spectral = fx.spectral_signatures(
        case.model, x, y, poison_fraction=share, layer=CONV, classes=[case.target]
    )
    precision, recall = bd.precision_recall(spectral.flagged, truth)
    assert recall >= 0.9 and precision >= 0.6, (precision, recall)  # 1 / 1.5 is the most the rule allows

    everywhere = fx.spectral_signatures(case.model, x, y, poison_fraction=share, layer=CONV)
    precision, recall = bd.precision_recall(everywhere.flagged, truth)
    flagged_share = everywhere.flagged.numel() / y.numel()
    assert recall >= 0.9 > flagged_share + 0.2 and precision > 1.5 * base_rate, (precision, recall)

    clusters = fx.activation_clustering(case.model, x, y, reduction="pca", seed=0)
    precision, recall = bd.precision_recall(clusters.flagged, truth)
    assert bool(clusters.suspicious[case.target])
    assert recall >= 0.8 and precision >= 0.4, (precision, recall)
    again = fx.activation_clustering(case.model, x, y, reduction="pca", seed=0)
    assert torch.equal(again.flagged, clusters.flagged)


def test_model_left_as_found() -> None:
    case = planted("patch3")
    model = copy.deepcopy(case.model).train()
    model[9].register_forward_pre_hook(lambda *args: None)
    model[4].weight.requires_grad_(False)
    before = model_state(model)
    x, y = case.x_test[:40], case.y_test[:40]
    fx.spectral_signatures(model, x, y, poison_fraction=0.3)
    fx.activation_clustering(model, x, y, layer=CONV)
    assert model_state(model) == before
    with pytest.raises(ValueError, match="not a submodule"):
        fx.activation_clustering(model, x, y, layer="99")
    assert model_state(model) == before


BAD = [
    (lambda m, x, y: fx.spectral_signatures(m, x, y, poison_fraction=0), ValueError, "poison_fraction"),
    (
        lambda m, x, y: fx.spectral_signatures(m, x, y, poison_fraction=0.1, multiplier=-1),
        ValueError,
        "multiplier",
    ),
    (
        lambda m, x, y: fx.spectral_signatures(m, x, y, poison_fraction=0.1, classes=[7]),
        ValueError,
        "classes",
    ),
    (
        lambda m, x, y: fx.spectral_signatures(m, x, y, poison_fraction=0.1, classes="0"),
        ValueError,
        "classes",
    ),
    (lambda m, x, y: fx.spectral_signatures(m, x, y[:5], poison_fraction=0.1), ValueError, "labels"),
    (lambda m, x, y: fx.spectral_signatures(nn.Flatten(), x, y, poison_fraction=0.1), ValueError, "layer="),
    (lambda m, x, y: fx.activation_clustering(m, x, y, reduction="tsne"), ValueError, "reduction"),
    (lambda m, x, y: fx.activation_clustering(m, x, y, n_components=0), ValueError, "n_components"),
    (lambda m, x, y: fx.activation_clustering(m, x, y, size_threshold=1.5), ValueError, "size_threshold"),
    (
        lambda m, x, y: fx.activation_clustering(m, x, y, silhouette_threshold=2),
        ValueError,
        "silhouette_threshold",
    ),
    (lambda m, x, y: fx.activation_clustering(m, x, y, n_init=0), ValueError, "n_init"),
    (lambda m, x, y: fx.activation_clustering(m, x, y, seed=-1), ValueError, "seed"),
    (lambda m, x, y: fx.activation_clustering(m, x, y, chunk_size=0), ValueError, "chunk_size"),
    (lambda m, x, y: fx.activation_clustering(m, x.long(), y), TypeError, "inputs"),
    (lambda m, x, y: bd.precision_recall(torch.tensor([1.0]), y), TypeError, "flagged"),
    (lambda m, x, y: bd.precision_recall(y, torch.tensor([], dtype=torch.long)), ValueError, "poisoned"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_refused_before_the_model_runs(call, error, message) -> None:  # type: ignore[no-untyped-def]
    calls = []
    model = _linear_model(4, 2)
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=message):
        call(model, torch.rand(6, 1, 4), torch.tensor([0, 0, 0, 1, 1, 1]))
    assert not calls
