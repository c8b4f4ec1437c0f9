"""LRP on the architectures people use: torchvision and timm models with random weights (nothing
downloaded), batch 2, eval mode.

Every model: LRP runs, the relevance is finite and has the input's shape, the model is left as
found, and a batch of one gives the first sample's relevance of the batch of two (the trace,
specialised to the per-sample shape, must not be specialised to the batch size).

Conservation, ``|sum R - f_target(x)| / |f_target(x)|``, is printed for every model (``pytest -s``
shows the table) and asserted where the rules promise it: for the convolutional networks with
LRP-0 (epsilon 0 everywhere) in float64 once their biases are zeroed (every Linear/Conv/norm
bias and BatchNorm mean). Every step then conserves exactly: linear layers, sums, pooling, the
50/50 split of gating products, the structural ops (reshape, transpose, chunk, cat, pad, roll).
Not asserted:

- with biases: they absorb their share of relevance by design;
- ``epsilon_plus`` (printed): z+ drops the relevance of an output with no positive contribution,
  which a unit followed by no ReLU (a depthwise convolution before a linear bottleneck, an SE
  gate's sigmoid) can still carry: 6-95 % on these networks even without biases;
- epsilon 1e-6 in float32 (printed): about 1e-5, but up to 2 % where squeeze-and-excitation
  gates are about 1/2 at a pre-activation of about 0, where the stabiliser is not negligible;
- the transformers: AttnLRP's softmax rule does not conserve, and class tokens and position
  embeddings (constants) absorb their share like biases do.

The weights are random but shaped like trained ones: BatchNorm statistics come from a
train-mode pass over random images (with fresh statistics and zero-initialised heads, activations
of some models vanish, 1e-10 logits, and their relevances say nothing), affine norm parameters
and zero-initialised weights are drawn at random. Heavy models are marked ``slow``
(``make test`` runs them too; ``-m "not slow"`` leaves them out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import real_models
import torch
from models import assert_same_state, model_state
from torch import nn

from fastxai.lrp import Composite, lrp, rules
from fastxai.lrp._linear import LINEAR_TYPES

# Relative, float64, no stabiliser: exact in exact arithmetic; measured 1e-15 except where LRP-0
# divides by pre-activations near 0 and large relevances of both signs cancel (the squeeze-and-
# excitation gates of EfficientNet / RegNetY: up to 6e-5). The bugs this caught were 2 % to 2000 %.
TOLERANCE = 1e-3
LRP_0 = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    size: int  # input 3 x size x size
    conserving: bool = True  # conservation asserted once the biases are zeroed
    slow: bool = False
    composite: str = "epsilon_plus"  # the table's first column; conservation is checked with epsilon


def _torchvision(name: str, **options: Any) -> Callable[[], nn.Module]:
    return lambda: getattr(real_models.torchvision().models, name)(weights=None, num_classes=10, **options)


def _timm(name: str, **options: Any) -> Callable[[], nn.Module]:
    return lambda: real_models.timm().create_model(name, pretrained=False, num_classes=10, **options)


def _vision_transformer() -> nn.Module:
    real_models.torchvision()  # makes the import work on a CPU machine
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def _swin() -> nn.Module:
    """torchvision's Swin (shifted windows, patch merging) in a tiny configuration: swin_t itself
    (28M parameters) takes tens of seconds on a busy 2-core machine for the same code paths."""
    real_models.torchvision()
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[3, 3],
        stochastic_depth_prob=0.1, num_classes=10,
    )  # fmt: skip


def _swin_v2() -> nn.Module:
    """Swin V2 in the same tiny configuration: cosine attention (``F.normalize`` of queries and
    keys, a learned logit scale) and a continuous position-bias MLP."""
    real_models.torchvision()
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

    return SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[3, 3],
        stochastic_depth_prob=0.1, num_classes=10, block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
    )  # fmt: skip


CASES = [
    Case("tv_resnet18", _torchvision("resnet18"), 32),
    Case("tv_vgg11", _torchvision("vgg11"), 32, slow=True),
    Case("tv_densenet121", _torchvision("densenet121"), 32, slow=True),
    Case("tv_mobilenet_v2", _torchvision("mobilenet_v2"), 32),
    Case("tv_mobilenet_v3_small", _torchvision("mobilenet_v3_small"), 32, slow=True),
    Case("tv_shufflenet_v2_x0_5", _torchvision("shufflenet_v2_x0_5"), 32),
    Case("tv_efficientnet_b0", _torchvision("efficientnet_b0"), 32, slow=True),
    Case("tv_convnext_tiny", _torchvision("convnext_tiny"), 32, slow=True),
    Case("tv_regnet_y_400mf", _torchvision("regnet_y_400mf"), 32, slow=True),
    Case("tv_squeezenet1_0", _torchvision("squeezenet1_0"), 32),
    Case("tv_googlenet", _torchvision("googlenet", aux_logits=False, init_weights=True), 32, slow=True),
    Case("tv_vit", _vision_transformer, 32, conserving=False),
    Case("tv_swin_tiny_config", _swin, 24, conserving=False),
    Case("tv_swin_v2_tiny_config", _swin_v2, 24, conserving=False),
    Case("timm_resnet18", _timm("resnet18"), 32, slow=True),
    Case("timm_efficientnet_b0", _timm("efficientnet_b0"), 32, slow=True),
    Case("timm_convnext_atto", _timm("convnext_atto"), 32),
    Case("timm_vit_tiny", _timm("vit_tiny_patch16_224", img_size=32), 32, conserving=False, slow=True),
    Case("timm_mobilevitv2_050", _timm("mobilevitv2_050"), 64, conserving=False, slow=True),
    Case("timm_deit_tiny", _timm("deit_tiny_patch16_224", img_size=32), 32, conserving=False, slow=True),
    # ops of fastxai.lrp._maps: F.interpolate, nn.Upsample, powers, functional convolutions with
    # standardised weights, reflect padding, addcmul, negation (refused before)
    Case("timm_mobilevit_xxs", _timm("mobilevit_xxs"), 64, conserving=False),
    Case("timm_hrnet_w18_small", _timm("hrnet_w18_small"), 64, slow=True),
    Case("timm_poolformerv2_s12", _timm("poolformerv2_s12"), 32),
    Case("timm_nfnet_l0", _timm("nfnet_l0"), 32, slow=True),
    Case("timm_tresnet_m", _timm("tresnet_m"), 64, slow=True),
    Case("timm_resmlp_12", _timm("resmlp_12_224", img_size=32), 32, conserving=False),
    Case("timm_convnextv2_atto", _timm("convnextv2_atto"), 32),  # GRN: norms as constants
    Case("timm_eva02_tiny", _timm("eva02_tiny_patch14_224", img_size=28), 28, conserving=False, slow=True),
    # linear attention divided by its normaliser (a constant of the pass), conserved: EfficientViT
    # runs it in float32 also in a float64 model (measured 6e-8)
    Case("timm_efficientvit_b0", _timm("efficientvit_b0"), 32),
    Case("timm_volo_d1", _timm("volo_d1_224", img_size=32), 32, conserving=False, slow=True),  # max(dim)
    # x[index] = value (relative position bias); epsilon: z+ on the convolutions that pool queries,
    # keys and values gives relevances 1e5 times the logit (with or without the assignment)
    Case("timm_mvitv2_tiny", _timm("mvitv2_tiny", img_size=32), 32, False, True, "epsilon"),
    Case("timm_sequencer2d_s", _timm("sequencer2d_s", img_size=56), 56, slow=True),  # LSTMs, conserved
]

RESULTS: dict[str, tuple[float, float | None]] = {}


@pytest.fixture(scope="module", autouse=True)
def conservation_table() -> Iterator[None]:
    """Prints, after the module, each model's relative conservation error (``pytest -s``)."""
    yield
    if not RESULTS:
        return
    print("\n\nLRP conservation, |sum R - f(x)| / |f(x)|, max over the batch")
    print(f"{'model':26s} {'epsilon_plus':>12s} {'LRP-0 f64, no biases':>21s}")
    for name, (biased, unbiased) in RESULTS.items():
        zeroed = "not promised" if unbiased is None else f"{unbiased:.2e}"
        print(f"{name:26s} {biased:12.2e} {zeroed:>21s}")


def calibrate(model: nn.Module, size: int) -> nn.Module:
    """Trained-like random weights (see the module docstring); returns the model in eval mode."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and not weight.any():
                bound = 1.0 / math.sqrt(weight[0].numel())  # e.g. torchvision ViT's zero head
                weight.copy_(torch.empty_like(weight).uniform_(-bound, bound, generator=generator))
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(
                        torch.empty_like(module.weight).uniform_(0.5, 1.5, generator=generator)
                    )
                    if module.bias is not None:  # MetaFormer v2's GroupNorm has none
                        module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batch
        model.train()
        model(torch.randn(8, 3, size, size, generator=generator))
    return model.eval()


def strip_biases(model: nn.Module) -> None:
    """Zero every bias (Linear, Conv, norms) and BatchNorm mean: what conservation needs."""
    with torch.no_grad():
        for module in model.modules():
            for name, bias in module.named_parameters(recurse=False):
                if name.startswith("bias"):  # also an LSTM's bias_ih_l0, ...
                    bias.zero_()
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):  # a bias buffer
                bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.zero_()


def conservation_error(model: nn.Module, x: torch.Tensor, composite: object) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(dim=1)
    relevance = lrp(model, x, target=target, composite=composite)
    assert isinstance(relevance, torch.Tensor)
    total = relevance.flatten(1).sum(1).double()
    output = logits.gather(1, target[:, None])[:, 0].double()
    return relevance, ((total - output).abs() / output.abs()).max().item()


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.slow else []) for case in CASES],
)
def test_lrp_runs_and_conserves_on_real_architectures(case: Case) -> None:
    torch.manual_seed(0)
    model = calibrate(case.build(), case.size)
    x = torch.randn(2, 3, case.size, case.size, generator=torch.Generator().manual_seed(1))
    before = model_state(model)
    relevance, biased = conservation_error(model, x, case.composite)
    assert relevance.shape == x.shape and relevance.dtype == x.dtype
    assert torch.isfinite(relevance).all()
    assert relevance.abs().sum() > 0
    assert_same_state(before, model_state(model))
    # the cached trace serves another batch size: same relevance for the first sample
    with torch.no_grad():
        target = model(x[:1]).argmax(dim=1)
    single = lrp(model, x[:1], target=target, composite=case.composite)
    assert isinstance(single, torch.Tensor)
    scale = relevance[:1].abs().max().item()  # other batch, other summation order: float noise
    torch.testing.assert_close(single, relevance[:1], rtol=1e-2, atol=1e-3 * scale)
    unbiased = None
    if case.conserving:
        strip_biases(model)
        _, unbiased = conservation_error(model.double(), x.double(), LRP_0)
    RESULTS[case.name] = (biased, unbiased)
    if unbiased is not None:
        assert unbiased < TOLERANCE, f"{case.name}: relevance not conserved ({unbiased:.3g})"
