"""The relevance of the ops that ``fastxai.lrp._maps`` moves back through their own backward:
each model here computes the same function twice, once with the op and once with ops the graph
engine already had rules for, and both must give the same relevance (the rule the op's algebra
fixes); with LRP-0 in float64 and no biases, relevance is conserved exactly. Ops that must see
constants (a convolution's weight) are refused, naming the node, when they see the input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastxai.lrp import Composite, UnsupportedLayerError, lrp, rules
from fastxai.lrp._linear import LINEAR_TYPES

EXACT = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)  # LRP-0 everywhere


class Pair(nn.Module):
    """``head(body(x))`` with ``body`` one of two formulations of the same map."""

    def __init__(self, body: object, channels: int, size: int, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, channels, 3, padding=1, bias=False)
        self.body = body
        self.head = nn.Linear(size, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(torch.relu(self.conv(x))), 1))


def _relevance(body: object, channels: int, size: int, x: torch.Tensor) -> torch.Tensor:
    model = Pair(body, channels, size).double().eval()
    relevance = lrp(model, x, target=1, composite=EXACT)
    assert isinstance(relevance, torch.Tensor)
    with torch.no_grad():
        total = model(x)[:, 1]
    torch.testing.assert_close(relevance.flatten(1).sum(1), total, rtol=1e-9, atol=1e-12)  # conserved
    return relevance


X = torch.rand(2, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class RepeatInterleave(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.repeat_interleave(2, dim=1)


class StackedCopies(nn.Module):  # the same elements as RepeatInterleave, by stack and flatten
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([h, h], dim=2).flatten(1, 2)


class Tiled(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tile(h.flip(-1), (1, 2, 1, 1))


class CatCopies(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flipped = torch.cat([h[..., i : i + 1] for i in (3, 2, 1, 0)], -1)
        return torch.cat([flipped, flipped], dim=1)


class Amax(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.amax(dim=-1, keepdim=True)


class MaxPooledRows(nn.Module):  # max over the last dimension as max pooling
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(h, (1, 4))


@pytest.mark.parametrize(
    ("op", "reference", "channels", "size"),
    [
        (RepeatInterleave(), StackedCopies(), 3, 96),
        (Tiled(), CatCopies(), 3, 96),
        (Amax(), MaxPooledRows(), 3, 12),
    ],
    ids=["repeat_interleave", "tile_flip", "amax"],
)
def test_moves_return_each_copy_to_its_source(
    op: nn.Module, reference: nn.Module, channels: int, size: int
) -> None:
    torch.testing.assert_close(_relevance(op, channels, size, X), _relevance(reference, channels, size, X))


class Unfolded(nn.Module):
    """Overlapping 2x2 windows (nn.Unfold, stride 1): an element is copied into up to 4 windows."""

    def __init__(self) -> None:
        super().__init__()
        self.unfold = nn.Unfold(2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.unfold(h)


class UnfoldedByHand(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        windows = [h[:, :, i : i + 3, j : j + 3] for i in range(2) for j in range(2)]  # [B, C, 3, 3] each
        return torch.stack(windows, dim=2).flatten(3).flatten(1, 2)  # [B, C*4, 9], as nn.Unfold orders it


def test_unfold_moves_overlapping_windows_back() -> None:
    torch.testing.assert_close(_relevance(Unfolded(), 2, 72, X), _relevance(UnfoldedByHand(), 2, 72, X))


class ReflectPad(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.pad(h, (1, 1, 0, 0), mode="reflect")


class ReflectPadByHand(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h[..., 1:2], h, h[..., 2:3]], dim=-1)


def test_reflect_padding_copies_move_back() -> None:
    torch.testing.assert_close(_relevance(ReflectPad(), 2, 48, X), _relevance(ReflectPadByHand(), 2, 48, X))


def _bilinear_matrix(size: int) -> torch.Tensor:
    """The 1-d linear interpolation to twice the size (align_corners=False) as a matrix."""
    eye = torch.eye(size, dtype=torch.float64).view(size, 1, size)
    return F.interpolate(eye, scale_factor=2, mode="linear", align_corners=False).view(size, 2 * size).T


class Upsampled(nn.Module):
    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.up = nn.Upsample(scale_factor=2, mode="bilinear")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.functional:
            return F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        return self.up(h)


class UpsampledByLinear(nn.Module):
    """The same bilinear upsampling as two nn.Linear maps (rows, then columns) without bias."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Linear(4, 8, bias=False)
        self.cols = nn.Linear(4, 8, bias=False)
        with torch.no_grad():
            self.rows.weight.copy_(_bilinear_matrix(4))
            self.cols.weight.copy_(_bilinear_matrix(4))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.rows(self.cols(h).transpose(-2, -1)).transpose(-2, -1)


@pytest.mark.parametrize("functional", [True, False], ids=["F.interpolate", "nn.Upsample"])
def test_interpolation_takes_the_epsilon_rule_of_its_linear_map(functional: bool) -> None:
    # the two 1-d maps in sequence are one linear map: LRP-0 through both equals LRP-0 through it
    ours = _relevance(Upsampled(functional), 2, 128, X)
    torch.testing.assert_close(ours, _relevance(UpsampledByLinear().double(), 2, 128, X))


class StandardisedConv(nn.Module):
    """A convolution whose weight is standardised on every call (NFNet's ScaledStdConv2d)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

    def standardised(self) -> torch.Tensor:
        mean = self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return (self.weight - mean) / self.weight.std(dim=(1, 2, 3), keepdim=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, self.standardised(), padding=1)


def test_functional_convolution_with_a_computed_weight_equals_the_module() -> None:
    functional = StandardisedConv().double()
    module = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    with torch.no_grad():
        module.weight.copy_(functional.standardised())
    torch.testing.assert_close(_relevance(functional, 3, 64, X), _relevance(module, 3, 64, X))


class InputDependentWeight(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, h[:1, :, :3, :3].expand(3, -1, -1, -1).contiguous(), padding=1)


def test_convolution_with_an_input_dependent_weight_is_refused() -> None:
    model = Pair(InputDependentWeight(), 3, 48).double().eval()
    with pytest.raises(UnsupportedLayerError, match=r"conv2d.*input-dependent argument"):
        lrp(model, X, target=0, composite=EXACT)


class Affine(nn.Module):
    """ResMLP's Affine, alpha * x + beta, by addcmul or by mul and add."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        torch.manual_seed(4)
        self.alpha = nn.Parameter(torch.rand(1, 3, 1, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(1, 3, 1, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, self.alpha, h) if self.fused else self.beta + self.alpha * h


def test_addcmul_is_the_epsilon_rule_of_its_sum() -> None:
    fused, plain = Pair(Affine(True), 3, 48).double().eval(), Pair(Affine(False), 3, 48).double().eval()
    ours, theirs = lrp(fused, X, target=2, composite=EXACT), lrp(plain, X, target=2, composite=EXACT)
    torch.testing.assert_close(ours, theirs)  # the bias beta absorbs its share in both


class Einsum(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = h[:, :2], h[:, 1:]  # two input-dependent operands: half each, as matmul
        return torch.einsum("bcij,bcjk->bcik", a, b) if self.fused else a @ b


def test_einsum_of_two_activations_splits_as_matmul() -> None:
    torch.testing.assert_close(_relevance(Einsum(True), 3, 32, X), _relevance(Einsum(False), 3, 32, X))


class StarRelu(nn.Module):
    """MetaFormer's StarReLU, ``s * relu(x) ** 2 + b``, with the square as a power or a product."""

    def __init__(self, power: bool) -> None:
        super().__init__()
        self.power = power

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        r = torch.relu(h)
        return 0.8 * (r**2 if self.power else r * r)


class Negated(nn.Module):
    def __init__(self, neg: bool) -> None:
        super().__init__()
        self.neg = neg

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return -h if self.neg else h * -1.0


def test_power_and_negation_are_element_wise() -> None:
    # r * r: the uniform rule gives each factor half, both halves reach r: its own relevance
    torch.testing.assert_close(_relevance(StarRelu(True), 3, 48, X), _relevance(StarRelu(False), 3, 48, X))
    torch.testing.assert_close(_relevance(Negated(True), 3, 48, X), _relevance(Negated(False), 3, 48, X))


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on [B, C, H, W]: ``x + gamma * (x * x_n)``, ``x_n = ||x||_HW / mean_C``;
    with ``scale`` given, ``x_n`` is that constant instead (the same function at one input)."""

    def __init__(self, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.gamma = nn.Parameter(torch.rand(1, 3, 1, 1) + 0.5)
        self.scale = scale

    def statistic(self, h: torch.Tensor) -> torch.Tensor:
        norm = h.norm(p=2, dim=(2, 3), keepdim=True)
        return norm / (norm.mean(dim=1, keepdim=True) + 1e-6)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x_n = self.statistic(h) if self.scale is None else self.scale
        return h + self.gamma * (h * x_n)


def test_norm_statistics_are_constants_of_the_pass() -> None:
    """The GRN's ``x_n`` scales the activations and takes no relevance: the relevance equals that
    of the same model with ``x_n`` a constant at this input (``||x||`` was refused before)."""
    grn = Pair(GlobalResponseNorm(), 3, 48).double().eval()
    with torch.no_grad():
        hidden = torch.relu(grn.conv(X))
        scale = grn.body.statistic(hidden)
    frozen = Pair(GlobalResponseNorm(scale), 3, 48).double().eval()
    ours, theirs = lrp(grn, X, target=1, composite=EXACT), lrp(frozen, X, target=1, composite=EXACT)
    torch.testing.assert_close(ours, theirs)
    with torch.no_grad():
        total = grn(X)[:, 1]
    torch.testing.assert_close(ours.flatten(1).sum(1), total)  # conserved


class NormOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).norm(dim=1, keepdim=True)  # a capsule-style length as the score


def test_output_computed_from_statistics_is_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="computed from norms or standard deviations"):
        lrp(NormOutput().eval(), torch.randn(2, 4), target=0)


class ScaledInPlace(nn.Module):
    """``h.mul_(gain)`` and ``h.add_(shift)`` as statements (DM-NFNet's skip-init gain), or the
    same arithmetic out of place; the code goes on reading ``h``."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place
        self.gain = nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.in_place:
            h.mul_(self.gain)
            h.add_(h)
            return h
        h = h * self.gain
        return h + h


def test_in_place_updates_read_later_are_steps_of_their_own() -> None:
    ours = _relevance(ScaledInPlace(True), 3, 48, X)
    torch.testing.assert_close(ours, _relevance(ScaledInPlace(False), 3, 48, X))


class UpdatesAView(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h[:, :1].mul_(2.0)  # changes h through a view: the trace cannot see it
        return h


def test_an_update_through_a_view_is_refused() -> None:
    model = Pair(UpdatesAView(), 3, 48).double().eval()
    with pytest.raises(UnsupportedLayerError, match="does not reproduce"):
        lrp(model, X, target=0, composite=EXACT)


class MaxValues(nn.Module):
    """``max`` / ``min`` with a dim, the values picked from the (values, indices) they return."""

    def __init__(self, keepdim: bool, smallest: bool = False) -> None:
        super().__init__()
        self.keepdim, self.smallest = keepdim, smallest

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.smallest:
            return h.min(dim=-1, keepdim=self.keepdim).values
        return torch.max(h, -1, self.keepdim)[0] if self.keepdim else h.max(-1)[0]


class NegatedAmax(nn.Module):  # min as the negated maximum of the negation
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return -((-h).amax(dim=-1))


class Maximum(nn.Module):
    """The element-wise maximum of two halves, by ``torch.maximum``, ``torch.max(a, b)`` or the
    ``amax`` of their stack."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = h[:, :, :2], h[:, :, 2:]
        if self.how == "maximum":
            return torch.maximum(a, b)
        if self.how == "max":
            return torch.max(a, b)
        return torch.stack([a, b]).amax(0)


@pytest.mark.parametrize(
    ("op", "reference", "size"),
    [
        (MaxValues(keepdim=True), Amax(), 12),
        (MaxValues(keepdim=False), MaxPooledRows(), 12),
        (MaxValues(keepdim=False, smallest=True), NegatedAmax(), 12),
        (Maximum("maximum"), Maximum("stack"), 24),
        (Maximum("max"), Maximum("stack"), 24),
    ],
    ids=["max_dim_keepdim", "max_dim", "min_dim", "maximum", "max_of_two"],
)
def test_max_and_min_are_selections(op: nn.Module, reference: nn.Module, size: int) -> None:
    """Winner-take-all, as max pooling and amax: the maximum's relevance goes to the element that
    won (these were refused: ``call_method 'max'``)."""
    torch.testing.assert_close(_relevance(op, 3, size, X), _relevance(reference, 3, size, X))


class Placed(nn.Module):
    """``h`` assigned into the middle of a zero tensor, or the same by ``F.pad``."""

    def __init__(self, assigned: bool) -> None:
        super().__init__()
        self.assigned = assigned

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.assigned:
            return F.pad(h, (1, 1, 1, 1))
        out = h.new_zeros(h.shape[0], h.shape[1], 6, 6)
        out[:, :, 1:5, 1:5] = h
        return out


def test_an_assignment_into_a_constant_routes_relevance_to_the_value() -> None:
    torch.testing.assert_close(_relevance(Placed(True), 3, 108, X), _relevance(Placed(False), 3, 108, X))


class Assigned(nn.Module):
    """``h[..., 1:, 1:] = 2 h[..., 1:, 1:] + h[..., :-1, :-1]`` in place (MViTv2 adds its relative
    position bias into a slice of the attention scores so), or the same tensor built with cat."""

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        written = h[:, :, 1:, 1:] * 2.0 + h[:, :, :-1, :-1]
        if self.in_place:
            h[:, :, 1:, 1:] = written
            return h
        return torch.cat([h[:, :, :1], torch.cat([h[:, :, 1:, :1], written], dim=-1)], dim=2)


def test_an_assignment_routes_relevance_to_the_written_values_and_the_rest() -> None:
    """The written elements' relevance goes to the value written, the others' to the target,
    whose overwritten elements get none (``setitem`` was refused)."""
    torch.testing.assert_close(_relevance(Assigned(True), 3, 48, X), _relevance(Assigned(False), 3, 48, X))


class Normalised(nn.Module):
    """``h / (sum_w h + 1)``, each row divided by its sum (a normaliser); with ``scale`` given the
    divisor is that constant instead (the same function at one input)."""

    def __init__(self, scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.scale = scale

    def divisor(self, h: torch.Tensor) -> torch.Tensor:
        return h.sum(dim=-1, keepdim=True) + 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h / (self.divisor(h) if self.scale is None else self.scale)


def test_a_normaliser_is_a_constant_of_the_pass() -> None:
    """``x / g(x)`` with ``g`` a row sum: ``g`` is a constant (as LayerNorm's std in AttnLRP), the
    relevance is that of the same model with ``g`` frozen at this input, and it is conserved
    (``division by an input-dependent tensor`` was refused)."""
    model = Pair(Normalised(), 3, 48).double().eval()
    with torch.no_grad():
        scale = model.body.divisor(torch.relu(model.conv(X)))
    torch.testing.assert_close(_relevance(Normalised(), 3, 48, X), _relevance(Normalised(scale), 3, 48, X))


class Quotient(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.how == "element-wise":
            return h / (h + 1.0)  # a function of each element, no normaliser
        return h * (1.0 / (h.sum(dim=-1, keepdim=True) + 1.0))  # the reciprocal: no numerator


@pytest.mark.parametrize(
    ("how", "words"),
    [("element-wise", "of the numerator's shape"), ("reciprocal", "numerator carries no relevance")],
)
def test_other_divisions_by_activations_are_refused(how: str, words: str) -> None:
    model = Pair(Quotient(how), 3, 48).double().eval()
    with pytest.raises(UnsupportedLayerError, match=words):
        lrp(model, X, target=0, composite=EXACT)
