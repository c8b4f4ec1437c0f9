"""Conservation, functional models (ResNet block, cat, flatten), the AttnLRP transformer,
BatchNorm merging and its canonizer, composites, backends, unsupported layers and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params
from models import small_cnn
from torch import nn

import fastxai.lrp as lrp
from fastxai.lrp import Composite, MergeBatchNorm, UnsupportedLayerError, rules
from fastxai.lrp._linear import LINEAR_TYPES

EXACT = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)  # LRP-0 everywhere


def _zero_mean_batchnorm(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)  # no bias, no mean: the merged layer has no bias


def vgg_like(bias: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4, affine=True), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(6 * 2 * 2, 8, bias=bias), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3, bias=bias),
    )  # fmt: skip
    _zero_mean_batchnorm(model[1])  # type: ignore[arg-type]
    with torch.no_grad():
        model[1].bias.zero_()  # type: ignore[union-attr]
    return model.eval()


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.side = nn.Conv2d(4, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        y = F.relu(x + y)
        return torch.cat([y, self.side(y)], dim=1)


class FunctionalResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.block = Block()
        self.head = nn.Linear(6 * 4 * 4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(torch.relu(self.stem(x)))
        y = F.max_pool2d(y, 2)
        return self.head(torch.flatten(y, 1))


class TinyEncoder(nn.Module):
    """Tokens [B, T, D]: LayerNorm, single-head self-attention, residual, LayerNorm, MLP,
    residual, mean over tokens, linear head; no biases (for conservation)."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.norm1 = nn.LayerNorm(dim, bias=False)
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.LayerNorm(dim, bias=False)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim, bias=False), nn.Linear(2 * dim, dim, bias=False)
        self.head = nn.Linear(dim, classes, bias=False)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        scores = self.q(h) @ self.k(h).transpose(-2, -1) * self.scale
        attention = scores.softmax(dim=-1)
        x = x + self.proj(attention @ self.v(h))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(dim=1))


def _logit(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[:, target]


def test_conservation_layer_by_layer_sequential() -> None:
    model = vgg_like()
    x = torch.rand(3, 2, 8, 8)
    R, layers = lrp(model, x, target=2, composite=EXACT, return_layer_relevances=True)
    errors = lrp.conservation(layers, _logit(model, x, 2))
    assert set(errors) >= {"0", "1", "4", "8", "11"}
    for name, error in errors.items():
        torch.testing.assert_close(error, torch.zeros(3), atol=1e-5, rtol=0, msg=f"layer {name}")
    torch.testing.assert_close(R.flatten(1).sum(1), _logit(model, x, 2), atol=1e-5, rtol=1e-5)


def test_conservation_with_composite_plus_flat() -> None:
    model = vgg_like()
    composite = Composite(
        [(nn.Conv2d, rules.ZPlus(0.0)), (nn.Linear, rules.Epsilon(0.0))],
        [(LINEAR_TYPES, rules.Flat(0.0))],
        stabilizer=0.0,
    )
    x = torch.rand(2, 2, 8, 8)
    R = lrp(model, x, target=0, composite=composite)
    torch.testing.assert_close(R.flatten(1).sum(1), _logit(model, x, 0), atol=1e-5, rtol=1e-4)


def test_biases_absorb_relevance() -> None:
    model = vgg_like(bias=True)
    x = torch.rand(2, 2, 8, 8)
    R = lrp(model, x, target=0, composite=EXACT)
    assert (R.flatten(1).sum(1) - _logit(model, x, 0)).abs().max() > 1e-4


def test_functional_resnet_block_conserves_and_splits_sums() -> None:
    model = FunctionalResNet().eval()
    x = torch.rand(2, 1, 8, 8)
    R, layers = lrp(model, x, target=1, composite=EXACT, return_layer_relevances=True)
    torch.testing.assert_close(R.flatten(1).sum(1), _logit(model, x, 1), atol=1e-5, rtol=1e-5)
    add = next(name for name in layers if name.startswith("add"))
    # the sum's relevance equals what its two inputs received from it
    x_in = torch.relu(model.stem(x))
    y = model.block.conv2(torch.relu(model.block.conv1(x_in)))
    z = (x_in + y).detach()
    share_x = (x_in * layers[add] / z).nan_to_num()
    torch.testing.assert_close(share_x.sum() + (y * layers[add] / z).nan_to_num().sum(), layers[add].sum())


def test_two_branch_sum_hand_derived() -> None:
    class TwoBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2, bias=False), nn.Linear(3, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(x)

    torch.manual_seed(5)
    model = TwoBranch().double()
    x = torch.rand(1, 3, dtype=torch.float64)
    R = lrp(model, x, target=0, composite=EXACT)
    # R_x = x * w_a0 * (a/z) R / a + x * w_b0 ... = x * (w_a0 + w_b0) when R = z
    expected = x * (model.a.weight[0] + model.b.weight[0]).detach()
    torch.testing.assert_close(R, expected)


def test_transformer_attnlrp_conservation() -> None:
    model = TinyEncoder().eval()
    x = torch.randn(2, 5, 8)
    R, layers = lrp(model, x, target=0, composite=EXACT, return_layer_relevances=True)
    logit = _logit(model, x, 0)
    errors = lrp.conservation(layers, logit)
    # every cut after the softmax conserves exactly (sums, LayerNorm, MLP, matmul 50/50, mean)
    for name in ("add", "add_1", "mean", "head"):
        torch.testing.assert_close(errors[name], torch.zeros(2), atol=1e-5, rtol=0, msg=name)
    # the softmax rule absorbs a little (AttnLRP is conservative up to it)
    absorbed = (R.flatten(1).sum(1) - logit).abs()
    assert (absorbed < 0.1 * R.abs().flatten(1).sum(1)).all(), absorbed
    assert R.shape == x.shape and torch.isfinite(R).all()
    softmax = next(name for name in layers if name.startswith("softmax"))
    assert layers[softmax].shape == (2, 5, 5)


def test_merged_batchnorm_equals_canonized_model() -> None:
    model = small_cnn(pool=nn.AvgPool2d).eval()
    x = torch.rand(2, 1, 8, 8)
    merged = lrp(model, x, target=3, composite="epsilon_plus")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with MergeBatchNorm(model):
        canonized = lrp(model, x, target=3, composite="epsilon_plus")
    torch.testing.assert_close(merged, canonized, atol=1e-6, rtol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_canonizer_restores_on_error_and_bias_none() -> None:
    model = vgg_like()  # convs without bias
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"), MergeBatchNorm(model):
        assert model[0].bias is not None
        raise RuntimeError("boom")
    assert model[0].bias is None
    assert model.state_dict().keys() == before.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_model_state_restored_also_on_error() -> None:
    model = vgg_like().train()
    model[0].weight.requires_grad_(True)
    flags = [m.training for m in model.modules()]
    lrp(model, torch.rand(1, 2, 8, 8), target=0)
    assert [m.training for m in model.modules()] == flags
    with pytest.raises(ValueError, match="target"):
        lrp(model, torch.rand(1, 2, 8, 8), target=7)
    assert [m.training for m in model.modules()] == flags
    assert model[0].weight.requires_grad and not hasattr(model[0], "rule")


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box",
                                       "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat"])  # fmt: skip
def test_composites_resolve_their_rules(composite: str) -> None:
    model = vgg_like(bias=True)
    x = torch.rand(2, 2, 8, 8)
    R = lrp(model, x, target=1, composite=composite)
    expected = {
        "epsilon": rules.Epsilon, "epsilon_plus": rules.ZPlus, "epsilon_plus_flat": rules.Flat,
        "epsilon_gamma_box": rules.ZBox, "epsilon_alpha2_beta1": rules.AlphaBeta,
        "epsilon_alpha2_beta1_flat": rules.Flat,
    }[composite]  # fmt: skip
    first = lrp.get_composite(composite).rule("0", model[0], True)
    assert isinstance(first, expected)
    assert isinstance(lrp.get_composite(composite).rule("8", model[8], False), rules.Epsilon)
    same = lrp(model, x, target=1, composite=lrp.get_composite(composite))
    torch.testing.assert_close(R, same)


def test_chunk_size_does_not_change_the_result() -> None:
    model = FunctionalResNet().eval()
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(lrp(model, x, chunk_size=2), lrp(model, x), atol=1e-6, rtol=1e-5)


def test_maxpool_average_mode_and_target_none() -> None:
    model = vgg_like()
    x = torch.rand(2, 2, 8, 8)
    predicted = model(x).argmax(1)
    R = lrp(model, x, composite=EXACT, maxpool="average")
    with torch.no_grad():
        torch.testing.assert_close(
            R.flatten(1).sum(1), model(x).gather(1, predicted[:, None])[:, 0], atol=1e-5, rtol=1e-4
        )


def test_functional_adaptive_max_pool_equals_the_module() -> None:
    """F.adaptive_max_pool2d is winner-take-all like nn.AdaptiveMaxPool2d; asking it for the
    indices (which the model would then read) is refused by name."""

    class Functional(nn.Module):
        def __init__(self, conv: nn.Conv2d, fc: nn.Linear, **options: bool) -> None:
            super().__init__()
            self.conv, self.fc, self.options = conv, fc, options

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = F.adaptive_max_pool2d(F.relu(self.conv(x)), (2, 3), **self.options)
            return self.fc(torch.flatten(pooled, 1))

    torch.manual_seed(7)
    conv, fc = nn.Conv2d(2, 3, 3, bias=False), nn.Linear(3 * 6, 4, bias=False)
    modules = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveMaxPool2d((2, 3)), nn.Flatten(), fc).eval()
    x = torch.rand(2, 2, 9, 9)
    expected = lrp(modules, x, target=1, composite=EXACT)
    got = lrp(Functional(conv, fc).eval(), x, target=1, composite=EXACT)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got.flatten(1).sum(1), _logit(modules, x, 1), atol=1e-5, rtol=1e-4)
    with pytest.raises(UnsupportedLayerError, match="indices"):
        lrp(Functional(conv, fc, return_indices=True).eval(), x, target=1)


def test_local_response_norm_taylor_rule_conserves() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.ReLU(),
        nn.LocalResponseNorm(3),
        nn.Flatten(),
        nn.Linear(4 * 16, 2, bias=False),
    ).eval()
    x = torch.rand(2, 1, 6, 6)
    R = lrp(model, x, target=0, composite=EXACT)
    torch.testing.assert_close(R.flatten(1).sum(1), _logit(model, x, 0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend, device", backend_params(include_reference=True))
def test_backends_agree(backend: str, device: str) -> None:
    model = FunctionalResNet().eval().to(device)
    x = torch.rand(3, 1, 8, 8, device=device)
    expected = lrp(model, x, target=0, composite="epsilon_alpha2_beta1_flat", backend="reference")
    got = lrp(model, x, target=0, composite="epsilon_alpha2_beta1_flat", backend=backend)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_unsupported_module_is_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.GRUCell(4, 4))
    with pytest.raises(UnsupportedLayerError, match="GRUCell"):
        lrp(model, torch.rand(2, 4))


def test_unsupported_function_is_named() -> None:
    class Sorts(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cumsum(x, 1)

    with pytest.raises(UnsupportedLayerError, match="cumsum"):
        lrp(Sorts(), torch.rand(2, 4))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"composite": "no_such"}, ValueError, "composite"),
        ({"composite": {"features.9": rules.Epsilon()}}, ValueError, "features.9"),
        ({"composite": {nn.Linear: "epsilon"}}, TypeError, "rules"),
        ({"composite": {"2": rules.Gamma()}}, ValueError, "does not apply"),
        ({"target": 2.5}, TypeError, "target"),
        ({"target": torch.tensor([0, 1, 2])}, ValueError, "target"),
        ({"maxpool": "max"}, ValueError, "maxpool"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_input_names_the_argument(kwargs: dict, error: type, message: str) -> None:
    model = vgg_like()
    with pytest.raises(error, match=message):
        lrp(model, torch.rand(2, 2, 8, 8), **{"target": 0, **kwargs})


def test_bad_inputs_tensor() -> None:
    with pytest.raises(TypeError, match="inputs"):
        lrp(vgg_like(), [[1.0]])
    with pytest.raises(ValueError, match="ZBox"):
        lrp(vgg_like(), torch.rand(1, 2, 8, 8) + 2, composite="epsilon_gamma_box")
