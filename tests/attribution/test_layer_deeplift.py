"""fastxai.deeplift / deeplift_shap with layer=: Captum's LayerDeepLift(Shap) as the oracle,
summation to delta against the model's outputs, checks before work, the model's state."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, mlp, model_state, small_cnn
from torch import nn

import fastxai

captum_attr = pytest.importorskip("captum.attr")


def _cnn() -> nn.Module:
    # average pooling: the max-pool rules of fastxai (exact) and Captum differ by ~1e-4
    return small_cnn(seed=5, channels=2, classes=4, pool=nn.AvgPool2d).eval()


@pytest.mark.parametrize("multiply", [True, False])
@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize(
    ("make", "shape", "layer"),
    [(lambda: mlp(seed=1), (5, 20), "1"), (lambda: mlp(seed=1), (5, 20), "3"), (_cnn, (3, 2, 6, 6), "4")],
)
def test_layer_deeplift_matches_captum(make, shape, layer, chunk, multiply) -> None:
    torch.manual_seed(2)
    model, x = make(), torch.randn(*shape)
    baselines = 0.2 * torch.randn(1, *shape[1:])
    target = torch.arange(shape[0]) % 4
    ours, delta = fastxai.deeplift(
        model,
        x,
        target,
        baselines,
        layer=layer,
        chunk_size=chunk,
        multiply_by_inputs=multiply,
        return_convergence_delta=True,
    )
    module = dict(model.named_modules())[layer]
    theirs = captum_attr.LayerDeepLift(model, module, multiply_by_inputs=multiply).attribute(
        x, baselines, target=target
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    if multiply:
        with torch.no_grad():
            scores = model(torch.cat([x, baselines]))[:, :4]
        expected = scores[: shape[0]].gather(1, target.view(-1, 1))[:, 0] - scores[shape[0], target]
        torch.testing.assert_close(ours.flatten(1).sum(1), expected, atol=1e-5, rtol=1e-5)
        assert delta.abs().max() < 1e-5


@pytest.mark.parametrize(
    ("make", "shape", "layer"), [(lambda: mlp(seed=1), (3, 20), "2"), (_cnn, (2, 2, 6, 6), "2")]
)
def test_layer_deeplift_shap_matches_captum(make, shape, layer) -> None:
    torch.manual_seed(3)
    model, x, background = make(), torch.randn(*shape), torch.randn(4, *shape[1:])
    ours, delta = fastxai.deeplift_shap(
        model, x, 1, background, layer=layer, chunk_size=4, return_convergence_delta=True
    )
    module = dict(model.named_modules())[layer]
    theirs, their_delta = captum_attr.LayerDeepLiftShap(model, module).attribute(
        x, background, target=1, return_convergence_delta=True
    )
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert delta.shape == (shape[0] * 4,)
    torch.testing.assert_close(delta, their_delta, atol=1e-4, rtol=0)


def test_layer_checked_before_the_model_runs_and_state_kept() -> None:
    model = mlp(seed=0)
    model.train()
    before = model_state(model)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="layer 'nope'"):
        fastxai.deeplift(model, torch.randn(2, 20), 0, layer="nope")
    with pytest.raises(ValueError, match="layer"):
        fastxai.deeplift_shap(model, torch.randn(2, 20), 0, torch.randn(3, 20), layer=nn.Linear(2, 2))
    assert not calls
    handle.remove()
    with pytest.raises(ValueError, match="target"):
        fastxai.deeplift(model, torch.randn(2, 20), 9, layer="2")
    fastxai.deeplift(model, torch.randn(2, 20), 0, layer=model[2])
    assert_same_state(before, model_state(model))


def test_deeplift_shap_takes_token_ids_at_the_input_embedding() -> None:
    """Token ids against a background of id sequences: DeepLiftShap is the mean of DeepLIFT
    against each sequence, taken at the embedding like ``deeplift``; an int is one baseline of
    that id everywhere; float or misshaped backgrounds are refused naming ``baselines``."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(20, 8), nn.Flatten(), nn.Linear(40, 6), nn.ReLU(), nn.Linear(6, 3)
    ).double()
    ids = torch.randint(0, 20, (2, 5))
    background = torch.randint(0, 20, (3, 5))
    before = model_state(model)
    result, delta = fastxai.deeplift_shap(
        model, ids, target=1, baselines=background, return_convergence_delta=True
    )
    each = [fastxai.deeplift(model, ids, target=1, baselines=row[None]) for row in background]
    torch.testing.assert_close(result, torch.stack(each).mean(0), rtol=1e-12, atol=1e-12)
    assert result.shape == (2, 5, 8) and result.dtype == torch.float64
    assert delta.shape == (6,) and delta.abs().max() < 1e-6
    one = fastxai.deeplift_shap(model, ids, target=1, baselines=0)
    torch.testing.assert_close(one, fastxai.deeplift(model, ids, target=1, baselines=0))
    assert_same_state(before, model_state(model))
    with pytest.raises(TypeError, match="baselines"):
        fastxai.deeplift_shap(model, ids, target=1, baselines=background.double())
    with pytest.raises(ValueError, match="baselines"):
        fastxai.deeplift_shap(model, ids, target=1, baselines=torch.zeros(3, 4, dtype=torch.long))
