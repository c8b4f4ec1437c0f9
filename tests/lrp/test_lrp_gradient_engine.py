"""The gradient engine of ``fastxai.lrp`` (AttnLRP as a modified gradient) against two oracles
that do not share its code:

- a one-layer attention model whose relevance this file derives by hand, rule by rule, from
  the textbook formulas (epsilon rule for Linear and the mean, proportional sums, identity
  for GELU, AttnLRP's softmax rule, the 50/50 matmul rule, LayerNorm with a constant std),
  Zennit-style: each layer's relevance computed from the one above it;
- the traced engine (``engine="fx"``, its own per-node handlers) on the same model and on
  torchvision's ViT: the same rules must give the same relevance.

Also: bad arguments are refused before the model runs, an op without a rule names the line
that called it, and the model is left as found, also on error.
"""

from __future__ import annotations

import math

import pytest
import real_models
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state
from torch import nn

import fastxai
from fastxai.lrp import Composite, UnsupportedLayerError, lrp, rules
from fastxai.lrp._linear import LINEAR_TYPES


class Toy(nn.Module):
    """x -> LayerNorm -> one attention head -> residual -> GELU -> mean over tokens -> Linear."""

    def __init__(self, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        scores = self.q(h) @ self.k(h).transpose(-2, -1) / math.sqrt(x.shape[-1])
        y = x + self.o(torch.softmax(scores, dim=-1) @ self.v(h))
        return self.head(F.gelu(y).mean(1))


def _divide(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    return r / (z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))


def _epsilon_linear(layer: nn.Linear, a: torch.Tensor, r: torch.Tensor, eps: float) -> torch.Tensor:
    """R_i = a_i sum_j w_ji R_j / (z_j + eps sign(z_j)), z = a W^T + b."""
    return a * (_divide(r, layer(a), eps) @ layer.weight)


def textbook(
    model: Toy, x: torch.Tensor, target: int, eps: float, stabilizer: float, head_eps: float | None = None
) -> torch.Tensor:
    """The relevance of ``x`` by the formulas, top layer first (eps: the Linear layers', or
    ``head_eps`` for the head; stabilizer: the mean's, the matmuls', the LayerNorm's; sums split
    with no stabiliser)."""
    with torch.no_grad():
        h = model.norm(x)
        q, k, v = model.q(h), model.k(h), model.v(h)
        qk = q @ k.transpose(-2, -1)
        scores = qk / math.sqrt(x.shape[-1])
        attention = torch.softmax(scores, dim=-1)
        context = attention @ v
        out = model.o(context)
        y = x + out
        g = F.gelu(y)
        m = g.mean(1)
        logits = model.head(m)
        r = torch.zeros_like(logits)
        r[:, target] = logits[:, target]
        r_m = _epsilon_linear(model.head, m, r, eps if head_eps is None else head_eps)
        r_g = g * _divide(r_m, m, stabilizer).unsqueeze(1) / x.shape[1]  # epsilon rule on the mean
        r_y = r_g  # identity rule on GELU
        r_x, r_out = (part * _divide(r_y, y, stabilizer) for part in (x, out))  # the sum, in proportion
        r_context = _epsilon_linear(model.o, context, r_out, eps)
        s = _divide(r_context, context, stabilizer)  # attention @ v: epsilon, then half each
        r_attention = 0.5 * attention * (s @ v.transpose(-2, -1))
        r_v = 0.5 * v * (attention.transpose(-2, -1) @ s)
        r_scores = scores * (r_attention - attention * r_attention.sum(-1, keepdim=True))  # AttnLRP
        s = _divide(r_scores, qk, stabilizer)  # r_qk = r_scores: a constant factor passes relevance
        r_q = 0.5 * q * (s @ k)
        r_k = 0.5 * k * (s.transpose(-2, -1) @ q)
        pairs = ((model.q, r_q), (model.k, r_k), (model.v, r_v))
        r_h = sum(_epsilon_linear(layer, h, rel, eps) for layer, rel in pairs)
        std = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + model.norm.eps)
        z = _divide(r_h, h, stabilizer) * model.norm.weight / std  # 1/std constant, epsilon rule
        return r_x + x * (z - z.mean(-1, keepdim=True))


@pytest.mark.parametrize("eps, stabilizer", [(0.0, 0.0), (0.05, 0.0), (1e-3, 1e-2)])
def test_matches_the_textbook_rules_on_an_attention_layer(eps: float, stabilizer: float) -> None:
    torch.manual_seed(0)
    model = Toy().double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    composite = Composite([(LINEAR_TYPES, rules.Epsilon(eps))], stabilizer=stabilizer)
    expected = textbook(model, x, 1, eps, stabilizer)
    relevance = lrp(model, x, target=1, composite=composite, engine="gradient")
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-12)
    traced = lrp(model, x, target=1, composite=composite, engine="fx")
    torch.testing.assert_close(relevance, traced, rtol=1e-9, atol=1e-12)
    # the rules differ from the gradient (x * grad): the oracle can tell them apart
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf)[:, 1].sum(), leaf)
    assert (x * grad - expected).abs().max() > 1e-3 * expected.abs().max()


def _vision_transformer() -> nn.Module:
    real_models.torchvision()  # makes the import work on a CPU machine
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.2)  # torchvision initialises the head to zero
    return model.eval()


def test_agrees_with_the_traced_engine_on_torchvision_vit() -> None:
    """nn.MultiheadAttention (run again as plain ops), LayerNorm, GELU, class token, position
    embedding, patch convolution: the two engines give the same relevance."""
    model = _vision_transformer()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = model_state(model)
    traced = lrp(model, x, target=3, composite="epsilon", engine="fx")
    relevance = lrp(model, x, target=3, composite="epsilon", engine="gradient")
    assert relevance.shape == x.shape and relevance.dtype == x.dtype
    torch.testing.assert_close(relevance, traced, rtol=0, atol=1e-4 * traced.abs().max().item())
    assert_same_state(before, model_state(model))
    model, x = model.double(), x.double()  # float64: the same rules to rounding
    for composite in ("epsilon", Composite([(LINEAR_TYPES, rules.Epsilon(1e-2))], stabilizer=1e-3)):
        traced = lrp(model, x, target=3, composite=composite, engine="fx")
        relevance = lrp(model, x, target=3, composite=composite, engine="gradient")
        torch.testing.assert_close(relevance, traced, rtol=1e-9, atol=1e-12 * traced.abs().max().item())


class _PoolsAndPowers(nn.Module):
    """Average pooling, upsampling, a power with a constant exponent and an amax selection: ops
    both engines have rules for (the gradient engine refused them)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 + 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # [B, 4, 4, 4]
        pooled = F.avg_pool2d(h, 2)  # [B, 4, 2, 2]
        wide = F.interpolate(pooled, scale_factor=2, mode="bilinear") ** 2  # [B, 4, 4, 4]
        rows = wide.flatten(2)[..., :8]  # [B, 4, 8]
        peak = h.amax(dim=(2, 3))  # [B, 4]
        return self.head(torch.cat([rows.flatten(1), peak], dim=1))


class _SelectionsAndNormalisers(nn.Module):
    """max with a dim, an element-wise maximum, an assignment into a slice and a division by a
    row sum (a normaliser): ops both engines have rules for (both refused them)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 + 4 * 8 + 4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))  # [B, 4, 4, 4]
        peak = h.max(dim=-1)[0]  # [B, 4, 4]
        larger = torch.maximum(h[:, :, :2], h[:, :, 2:])  # [B, 4, 2, 4]
        shares = h / (h.sum(dim=-1, keepdim=True) + 1.0)
        shares[:, :, 1:, 1:] = shares[:, :, 1:, 1:] * 2.0 + h[:, :, :-1, :-1]
        return self.head(torch.cat([peak.flatten(1), larger.flatten(1), shares.flatten(1)], dim=1))


@pytest.mark.parametrize("body", [_PoolsAndPowers, _SelectionsAndNormalisers])
def test_engines_agree_on_pooling_selections_assignments_and_normalisers(body: type[nn.Module]) -> None:
    model = body().double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    traced = lrp(model, x, target=1, composite="epsilon", engine="fx")
    relevance = lrp(model, x, target=1, composite="epsilon", engine="gradient")
    torch.testing.assert_close(relevance, traced, rtol=1e-9, atol=1e-12 * traced.abs().max().item())


def test_composite_rules_by_module_name_reach_the_module() -> None:
    """An Epsilon rule named for one Linear changes that layer's rule only: the result equals the
    textbook derivation with that layer's epsilon."""
    torch.manual_seed(0)
    model = Toy().double().eval()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    base = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)
    named = Composite(
        [(LINEAR_TYPES, rules.Epsilon(0.0))], name_map={"head": rules.Epsilon(0.5)}, stabilizer=0.0
    )
    plain = lrp(model, x, target=0, composite=base, engine="gradient")
    changed = lrp(model, x, target=0, composite=named, engine="gradient")
    assert (plain - changed).abs().max() > 1e-3 * plain.abs().max()
    torch.testing.assert_close(changed, textbook(model, x, 0, 0.0, 0.0, head_eps=0.5), rtol=1e-9, atol=1e-12)


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, ids: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        h = self.embed(ids)
        if scale is not None:
            h = h * scale[:, :, None]
        return self.head(h.mean(1))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"forward_kwargs": [1]}, TypeError, "forward_kwargs"),
        ({"engine": "fast"}, ValueError, "engine"),
        ({"engine": "fx"}, ValueError, "engine='fx'"),
        ({"composite": "epsilon_plus_flat"}, ValueError, "composite"),
        ({"composite": {nn.Linear: rules.ZPlus()}}, ValueError, "composite"),
        ({"return_layer_relevances": True}, ValueError, "return_layer_relevances"),
        ({"maxpool": "average"}, ValueError, "maxpool"),
        ({"layer": "nothing"}, ValueError, "layer"),
        ({"target": 2.5}, TypeError, "target"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_runs(kwargs: dict, error: type, words: str) -> None:
    model = _Counting().eval()
    ids = torch.randint(0, 10, (2, 5))
    arguments = {"target": 1, **kwargs}
    with pytest.raises(error, match=words):
        lrp(model, ids, **arguments)
    assert model.calls == 0


def test_target_out_of_range_is_refused_before_the_backward() -> None:
    with pytest.raises(ValueError, match=r"target must be in \[0, 3\)"):
        lrp(_Counting().eval(), torch.randint(0, 10, (2, 5)), target=3)


def test_token_ids_without_an_embedding_name_layer() -> None:
    model = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(ValueError, match="layer="):
        lrp(model, torch.randint(0, 10, (2, 5)), target=0)


def test_forward_kwargs_follow_the_chunks_and_layer_starts_elsewhere() -> None:
    torch.manual_seed(0)
    model = _Counting().double().eval()
    ids = torch.randint(0, 10, (5, 4))
    scale = torch.rand(5, 4, dtype=torch.float64)
    whole = lrp(model, ids, target=2, forward_kwargs={"scale": scale})
    chunked = lrp(model, ids, target=2, forward_kwargs={"scale": scale}, chunk_size=2)
    assert whole.shape == (5, 4)
    torch.testing.assert_close(chunked, whole)
    at_layer = lrp(model, ids, target=2, forward_kwargs={"scale": scale}, layer="embed")
    assert at_layer.shape == (5, 4, 4)
    torch.testing.assert_close(at_layer.sum(-1), whole)
    # the textbook: embedding e, times a constant, mean and Linear (epsilon rules, 1e-6 each)
    with torch.no_grad():
        e = model.embed(ids)
        m = (e * scale[:, :, None]).mean(1)
        z = model.head(m)
        r = torch.zeros_like(z)
        r[:, 2] = z[:, 2]
        r_m = m * (_divide(r, z, 1e-6) @ model.head.weight)
        expected = (e * scale[:, :, None] * _divide(r_m, m, 1e-6)[:, None] / 4).sum(-1)
    torch.testing.assert_close(whole, expected, rtol=1e-9, atol=1e-12)


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        return torch.exp(h)  # no rule: the line below names this one


_EXP_LINE = _Unsupported.forward.__code__.co_firstlineno + 2


@pytest.mark.parametrize("train", [False, True])
def test_an_op_without_a_rule_names_its_line_and_the_model_is_left_as_found(train: bool) -> None:
    model = _Unsupported().train(train)
    handle = model.linear.register_forward_hook(lambda *args: None)
    before = model_state(model)
    with pytest.raises(UnsupportedLayerError, match=rf"torch\.exp.*test_lrp_gradient_engine\.py:{_EXP_LINE}"):
        lrp(model, torch.randn(2, 4), target=0, engine="gradient")
    assert_same_state(before, model_state(model))
    handle.remove()


def test_division_by_an_activation_is_refused() -> None:
    """Only a normaliser (a divisor shared by a group of elements) is a constant of the pass."""

    class Divide(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / (x + 10)

    class Reciprocal(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * (1.0 / (x.sum(1, keepdim=True) + 10))

    with pytest.raises(UnsupportedLayerError, match="divisor of the numerator's shape"):
        lrp(Divide(), torch.randn(2, 4), target=0, engine="gradient")
    with pytest.raises(UnsupportedLayerError, match="of a constant by a relevance-carrying tensor"):
        lrp(Reciprocal(), torch.randn(2, 4), target=0, engine="gradient")


def test_auto_keeps_the_traced_engine_for_plain_models() -> None:
    """engine='auto' on a float input of a plain model is the traced engine, whose default
    composite (epsilon_plus_flat) gives the first Linear the flat rule: not what 'epsilon' gives."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.randn(3, 5)
    torch.testing.assert_close(lrp(model, x, target=0), lrp(model, x, target=0, engine="fx"))
    flat = lrp(model, x, target=0)
    epsilon = lrp(model, x, target=0, engine="gradient")
    torch.testing.assert_close(epsilon, lrp(model, x, target=0, composite="epsilon", engine="fx"))
    assert (flat - epsilon).abs().max() > 1e-4
    assert fastxai.lrp is not None


class _Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: no single trace holds it
            return self.linear(x)
        return self.linear(-x)


def test_control_flow_needs_the_gradient_engine_and_the_traced_error_says_so() -> None:
    torch.manual_seed(0)
    model = _Branching().double().eval()
    line = _Branching.forward.__code__.co_firstlineno + 1
    with pytest.raises(
        UnsupportedLayerError, match=rf"test_lrp_gradient_engine\.py:{line}.*engine='gradient'"
    ):
        lrp(model, torch.randn(2, 4, dtype=torch.float64), target=1)
    for sign in (1.0, -1.0):
        x = sign * torch.rand(1, 4, dtype=torch.float64)
        relevance = lrp(
            model, x, target=1, composite=Composite([(LINEAR_TYPES, rules.Epsilon(0.1))]), engine="gradient"
        )
        a = x if sign > 0 else -x  # the layer's input; R_x = R_a: the negation is a move
        r = torch.zeros(1, 3, dtype=torch.float64)
        r[0, 1] = model.linear(a)[0, 1]
        torch.testing.assert_close(relevance, _epsilon_linear(model.linear, a, r, 0.1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float", "gqa"])
def test_attention_runs_as_plain_ops_with_the_fused_kernels_values(mask: str) -> None:
    """F.scaled_dot_product_attention under the rules computes what the fused kernel does:
    boolean / causal masks (a fully masked row included), additive masks, grouped key heads."""
    from fastxai.lrp._gradient_ops import RuleMode

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=generator, dtype=torch.float64)
    heads = 2 if mask == "gqa" else 4
    k, v = (torch.randn(2, heads, 5, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    options: dict = {
        "none": {},
        "causal": {"is_causal": True},
        "bool": {"attn_mask": (torch.rand(2, 1, 5, 5, generator=generator) > 0.4) | torch.eye(5).bool()},
        "float": {"attn_mask": torch.randn(5, 5, generator=generator, dtype=torch.float64)},
        "gqa": {"enable_gqa": True, "scale": 0.3},
    }[mask]
    if mask == "bool":
        options["attn_mask"][0, 0, 2] = False  # a query that may read no key
    expected = F.scaled_dot_product_attention(q, k, v, **options)
    with RuleMode(0.0):
        got = F.scaled_dot_product_attention(q.requires_grad_(True), k, v, **options)
    if mask == "bool":  # the fused kernel gives the fully masked row zeros, the plain ops a mean of v
        assert torch.isfinite(got).all()
        expected[0, :, 2], got = 0.0, got.detach().clone()
        got[0, :, 2] = 0.0
    torch.testing.assert_close(got.detach(), expected, rtol=1e-12, atol=1e-12)
