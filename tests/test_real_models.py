"""Model zoo: real architectures (torchvision, timm, Hugging Face; random weights, tiny inputs,
nothing downloaded) through saliency, integrated gradients, SmoothGrad, feature ablation and
Grad-CAM with the layer chosen automatically: shapes, finite values, IG's completeness, and the
model left as found (training flags, requires_grad, hooks).

The heaviest models are marked ``slow`` (``-m "not slow"`` skips them locally; ``make test``
runs them)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import real_models
import torch
from models import assert_same_state, model_state
from torch import nn

import fastxai as fx

pytestmark = pytest.mark.usefixtures("one_thread")


def _tv(name: str, **config: object) -> Callable[[], nn.Module]:
    return lambda: getattr(real_models.torchvision().models, name)(num_classes=5, **config)


def _timm(name: str, **config: object) -> Callable[[], nn.Module]:
    return lambda: real_models.timm().create_model(name, pretrained=False, num_classes=5, **config)


def _tv_vit() -> nn.Module:
    model = real_models.torchvision().models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=5
    )
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts the head at zero
    return model


def _hf_vit() -> nn.Module:
    transformers = real_models.transformers()
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=5,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)  # returns an ImageClassifierOutput


_SLOW = pytest.mark.slow
ZOO = [
    pytest.param(_tv("resnet18"), 32, id="tv-resnet18"),
    pytest.param(_tv("mobilenet_v3_small"), 32, id="tv-mobilenet_v3_small"),
    pytest.param(_tv("densenet121"), 32, id="tv-densenet121", marks=_SLOW),
    pytest.param(_tv("shufflenet_v2_x0_5"), 32, id="tv-shufflenet_v2_x0_5"),
    pytest.param(_tv("efficientnet_b0"), 32, id="tv-efficientnet_b0"),
    pytest.param(_tv("convnext_tiny"), 32, id="tv-convnext_tiny", marks=_SLOW),
    pytest.param(_tv_vit, 32, id="tv-vit"),
    pytest.param(_timm("convnext_atto"), 32, id="timm-convnext_atto"),
    pytest.param(_timm("resnet18"), 32, id="timm-resnet18"),
    pytest.param(_timm("efficientnet_b0"), 32, id="timm-efficientnet_b0"),
    pytest.param(_timm("mobilevitv2_050"), 64, id="timm-mobilevitv2_050"),
    pytest.param(_hf_vit, 16, id="hf-vit"),
]


def _blocks(size: int, block: int) -> torch.Tensor:
    """A feature mask of square blocks (a coarse grid of features) shared by the channels."""
    side = torch.arange(size) // block
    return (side[:, None] * (size // block) + side[None, :]).expand(1, 3, size, size)


@pytest.mark.parametrize(("make", "size"), ZOO)
def test_methods_on_real_models(make: Callable[[], nn.Module], size: int) -> None:
    torch.manual_seed(0)
    model = make().train()  # the methods must evaluate in eval mode and put training back
    before = model_state(model)
    x = torch.rand(2, 3, size, size)
    target = torch.tensor([1, 3])

    grads = fx.saliency(model, x, target)
    assert grads.shape == x.shape and bool(torch.isfinite(grads).all()) and bool(grads.abs().sum() > 0)

    # A random baseline: at the zero image, LayerNorm models (ConvNeXt, MobileViT) jump (their
    # output is scale-invariant for alpha > 0), a gap no quadrature closes; IG's delta reports it.
    baseline = torch.rand_like(x)
    attributions, delta = fx.integrated_gradients(
        model, x, target=target, baselines=baseline, n_steps=24, return_convergence_delta=True
    )
    assert attributions.shape == x.shape and bool(torch.isfinite(attributions).all())
    with torch.no_grad():
        model.eval()
        scores = fx._model.flat_outputs(model, torch.cat([x, baseline]))
        model.train()
    ends = scores.gather(1, target.repeat(2).view(-1, 1)).view(2, 2)
    # Completeness: sum(IG) = f(x) - f(baseline), up to the quadrature error of 24 Gauss-Legendre points.
    torch.testing.assert_close(attributions.flatten(1).sum(1), ends[0] - ends[1], atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(
        delta, attributions.flatten(1).sum(1) - (ends[0] - ends[1]), atol=1e-4, rtol=1e-3
    )

    smooth = fx.smoothgrad(model, x, target=target, n_samples=3, stdevs=0.1, seed=0)
    assert smooth.shape == x.shape and bool(torch.isfinite(smooth).all())

    ablation = fx.feature_ablation(model, x, target, feature_mask=_blocks(size, size // 4))
    assert ablation.shape == x.shape and bool(torch.isfinite(ablation).all())

    found = fx.cam_layer(model, x)
    heat = fx.grad_cam(model, x, target, upsample=True)
    assert heat.shape == (2, 1, size, size) and bool(torch.isfinite(heat).all())
    assert all(side > 1 for side in found.grid), found
    assert_same_state(before, model_state(model))


class _Embedded(nn.Module):
    """A language model called on token embeddings [B, T, D] (``inputs_embeds=``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, embeddings: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.model(inputs_embeds=embeddings)  # a CausalLMOutput: its logits [B, T, V] are read


def test_language_model_logits_with_position_and_token_targets() -> None:
    transformers = real_models.transformers()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    model = _Embedded(transformers.GPT2LMHeadModel(config)).train()
    before = model_state(model)
    embeddings = torch.randn(2, 5, 16)
    same, each = (4, 7), [(4, 7), (2, 3)]  # output[b, t, v]: the same for every example, or one each
    for target in (same, each):
        grads = fx.saliency(model, embeddings, target, abs=False)
        assert grads.shape == embeddings.shape
        assert bool(grads[1, 3:].eq(0).all()) == (target is each)  # causal: position 2 ignores 3 and 4
        attributions, delta = fx.integrated_gradients(
            model, embeddings, target=target, n_steps=24, return_convergence_delta=True
        )
        assert attributions.shape == embeddings.shape and float(delta.abs().max()) < 5e-3
        ablation = fx.feature_ablation(model, embeddings, target, feature_mask=torch.arange(5).view(1, 5, 1))
        assert bool(ablation[1, 3:].eq(0).all()) == (target is each)
        grouped = fx.shapley_value_sampling(
            model, embeddings, target, feature_mask=torch.arange(5).view(1, 5, 1), n_samples=2, seed=0
        )
        assert grouped.shape == embeddings.shape and bool(torch.isfinite(grouped).all())
    with pytest.raises(ValueError, match="give target as a tuple of 2 indices"):
        fx.saliency(model, embeddings, 3)
    assert_same_state(before, model_state(model))


def test_attention_capture_installed_during_a_call_still_works_after_it() -> None:
    """transformers installs its attention-capturing hooks on the first forward that asks for
    attentions; if that forward runs inside a method, the hooks are removed afterwards and the
    model must install them again (not silently return no attentions)."""
    transformers = real_models.transformers()
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(1, 30, (2, 5))
    before = model_state(bert)
    fx.saliency(bert, ids, target=1, forward_kwargs={"output_attentions": True})
    assert_same_state(before, model_state(bert))
    attentions = bert(ids, output_attentions=True).attentions
    assert attentions is not None and len(attentions) == 1 and attentions[0].shape == (2, 2, 5, 5)


_SUMS_EXACTLY = {"tv-resnet18", "timm-resnet18"}  # ReLU, max pooling, batch norm, residual sums only


@pytest.mark.parametrize(("make", "size"), ZOO)
def test_deeplift_on_real_models(
    request: pytest.FixtureRequest, make: Callable[[], nn.Module], size: int
) -> None:
    """DeepLIFT on the zoo: every nonlinearity of every architecture paired between the passes,
    Captum's zero baselines run as one row and broadcast (equal to the pass with every row), a
    baseline per input, DeepLiftShap, and the model left as found. On the ReLU ResNets the
    attributions sum to ``f(x) - f(x')`` (float64); elsewhere (LayerNorm, attention, squeeze-and-
    excitation products: not Rescale-exact) the delta is only finite."""
    torch.manual_seed(0)
    model = make().double().train()
    before = model_state(model)
    x = torch.rand(3, 3, size, size, dtype=torch.float64)
    target = torch.tensor([1, 3, 0])

    shared, delta = fx.deeplift(model, x, target, 0.0, return_convergence_delta=True)
    assert (
        shared.shape == x.shape and bool(torch.isfinite(shared).all()) and bool(torch.isfinite(delta).all())
    )
    model.eval()  # a plain callable runs the model as it is: in eval mode, as the method runs it
    every_row = fx.deeplift(lambda t: model(t), x, target, 0.0)  # a callable: baselines with every row
    model.train()
    torch.testing.assert_close(shared, every_row, rtol=1e-7, atol=1e-9 * float(every_row.abs().max()))

    baselines = torch.rand_like(x)
    per_input, per_input_delta = fx.deeplift(model, x, target, baselines, return_convergence_delta=True)
    assert bool(torch.isfinite(per_input).all())
    shap = fx.deeplift_shap(model, x, target, baselines[:2])
    assert shap.shape == x.shape and bool(torch.isfinite(shap).all())
    if request.node.callspec.id in _SUMS_EXACTLY:
        with torch.no_grad():
            model.eval()
            scores = fx._model.flat_outputs(model, torch.cat([x, baselines]))
            model.train()
        ends = scores.gather(1, target.repeat(2).view(-1, 1)).view(2, 3)
        torch.testing.assert_close(per_input.flatten(1).sum(1), ends[0] - ends[1], rtol=1e-9, atol=1e-9)
        assert float(delta.abs().max()) < 1e-9 and float(per_input_delta.abs().max()) < 1e-9
    assert_same_state(before, model_state(model))
