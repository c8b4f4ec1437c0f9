"""LayerFeaturePermutation against brute force and Captum: with two examples the only
permutation that is not the identity is the swap, so every draw is known."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr")


def _brute_force(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
):
    """f_t(x) - f_t(x with the layer's group g swapped between the two rows), group by group."""
    with torch.no_grad():
        kept = []
        handle = layer.register_forward_hook(lambda _m, _a, out: kept.append(out.clone()))
        base = model(x).gather(1, target.view(-1, 1))[:, 0]
        handle.remove()
        values = kept[0]
        result = torch.zeros_like(values)
        for group in mask.unique().tolist():
            selected = (mask == group).expand_as(values)
            swapped = torch.where(selected, values.flip(0), values)
            handle = layer.register_forward_hook(lambda _m, _a, _out, new=swapped: new)
            score = model(x).gather(1, target.view(-1, 1))[:, 0]
            handle.remove()
            drop = (base - score).view(-1, *([1] * (values.dim() - 1)))
            result = torch.where(selected, drop.expand_as(values), result)
    return result


@pytest.mark.parametrize("per_eval", [1, 3])
def test_layer_permutation_matches_brute_force_and_captum(per_eval: int) -> None:
    model = small_cnn(seed=3, pool=nn.AvgPool2d).eval()
    layer = model[4]
    x = torch.randn(2, 1, 6, 6)
    mask = torch.arange(8).view(1, 8, 1, 1)  # one group per channel
    before = model_state(model)
    ours = fc.LayerFeaturePermutation(model, layer).attribute(
        x, target=[2, 7], layer_mask=mask, perturbations_per_eval=per_eval
    )
    assert_same_state(before, model_state(model))
    torch.testing.assert_close(
        ours, _brute_force(model, layer, x, mask, torch.tensor([2, 7])), atol=1e-5, rtol=1e-5
    )

    # Captum's class applies a target twice (inside and outside its layer forward), so it is
    # compared on a forward that returns the one score itself, without a target
    def score(inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)[:, 2]

    ours = fc.LayerFeaturePermutation(score, layer).attribute(x, layer_mask=mask)
    theirs = captum_attr.LayerFeaturePermutation(score, layer).attribute(x, layer_mask=mask)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_layer_permutation_bad_input_and_state_on_error() -> None:
    model = small_cnn(seed=3, pool=nn.AvgPool2d)
    before = model_state(model)
    with pytest.raises(ValueError, match="target"):
        fc.LayerFeaturePermutation(model, model[4]).attribute(torch.randn(2, 1, 6, 6), target=12)
    assert_same_state(before, model_state(model))
    with pytest.raises(TypeError, match="layer"):
        fc.LayerFeaturePermutation(model, "conv")  # type: ignore[arg-type]
