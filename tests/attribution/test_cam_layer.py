"""``cam_layer`` (the CAM family's ``layer=None``): which layer it picks on hand-made models whose
answer is known by construction, and on real architectures; the map it gives equals Grad-CAM on
that layer done by hand (channels-last maps transposed, ViT tokens laid out on their grid)."""

from __future__ import annotations

import pytest
import real_models
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

import fastxai as fx
from fastxai.attribution.cam_layer import cam_layer

pytestmark = pytest.mark.usefixtures("one_thread")


def _grad_cam_by_hand(model: nn.Module, layer: nn.Module, x: torch.Tensor, to_maps) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """relu(sum_k mean_s(dF/dA_k) A_k) with A the layer's output laid out by ``to_maps`` [B, K, h, w]."""
    model.eval()
    kept = {}
    handle = layer.register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    leaf = x.clone().requires_grad_(True)
    output = fx._model.flat_outputs(model, leaf)
    handle.remove()
    (grads,) = torch.autograd.grad(output.gather(1, output.argmax(1, keepdim=True)).sum(), kept["a"])
    a, g = to_maps(kept["a"].detach()), to_maps(grads)
    return (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).relu()


class ChannelsLast(nn.Module):
    """conv -> [B, h, w, C] (NHWC, as timm's Swin) -> LayerNorm -> mean over the grid -> linear."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, channels, 2, stride=2)
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2)))


class TinyViT(nn.Module):
    """Patches -> [class token, 4x4 patch tokens] -> norm1 -> attention -> norm2 -> MLP -> head on
    the class token (``pool="cls"``) or on the mean of the tokens (``pool="mean"``)."""

    def __init__(self, pool: str = "cls", dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool = pool
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)
        normed = self.norm1(tokens)
        tokens = tokens + self.attention(normed, normed, normed, need_weights=False)[0]
        tokens = self.norm(tokens + self.mlp(self.norm2(tokens)))
        return self.head(tokens[:, 0] if self.pool == "cls" else tokens.mean(1))


def _tokens(prefix: int, grid: tuple[int, int]):  # type: ignore[no-untyped-def]
    return lambda t: t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)


def test_a_cnn_takes_its_last_grid_layer_and_the_map_is_the_named_layers() -> None:
    model = small_cnn(seed=1, channels=3).train()
    before = model_state(model)
    x = torch.randn(2, 3, 8, 8)
    found = cam_layer(model, x)
    assert (found.name, found.layout, found.grid, found.reshape) == ("6", "channels_first", (4, 4), None)
    assert found.module is model[6]
    assert_same_state(before, model_state(model))
    for method in ("grad_cam", "layer_cam"):  # (score_cam's softmax runs over the last dim: not flat)
        torch.testing.assert_close(
            fx.cam(model, x, 2, method=method), fx.cam(model, x, 2, layer="6", method=method)
        )
    assert_same_state(before, model_state(model))


def test_a_last_stage_of_one_position_is_passed_over() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 6, 8, stride=8),
        nn.Flatten(),
        nn.Linear(6, 2),
    )
    assert cam_layer(model, torch.randn(1, 3, 8, 8)).name == "1"  # layer 2 is 1x1


def test_channels_last_maps_are_transposed() -> None:
    model = ChannelsLast()
    x = torch.randn(2, 3, 8, 8)
    found = cam_layer(model, x)
    assert (found.name, found.layout, found.grid) == ("norm", "channels_last", (4, 4))
    expected = _grad_cam_by_hand(model, model.norm, x, lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(fx.grad_cam(model, x), expected)


def test_a_class_token_vit_takes_the_norm_before_its_last_attention() -> None:
    model = TinyViT("cls")
    x = torch.randn(2, 3, 16, 16)
    found = cam_layer(model, x)
    # norm2, the MLP and the final norm act per token: the class token's score ignores the patches there
    assert (found.name, found.layout, found.grid, found.prefix_tokens) == ("norm1", "tokens", (4, 4), 1)
    torch.testing.assert_close(
        fx.grad_cam(model, x), _grad_cam_by_hand(model, model.norm1, x, _tokens(1, (4, 4)))
    )
    mean_pooled = TinyViT("mean")
    assert cam_layer(mean_pooled, x).name == "norm"  # every token reaches a mean-pooled head


def test_channel_order_from_the_neighbours_or_an_error() -> None:
    # [B, 4, 4, 4] fits channels first and last; alone it is refused, after a conv it is channels first
    alone = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ValueError, match="no layer of the model outputs a grid"):
        cam_layer(alone, torch.randn(1, 3, 16, 16))
    after_conv = nn.Sequential(
        nn.Conv2d(3, 16, 2, stride=2), nn.Conv2d(16, 4, 2, stride=2), nn.Flatten(), nn.Linear(64, 2)
    )
    found = cam_layer(after_conv, torch.randn(1, 3, 16, 16))
    assert (found.name, found.layout) == ("1", "channels_first")


def test_refusals() -> None:
    model = small_cnn(channels=3)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="reshape needs a named layer"):
        fx.grad_cam(model, x, reshape=lambda t: t)
    with pytest.raises(TypeError, match=r"nn\.Module"):
        cam_layer(lambda t: model(t), x)
    with pytest.raises(ValueError, match=r"\[B, C, \*spatial\]"):
        cam_layer(nn.Linear(3, 2), torch.randn(2, 3))
    dead = small_cnn(channels=3)
    nn.init.zeros_(dead[9].weight)  # the score no longer depends on the inputs
    with pytest.raises(ValueError, match="zero-initialised head"):
        fx.grad_cam(dead, x)
    shared = nn.Conv2d(3, 3, 3, padding=1)  # runs twice: a hook cannot tell the two outputs apart
    twice = nn.Sequential(shared, shared, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="no layer"):
        cam_layer(twice, x)


# ---- real architectures (random weights, nothing downloaded) -------------------------------------


def _torchvision_vit() -> nn.Module:
    model = real_models.torchvision().models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision starts the head at zero
    return model


def _timm(name: str, **config: object):  # type: ignore[no-untyped-def]
    return lambda: real_models.timm().create_model(name, pretrained=False, **config)


def _tv(name: str, **config: object):  # type: ignore[no-untyped-def]
    return lambda: getattr(real_models.torchvision().models, name)(num_classes=10, **config)


def _hf_vit() -> nn.Module:
    transformers = real_models.transformers()
    config = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config)


REAL = [
    ("resnet18", _tv("resnet18"), 64, "layer4", "channels_first", (2, 2)),
    ("resnet18-32px", _tv("resnet18"), 32, "layer3", "channels_first", (2, 2)),  # layer4 is 1x1
    ("densenet121", _tv("densenet121"), 64, "features", "channels_first", (2, 2)),
    ("densenet121-32px", _tv("densenet121"), 32, "features.transition3.conv", "channels_first", (2, 2)),
    (
        "googlenet",
        _tv("googlenet", aux_logits=False, init_weights=True),
        64,
        "inception5b",
        "channels_first",
        (2, 2),
    ),
    # the classifier's 1x1 convolution is the last grid: its maps are the class activation maps
    ("squeezenet1_0", _tv("squeezenet1_0"), 64, "classifier.1", "channels_first", (3, 3)),
    ("mobilenet_v3_small", _tv("mobilenet_v3_small"), 64, "features", "channels_first", (2, 2)),
    ("vit", _torchvision_vit, 32, "encoder.layers.encoder_layer_0.ln_1", "tokens", (4, 4)),
    (
        "timm-swin",
        _timm(
            "swin_tiny_patch4_window7_224",
            img_size=32,
            window_size=4,
            embed_dim=16,
            depths=(1, 1),
            num_heads=(1, 1),
            num_classes=5,
        ),
        32,
        "norm",
        "channels_last",
        (4, 4),
    ),
    ("timm-convnext_atto", _timm("convnext_atto", num_classes=10), 64, "stages", "channels_first", (2, 2)),
    ("hf-vit", _hf_vit, 16, "vit.layers.0.layernorm_before", "tokens", (4, 4)),
]


@pytest.mark.parametrize(
    ("make", "size", "name", "layout", "grid"), [r[1:] for r in REAL], ids=[r[0] for r in REAL]
)
def test_real_architectures(make, size: int, name: str, layout: str, grid: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = make()
    before = model_state(model)
    x = torch.randn(2, 3, size, size)
    found = cam_layer(model, x)
    assert (found.name, found.layout, found.grid) == (name, layout, grid)
    heat = fx.grad_cam(model, x)
    assert heat.shape == (2, 1, *grid) and bool(torch.isfinite(heat).all())
    assert_same_state(before, model_state(model))
    if layout != "channels_first":  # the layout is read right: the map is Grad-CAM on the transposed layer
        to_maps = (lambda t: t.permute(0, 3, 1, 2)) if layout == "channels_last" else _tokens(1, grid)
        torch.testing.assert_close(heat, _grad_cam_by_hand(model, found.module, x, to_maps))


def test_a_vit_with_register_tokens_reads_the_prefix_it_declares() -> None:
    # A class token and 4 registers before 4x4 patches: 21 tokens, which a class token and a
    # 5x4 grid would also read; timm's num_prefix_tokens says 5.
    torch.manual_seed(0)
    model = real_models.timm().create_model(
        "vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, reg_tokens=4, depth=2,
        embed_dim=16, num_heads=2, num_classes=5,
    )  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    found = cam_layer(model, x)
    assert (found.layout, found.grid, found.prefix_tokens) == ("tokens", (4, 4), 5)
    heat = fx.grad_cam(model, x)
    torch.testing.assert_close(heat, _grad_cam_by_hand(model, found.module, x, _tokens(5, (4, 4))))


def test_the_command_line_names_the_layer_cam_layer_finds() -> None:
    from fastxai.cli import CliError, method_kwargs
    from fastxai.digits import digits_cnn

    model = digits_cnn()
    x = torch.randn(2, 1, 8, 8)
    assert method_kwargs("grad_cam", model, x)["layer"] == cam_layer(model, x).name
    # a channels-last layer needs its reshape, which each call infers again
    assert "layer" not in method_kwargs("score_cam", ChannelsLast(), torch.randn(1, 3, 8, 8))
    with pytest.raises(CliError, match="grad_cam needs inputs"):
        method_kwargs("grad_cam", model, torch.randn(2, 64))


def test_cam_methods_take_a_tuple_target_into_a_dense_output() -> None:
    """A segmentation-like [B, K, H, W] output: (k, i, j) is the flat index k*H*W + i*W + j."""
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1), nn.Flatten())
    dense = nn.Sequential(flat, nn.Unflatten(1, (2, 8, 8)))
    x = torch.randn(2, 3, 8, 8)
    for method in ("grad_cam", "layer_cam"):  # (score_cam's softmax runs over the last dim: not flat)
        torch.testing.assert_close(
            fx.cam(dense, x, [(1, 2, 3), (0, 7, 7)], method=method),
            fx.cam(flat, x, torch.tensor([64 + 19, 63]), method=method),
        )
    with pytest.raises(ValueError, match="target=None"):
        fx.grad_cam(dense, x)
