"""The faithfulness table: precomputed attributions score as their explainer does, and it checks
what it is given."""

from __future__ import annotations

import math

import pytest
import torch
from models import small_cnn

import fastxai as fx
from fastxai.evaluation import report


def _case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=5).eval()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def test_precomputed_attributions_score_like_their_explainer() -> None:
    model, x, targets = _case()
    explained = report.faithfulness_table(
        model, x, targets, {"saliency": lambda m, inputs, t: fx.saliency(m, inputs, t)}, n_steps=6
    )
    stored = report.faithfulness_table(
        model, x, targets, {"saliency": fx.saliency(model, x, targets)}, n_steps=6
    )
    for key in ("deletion_auc", "insertion_auc", "beats_random"):
        assert stored[0][key] == pytest.approx(explained[0][key])
    assert stored[-1] == pytest.approx(explained[-1], nan_ok=True)  # the random ordering row
    assert math.isnan(stored[0]["seconds"]) and explained[0]["seconds"] >= 0
    assert "| saliency |" in report.markdown(stored) and "nan" not in report.markdown(stored)


def test_precomputed_attributions_of_the_wrong_shape_are_named() -> None:
    model, x, targets = _case()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="attributions of 'cam' must have the inputs' shape"):
        report.faithfulness_table(model, x, targets, {"cam": torch.zeros(4, 1, 3, 3)}, n_steps=4)
    assert not calls  # refused before any model evaluation
