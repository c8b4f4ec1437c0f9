"""The gradient engine's rules for normalisations and max pooling (``fastxai.lrp._gradient_norms``):
eval-mode BatchNorm (merged into the Linear/Conv before it, else passed on), GroupNorm, max
pooling, norms as constants, ``F.normalize``.

Oracles: the traced engine (``engine="fx"``, its own handlers: BatchNorm merged into the layer's
parameters, GroupNorm as per-group LayerNorm, max pooling by scattering to the argmax indices)
on the same small models in float64; conservation (no biases, LRP-0, no stabiliser: the
relevance sums to the logit); and tiny Hugging Face vision classifiers, which the gradient
engine runs and which use these layers.
"""

from __future__ import annotations

import pytest
import real_models
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state
from torch import nn

from fastxai.lrp import Composite, UnsupportedLayerError, lrp, rules
from fastxai.lrp._linear import LINEAR_TYPES

LRP_0 = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)
COMPOSITES = ["epsilon", Composite([(LINEAR_TYPES, rules.Epsilon(0.1))], stabilizer=1e-2)]


class _ConvNet(nn.Module):
    """Conv + BatchNorm (merged), max pooling, a Conv whose output BatchNorm shares with a sum
    (not merged), a BatchNorm after a sum (passed on), GroupNorm, adaptive max pooling."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.norm1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.norm2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv3, self.norm3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.norm4 = nn.BatchNorm2d(4)
        self.group = nn.GroupNorm(2, 4)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            for norm in (self.norm1, self.norm2, self.norm3, self.norm4):
                norm.running_mean.normal_(0, 0.3)
                norm.running_var.uniform_(0.5, 2.0)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.2)
            self.group.weight.uniform_(0.5, 1.5)
            self.group.bias.normal_(0, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(torch.relu(self.norm1(self.conv1(x))), 2)  # [B, 4, 4, 4]
        h = h + self.norm2(self.conv2(h))
        z = self.conv3(h)
        h = self.norm4(self.norm3(z) + z)
        return self.head(F.adaptive_max_pool2d(self.group(h), 2).flatten(1))


class _Normalisers(nn.Module):
    """ConvNeXt V2's global response norm (an L2 norm over space, divided by its channel mean)
    and Swin V2's cosine similarity (``F.normalize``), with a std-scaled branch: norms and
    standard deviations are constants of the pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(1, 4, 1, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(1, 4, 1, 1) * 0.1)
        self.head = nn.Linear(4 * 16 + 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)  # [B, 4, 4, 4]
        norms = torch.linalg.vector_norm(h, ord=2, dim=(2, 3), keepdim=True)
        h = self.gamma * (h * (norms / (norms.mean(dim=1, keepdim=True) + 1e-6))) + self.beta + h
        tokens = F.normalize(h.flatten(2).transpose(1, 2), dim=-1)  # [B, 16, 4]
        similarity = (tokens @ tokens.transpose(1, 2)).mean(-1)  # [B, 16]
        scaled = h / h.std(dim=1, keepdim=True) + h.norm(dim=1, keepdim=True) * 0.0
        return self.head(torch.cat([scaled.flatten(1), similarity], dim=1))


def _inputs(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            for name in ("bias", "beta", "running_mean"):
                value = getattr(module, name, None)
                if isinstance(value, torch.Tensor):
                    value.zero_()
    return model


@pytest.mark.parametrize("composite", COMPOSITES, ids=["epsilon", "epsilon0.1"])
@pytest.mark.parametrize("body", [_ConvNet, _Normalisers])
def test_engines_agree_on_batchnorm_groupnorm_max_pooling_and_norms(body: type, composite: object) -> None:
    model = body().double().eval()
    x = _inputs() if body is _ConvNet else _inputs()[..., :4, :4]
    traced = lrp(model, x, target=1, composite=composite, engine="fx")
    relevance = lrp(model, x, target=1, composite=composite, engine="gradient")
    torch.testing.assert_close(relevance, traced, rtol=1e-9, atol=1e-12 * traced.abs().max().item())


def test_batchnorm_merges_into_the_layer_before_it() -> None:
    """With a large epsilon the merged rule (epsilon on BN(conv(x))) and BatchNorm as a step of its
    own differ; the gradient engine gives the merged one, as the traced engine's default."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    torch.manual_seed(5)
    with torch.no_grad():
        model[1].running_mean.normal_(0, 0.5)
        model[1].running_var.uniform_(0.2, 3.0)
    model = model.double().eval()
    composite = Composite([(LINEAR_TYPES, rules.Epsilon(0.5))], stabilizer=0.0)
    x = _inputs()
    relevance = lrp(model, x, target=0, composite=composite, engine="gradient")
    merged = lrp(model, x, target=0, composite=composite, engine="fx")
    separate = lrp(model, x, target=0, composite=composite, engine="fx", merge_batchnorm=False)
    torch.testing.assert_close(relevance, merged, rtol=1e-9, atol=1e-12 * merged.abs().max().item())
    assert (relevance - separate).abs().max() > 1e-2 * separate.abs().max()


@pytest.mark.parametrize("body", [_ConvNet, _Normalisers])
def test_relevance_is_conserved_without_biases(body: type) -> None:
    model = _zero_biases(body().double().eval())
    x = _inputs() if body is _ConvNet else _inputs()[..., :4, :4]
    relevance = lrp(model, x, target=2, composite=LRP_0, engine="gradient")
    with torch.no_grad():
        logits = model(x)[:, 2]
    assert logits.abs().min() > 1e-6
    torch.testing.assert_close(relevance.flatten(1).sum(1), logits, rtol=1e-9, atol=1e-12)


def test_batchnorm_with_batch_statistics_is_refused_and_the_model_left_as_found() -> None:
    model = _ConvNet().double().train()
    before = model_state(model)
    with pytest.raises(UnsupportedLayerError, match="batch_norm with batch statistics"):
        lrp(model, _inputs(), target=0, engine="gradient", eval_mode=False)
    assert_same_state(before, model_state(model))  # running statistics not updated either


def test_an_output_of_norms_alone_is_refused() -> None:
    class Norms(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.linalg.vector_norm(self.conv(x), dim=(2, 3)))

    with pytest.raises(UnsupportedLayerError, match="carries no relevance"):
        lrp(Norms().eval(), torch.randn(1, 3, 5, 5), target=0, engine="gradient")


def test_a_sigmoid_gate_of_a_subnormal_activation_gives_finite_relevance() -> None:
    """sigmoid(a) / a (the identity rule's ratio) overflows for a subnormal a, and inf * 0 made the
    whole relevance NaN (squeeze-excitation gates of channels faded to 1e-39: HF EfficientNet,
    PP-LCNet with random weights)."""

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(6)
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(36, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(x))
            faded = h[:, :1] * 1e-39  # float32 subnormals
            return self.head(torch.cat([faded * torch.sigmoid(faded), h[:, 1:]], dim=1).flatten(1))

    relevance = lrp(Gate().eval(), torch.randn(2, 3, 5, 5), target=1, engine="gradient")
    assert bool(torch.isfinite(relevance).all()) and bool(relevance.any())


# -- tiny Hugging Face vision classifiers ----------------------------------------------------------

# BatchNorm and max pooling (resnet), BatchNorm and ReLU6 (mobilenet_v2), GroupNorm and max pooling
# (bit), GroupNorm (poolformer), the global response norm (convnextv2), F.normalize (swinv2)
_HF_VISION = {
    "resnet": {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
    "mobilenet_v2": {"depth_multiplier": 0.25, "image_size": 32},
    "bit": {
        "embedding_size": 8, "num_groups": 4, "hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1],
        "layer_type": "bottleneck", "global_padding": "SAME",
    },
    "poolformer": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1]},
    "convnextv2": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "image_size": 32},
    "swinv2": {
        "embed_dim": 8, "num_heads": [1, 1, 2, 2], "depths": [1, 1, 1, 1], "image_size": 32, "window_size": 2,
        "patch_size": 2,
    },
}  # fmt: skip


def _hf_vision(name: str) -> nn.Module:
    transformers = real_models.transformers()
    transformers.logging.set_verbosity_error()
    config = transformers.AutoConfig.for_model(name, num_labels=3, **_HF_VISION[name])
    torch.manual_seed(0)
    model = transformers.AutoModelForImageClassification.from_config(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):  # the N(0, 0.02) init fades MobileNetV2's signal to 1e-28
                nn.init.kaiming_normal_(module.weight)
    return _zero_biases(model).double().eval()


@pytest.mark.parametrize("name", list(_HF_VISION))
def test_hugging_face_vision_classifiers_conserve_relevance(name: str) -> None:
    """No biases, LRP-0: the relevance sums to the logit, except Swin V2's (its softmax rule and
    its constant relative position bias absorb relevance): finite and non-zero there."""
    model = _hf_vision(name)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    relevance = lrp(model, x, target=0, composite=LRP_0)
    assert relevance.shape == x.shape and bool(torch.isfinite(relevance).all())
    with torch.no_grad():
        logit = model(x).logits[0, 0]
    assert logit.abs() > 1e-6
    if name == "swinv2":
        assert relevance.abs().sum() > 1e-3 * logit.abs()
    else:
        torch.testing.assert_close(relevance.sum(), logit, rtol=1e-8, atol=1e-12)
