"""LayerFeatureAblation side by side with Captum: a CNN's conv channels ablated in batches."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn

from fastxai.compat._captum_layer_ablation import LayerFeatureAblation

captum_attr = pytest.importorskip("captum.attr")


def test_layer_ablation_matches_captum_batched_and_leaves_the_model() -> None:
    model = small_cnn(seed=2).eval()
    layer = model[0]
    x = torch.randn(3, 1, 8, 8)
    target = torch.tensor([1, 4, 0])
    with torch.no_grad():
        channels = layer(x).shape[1]
    mask = torch.arange(channels).view(1, channels, 1, 1)  # one group per channel
    before = model_state(model)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    ours = LayerFeatureAblation(model, layer).attribute(
        x, target=target, layer_mask=mask, layer_baselines=0.5
    )
    handle.remove()
    theirs = captum_attr.LayerFeatureAblation(model, layer).attribute(
        x, target=target, layer_mask=mask, layer_baselines=0.5
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert len(calls) < channels  # many ablations per forward pass
    assert_same_state(before, model_state(model))
