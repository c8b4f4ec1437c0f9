"""The CAM family: closed forms on a conv-GAP-linear net, Captum, Score-CAM by a loop, tokens, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.attribution import class_activation as cams
from fastxai.attribution.score_cam import score_cam


def _gap_net(seed: int = 0) -> nn.Sequential:
    """conv (the layer) -> global average pool -> linear: dF_c/dA_k(s) = W[c, k] / S exactly."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).double()


def _closed_forms(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    conv, linear = model[0], model[3]
    a = F.conv2d(x, conv.weight, conv.bias, padding=1)  # [B, K, H, W]
    size = a.shape[2] * a.shape[3]
    g = (linear.weight[target] / size).detach()  # [B, K], constant over positions
    g_map = g[:, :, None, None]
    total = a.sum((2, 3))
    plus_plus = size * g.clamp_min(0) / (2 + total * g)  # sum_s alpha relu(G), alpha = 1 / (2 + sum A G)
    return {
        "grad_cam": (g_map * a).sum(1, keepdim=True),
        "hires_cam": (g_map * a).sum(1, keepdim=True),
        "xgrad_cam": (g_map * a).sum(1, keepdim=True),
        "layer_cam": (g_map.clamp_min(0) * a).sum(1, keepdim=True),
        "grad_cam_plus_plus": (plus_plus[:, :, None, None] * a).sum(1, keepdim=True),
    }


@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_plus_plus", "xgrad_cam", "hires_cam", "layer_cam"])
def test_closed_forms_on_a_gap_net(method: str) -> None:
    model = _gap_net()
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    expected = _closed_forms(model, x, target)[method].detach()
    got = cams.cam(model, x, target, layer="0", method=method, relu=False, chunk_size=2)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(cams.cam(model, x, target, layer=model[0], method=method), expected.relu())


def test_pixelwise_methods_differ_from_grad_cam_on_a_spatial_head() -> None:
    """Hand check of HiResCAM and XGrad-CAM where G varies over positions: f = sum_s v(s) A_0(s)."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1, bias=False)
            self.v = nn.Parameter(torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.conv(x)
            return torch.stack([(a[:, 0] * self.v).sum((1, 2)), a[:, 1].sum((1, 2))], 1)

    model = Head().double()
    with torch.no_grad():
        model.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64)
    a0, v = x[0, 0], model.v.detach()
    hires = v * a0  # G_0 = v, G_1 = 0 for class 0
    xgrad = (a0 * v).sum() / a0.sum() * a0
    got_hires = cams.hires_cam(model, x, 0, layer="conv", relu=False)
    got_xgrad = cams.xgrad_cam(model, x, 0, layer="conv", relu=False)
    torch.testing.assert_close(got_hires[0, 0], hires)
    torch.testing.assert_close(got_xgrad[0, 0], xgrad)


@pytest.mark.parametrize("relu", [False, True])
def test_grad_cam_matches_captum(relu: bool) -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer")
    model = small_cnn(seed=2).eval()
    x = torch.randn(3, 1, 8, 8)
    target = torch.tensor([3, 1, 7])
    expected = captum_attr.LayerGradCam(model, model[4]).attribute(x, target, relu_attributions=relu)
    torch.testing.assert_close(cams.grad_cam(model, x, target, layer="4", relu=relu), expected.detach())
    up = captum_attr.LayerAttribution.interpolate(expected.detach(), (8, 8), "bilinear")
    torch.testing.assert_close(cams.grad_cam(model, x, target, layer="4", relu=relu, upsample=True), up)


def test_guided_grad_cam_matches_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer")
    model = small_cnn(seed=6).eval()
    x = torch.randn(2, 1, 8, 8)
    with pytest.warns(UserWarning):
        expected = captum_attr.GuidedGradCam(model, model[4]).attribute(x, 5)
    got = cams.guided_grad_cam(model, x, 5, layer="4", upsample="nearest")
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-9)


def test_score_cam_matches_a_loop_over_channels() -> None:
    """The authors' algorithm, one masked input at a time."""
    model = small_cnn(seed=1).eval()
    x = torch.randn(2, 1, 8, 8)
    target = torch.tensor([2, 5])
    activations = model[:5](x)  # the output of the layer model[4]
    expected = torch.zeros(2, 1, 4, 4)
    with torch.no_grad():
        for row in range(2):
            for channel in range(activations.shape[1]):
                up = F.interpolate(activations[row : row + 1, channel : channel + 1], (8, 8), mode="bilinear")
                if up.max() == up.min():
                    continue
                mask = (up - up.min()) / (up.max() - up.min())
                weight = model(x[row : row + 1] * mask).softmax(1)[0, target[row]]
                expected[row, 0] += weight * activations[row, channel]
    expected = expected.relu()
    for chunk in (3, 8, 100):
        got = score_cam(model, x, target, layer="4", chunk_size=chunk)
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-7)
    via_cam = cams.cam(model, x, target, layer="4", method="score_cam", upsample=True)
    torch.testing.assert_close(via_cam, F.interpolate(expected.detach(), (8, 8), mode="bilinear"))


class TinyTokenModel(nn.Module):
    """Patches of 2x2 -> tokens [B, 1 + 4, D] with a class token -> mean of tokens -> linear."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        return self.head(self.block(tokens).mean(1))


def _tokens_to_maps(tokens: torch.Tensor) -> torch.Tensor:
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], 2, 2)


def test_reshape_turns_tokens_into_maps() -> None:
    model = TinyTokenModel().eval()
    x = torch.randn(2, 1, 4, 4)
    leaf = x.clone()
    acts = {}
    handle = model.block.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    out = model(leaf)
    handle.remove()
    (grads,) = torch.autograd.grad(out[:, 1].sum(), acts["a"])
    a, g = _tokens_to_maps(acts["a"].detach()), _tokens_to_maps(grads)
    expected = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).relu()
    got = cams.grad_cam(model, x, 1, layer="block", reshape=_tokens_to_maps)
    torch.testing.assert_close(got, expected)
    upsampled = cams.layer_cam(model, x, 1, layer="block", reshape=_tokens_to_maps, upsample=True)
    assert upsampled.shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="reshape"):
        cams.grad_cam(model, x, 1, layer="head")


def test_target_none_is_the_prediction_and_chunks_do_not_matter() -> None:
    model = small_cnn(seed=3).eval()
    x = torch.randn(5, 1, 8, 8)
    predicted = model(x).argmax(1)
    for method in cams.METHODS:
        expected = cams.cam(model, x, predicted, layer="6", method=method)
        torch.testing.assert_close(cams.cam(model, x, None, layer="6", method=method, chunk_size=2), expected)


def test_errors_name_the_argument_and_state_is_restored() -> None:
    model = small_cnn(seed=4).train()
    model[6].inplace = True
    before = model_state(model)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"layer 'conv9'.*valid names include '0', '1'"):
        cams.grad_cam(model, x, layer="conv9")
    with pytest.raises(ValueError, match="not a submodule"):
        cams.grad_cam(model, x, layer=nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match=r"layer output must be \[batch=2, channels, \*spatial\]"):
        cams.grad_cam(model, x, layer="9")
    with pytest.raises(ValueError, match="method"):
        cams.cam(model, x, layer="4", method="eigen_cam")
    with pytest.raises(ValueError, match="upsample"):
        cams.grad_cam(model, x, layer="4", upsample="cubic")
    with pytest.raises(TypeError, match="reshape"):
        cams.grad_cam(model, x, layer="4", reshape=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layer ran more than once"):
        shared = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Linear(64, 2))
        cams.grad_cam(nn.Sequential(shared[0], shared[0], shared[1], shared[2]), x, layer="0")
    assert_same_state(before, model_state(model))
    # In-place ReLU right after the layer must not change the captured activation.
    for method in cams.METHODS:
        cams.cam(model, x, 1, layer="4", method=method)
    assert_same_state(before, model_state(model))
    clean = small_cnn(seed=4).eval()
    torch.testing.assert_close(cams.grad_cam(model, x, 1, layer="4"), cams.grad_cam(clean, x, 1, layer="4"))
