"""The tracer of ``fastxai.lrp`` (``fastxai.lrp._trace``): shape arithmetic and shape checks are
metadata, Python decisions on shapes take the example's values, optional forward arguments are
traced at their defaults, data-dependent control flow is refused naming its source line; the
structural ops move relevance exactly (LRP-0 conserves to float64 precision without biases);
a BatchNorm after a concatenation passes relevance on; in-place activations do not corrupt it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state
from torch import nn

from fastxai.lrp import Composite, UnsupportedLayerError, lrp, rules
from fastxai.lrp._linear import LINEAR_TYPES

LRP_0 = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)


class Structural(nn.Module):
    """Shape arithmetic, a shape check, a shape-dependent pad, chunk, unbind, roll, expand,
    a channel shuffle, a BatchNorm after a concatenation, an in-place ReLU6, an optional argument."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(12)
        self.act = nn.ReLU6(inplace=True)
        self.head = nn.Linear(12 * 4, 3, bias=False)

    def forward(self, x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        batch, channels, height, width = x.shape
        torch._assert(channels == 4, "four channels")
        if width % 3:  # a Python decision on a shape: specialised to the example's width
            x = F.pad(x, (0, 3 - width % 3))
        x = self.act(self.conv(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([b, a.roll(1, dims=-1)], dim=1)
        x = x.view(batch, 2, x.size(1) // 2, x.size(2), -1).transpose(1, 2).reshape(batch, 8, height, -1)
        first, *_ = x.unbind(dim=2)  # [B, 8, W]
        x = torch.cat([x, first[:, :4, None, :].expand(-1, -1, height, -1)], dim=1)
        x = self.norm(x)
        x = F.adaptive_avg_pool2d(x, (2, 2)).flatten(1)
        if scale is not None:
            x = x * scale
        return self.head(x)


def structural(shift: bool = False) -> Structural:
    """The model; with ``shift`` its BatchNorm has a mean (a bias, in effect: without one, LRP-0
    conserves exactly; with one, relevance also reaches zero activations, where none can pass)."""
    torch.manual_seed(0)
    model = Structural()
    with torch.no_grad():
        model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.zero_()
        if shift:
            model.norm.running_mean.normal_()
    return model.eval()


def test_structural_ops_conserve_relevance_exactly_and_the_trace_serves_any_batch() -> None:
    model = structural().double()
    x = torch.randn(3, 4, 6, 7, dtype=torch.float64) * 3
    before = model_state(model)
    relevance = lrp(model, x, target=0, composite=LRP_0)
    logits = model(x)[:, 0]
    # the BatchNorm after the concatenation passes relevance on: no bias, no stabiliser -> exact
    torch.testing.assert_close(relevance.flatten(1).sum(1), logits, rtol=1e-10, atol=1e-10)
    assert_same_state(before, model_state(model))
    single = lrp(model, x[1:2], target=0, composite=LRP_0)  # the cached trace, another batch size
    torch.testing.assert_close(single, relevance[1:2])


def test_in_place_activation_does_not_corrupt_the_relevance() -> None:
    model = structural()
    with torch.no_grad():
        model.conv.weight.mul_(20)  # many outputs above 6: ReLU6 clips them (in place)
    x = torch.randn(2, 4, 6, 6)
    relevance = lrp(model.double(), x.double(), target=1, composite=LRP_0)
    torch.testing.assert_close(relevance.flatten(1).sum(1), model(x.double())[:, 1], rtol=1e-9, atol=1e-9)


def test_batchnorm_after_concatenation_uses_epsilon_when_merging_is_off() -> None:
    model = structural(shift=True).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    merged = lrp(model, x, target=0, composite=LRP_0)
    unmerged = lrp(model, x, target=0, composite=LRP_0, merge_batchnorm=False)
    assert not torch.allclose(merged, unmerged)  # epsilon on the standalone norm: the bias absorbs


def test_shape_dependent_branch_retraces_for_another_input_shape() -> None:
    model = structural().double()
    for width in (6, 7, 8):  # padded by 0, 2, 1: one trace per per-sample shape
        x = torch.randn(2, 4, 6, width, dtype=torch.float64)
        relevance = lrp(model, x, target=2, composite=LRP_0)
        torch.testing.assert_close(relevance.flatten(1).sum(1), model(x)[:, 2], rtol=1e-10, atol=1e-10)


class CastsBack(nn.Module):
    """A step in float32, cast back to the input's dtype (EfficientViT's linear attention)."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(x).float().to(x.dtype))


def test_a_model_reading_the_dtype_retraces_for_another_input_dtype() -> None:
    """The trace bakes ``x.dtype`` in: the float32 trace must not serve the float64 model."""
    model = CastsBack()
    lrp(model, torch.randn(2, 4), target=0)
    model.double()
    x = torch.randn(2, 4, dtype=torch.float64)
    relevance = lrp(model, x, target=0, composite=LRP_0)
    assert relevance.dtype == torch.float64
    with torch.no_grad():
        logit, bias = model(x)[:, 0], model.head.bias[0] + model.head.weight[0] @ model.mix.bias
    torch.testing.assert_close(relevance.sum(1), logit - bias)  # the biases absorb their shares


class DataBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: refused
            x = -x
        return self.linear(x)


def test_data_dependent_control_flow_names_the_source_line() -> None:
    model = DataBranch().train()
    before = model_state(model)
    with pytest.raises(UnsupportedLayerError, match=r"test_lrp_tracing\.py:\d+ \('if x\.sum\(\) > 0:"):
        lrp(model, torch.randn(2, 4), target=0)
    assert_same_state(before, model_state(model))


class Attention(nn.Module):
    """Self-attention through F.scaled_dot_product_attention (traced as its plain ops) with a
    head split by shape arithmetic and a causal mask."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24, bias=False)
        self.head = nn.Linear(8, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, 2, width // 2).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head(y.transpose(1, 2).reshape(batch, tokens, width).mean(1))


def test_scaled_dot_product_attention_is_traced_as_plain_ops() -> None:
    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(2, 5, 8)
    relevance, layers = lrp(model, x, target=0, composite="epsilon", return_layer_relevances=True)
    assert torch.isfinite(relevance).all()
    names = " ".join(layers)
    assert "softmax" in names and "masked_fill" in names and "matmul" in names
    assert math.isfinite(float(relevance.sum()))


class CachesOnFirstCall(nn.Module):
    """Keeps a value on the module the first time it runs, as timm's LeViT and EfficientFormerV2
    keep their attention biases in ``attention_bias_cache``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.bias_table = nn.Parameter(torch.randn(3))
        self.cache: dict[str, torch.Tensor] = {}
        self._private: dict[str, torch.Tensor] = {}
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "bias" not in self.cache:
            self.cache["bias"] = self.bias_table * 2
        if "bias" not in self._private:
            self._private["bias"] = self.bias_table
        self.calls.append(1)
        return self.linear(x) + self.cache["bias"] - self._private["bias"]


def test_the_trace_leaves_no_proxy_in_the_model() -> None:
    """LRP as the model's first call: the trace writes a proxy into the module's cache, which the
    model's own forward then returned (a Proxy instead of logits); the module's plain attributes
    are put back after the trace."""
    model = CachesOnFirstCall().eval()
    x = torch.randn(2, 4)
    relevance = lrp(model, x, target=1)
    assert torch.isfinite(relevance).all()
    assert all(isinstance(value, torch.Tensor) for value in [*model.cache.values(), *model._private.values()])
    assert isinstance(model(x), torch.Tensor)
