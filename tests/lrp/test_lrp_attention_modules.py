"""LRP through nn.MultiheadAttention, nn.TransformerEncoderLayer and nn.TransformerEncoder: the
traced stand-ins compute what the modules compute, their relevances equal those of the same model
written with explicit ops, relevance is conserved everywhere but in the softmaxes, and the options
the relevance pass has no rule for are refused before any work, leaving the model as found."""

from __future__ import annotations

import math
import operator

import pytest
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state
from torch import fx, nn

from fastxai.lrp import Composite, UnsupportedLayerError, conservation, lrp, rules
from fastxai.lrp._attention import multihead_attention
from fastxai.lrp._graph import trace
from fastxai.lrp._linear import LINEAR_TYPES

D_IN, EMBED, HEADS, FFN, CLASSES = 5, 8, 2, 12, 3


class ModuleClassifier(nn.Module):
    """Tokens [B, T, D_IN] -> Linear embedding -> nn.TransformerEncoder(Layer) -> mean over tokens
    -> Linear head [B, CLASSES]."""

    def __init__(self, body: nn.Module, batch_first: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.embed = nn.Linear(D_IN, EMBED, bias=bias)
        self.body = body
        self.batch_first = batch_first
        self.head = nn.Linear(EMBED, CLASSES, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.body(h)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(dim=1))


def encoder_layer(
    seed: int = 0, *, batch_first: bool = True, norm_first: bool = False, activation: object = "relu",
    bias: bool = True, dropout: float = 0.0,
) -> nn.TransformerEncoderLayer:  # fmt: skip
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(
        EMBED, HEADS, FFN, dropout=dropout, activation=activation,  # type: ignore[arg-type]
        batch_first=batch_first, norm_first=norm_first, bias=bias,
    )  # fmt: skip
    with torch.no_grad():  # non-trivial LayerNorm parameters
        for norm in (layer.norm1, layer.norm2):
            norm.weight.uniform_(0.5, 1.5)
            if norm.bias is not None:
                norm.bias.uniform_(-0.2, 0.2)
    return layer.eval()


class HandEncoderClassifier(nn.Module):
    """The same classifier with one encoder layer written op by op (batch-first): per-head slices
    of q/k/v, scores, softmax, context, concatenated heads, out-projection, residuals, LayerNorms,
    feed-forward. Built from a ModuleClassifier's weights."""

    def __init__(self, source: ModuleClassifier) -> None:
        super().__init__()
        layer = source.body
        assert isinstance(layer, nn.TransformerEncoderLayer)
        attention = layer.self_attn
        self.embed, self.head = source.embed, source.head
        self.q, self.k, self.v = (
            nn.Linear(EMBED, EMBED, bias=attention.in_proj_bias is not None) for _ in "qkv"
        )
        with torch.no_grad():
            for index, projection in enumerate((self.q, self.k, self.v)):
                projection.weight.copy_(attention.in_proj_weight[index * EMBED : (index + 1) * EMBED])
                if attention.in_proj_bias is not None:
                    projection.bias.copy_(attention.in_proj_bias[index * EMBED : (index + 1) * EMBED])
        self.proj = attention.out_proj
        self.norm1, self.norm2, self.fc1, self.fc2 = layer.norm1, layer.norm2, layer.linear1, layer.linear2
        self.gelu = layer.activation is F.gelu or isinstance(layer.activation, nn.GELU)
        self.norm_first = layer.norm_first
        self.head_dim = EMBED // HEADS

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = self.q(h), self.k(h), self.v(h)
        contexts = []
        for head in range(HEADS):
            part = slice(head * self.head_dim, (head + 1) * self.head_dim)
            scores = q[:, :, part] @ k[:, :, part].transpose(1, 2) * (1.0 / math.sqrt(self.head_dim))
            contexts.append(torch.softmax(scores, dim=-1) @ v[:, :, part])
        return self.proj(torch.cat(contexts, dim=-1))

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(h)
        return self.fc2(F.gelu(hidden) if self.gelu else F.relu(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if self.norm_first:
            h = h + self.attention(self.norm1(h))
            h = h + self.feed_forward(self.norm2(h))
        else:
            h = self.norm1(h + self.attention(h))
            h = self.norm2(h + self.feed_forward(h))
        return self.head(h.mean(dim=1))


def traced(model: nn.Module) -> fx.GraphModule:
    return fx.GraphModule(model, trace(model))


# -- the stand-ins compute what the modules compute ---------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "cross, bias", [(False, True), (True, True), (True, False)], ids=["self", "cross", "nobias"]
)
@pytest.mark.parametrize("need_weights, average", [(False, True), (True, True), (True, False)])
def test_multihead_attention_matches_module(
    batch_first: bool, cross: bool, bias: bool, need_weights: bool, average: bool
) -> None:
    torch.manual_seed(1)
    kdim, vdim = (6, 4) if cross else (None, None)
    module = nn.MultiheadAttention(
        EMBED, HEADS, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first
    ).eval()
    shape = (3, 5) if batch_first else (5, 3)
    query = torch.randn(*shape, EMBED)
    key = torch.randn(3, 7, kdim or EMBED) if cross else query
    value = torch.randn(3, 7, vdim or EMBED) if cross else query
    if cross and not batch_first:
        key, value = key.transpose(0, 1), value.transpose(0, 1)
    output, weights = multihead_attention(
        module, query, key, value, need_weights=need_weights, average_attn_weights=average
    )
    expected, expected_weights = module(
        query, key, value, need_weights=need_weights, average_attn_weights=average
    )
    torch.testing.assert_close(output, expected)
    if need_weights:
        torch.testing.assert_close(weights, expected_weights)
    else:
        assert weights is None


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize(
    "activation", ["relu", "gelu", nn.GELU(), F.gelu], ids=["relu", "gelu", "GELU()", "F.gelu"]
)
def test_traced_encoder_matches_module(batch_first: bool, norm_first: bool, activation: object) -> None:
    layer = encoder_layer(batch_first=batch_first, norm_first=norm_first, activation=activation)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(EMBED), enable_nested_tensor=False)
    model = ModuleClassifier(encoder, batch_first=batch_first).eval()
    x = torch.randn(3, 5, D_IN)
    graph_module = traced(model)
    opaque = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)
    modules = [
        graph_module.get_submodule(str(n.target)) for n in graph_module.graph.nodes if n.op == "call_module"
    ]
    assert not any(isinstance(m, opaque) for m in modules)
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x), model(x))
    R = lrp(model, x, target=1)
    assert isinstance(R, torch.Tensor) and R.shape == x.shape and torch.isfinite(R).all()


# -- relevances equal those of the hand-written model ------------------------------------------


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon"])
@pytest.mark.parametrize(
    "batch_first, norm_first, activation",
    [(True, False, "relu"), (False, True, "gelu"), (True, True, nn.ReLU())],
    ids=["post-relu", "pre-gelu-seqfirst", "pre-ReLU()"],
)
def test_relevances_equal_hand_written_encoder(
    composite: str, batch_first: bool, norm_first: bool, activation: object
) -> None:
    layer = encoder_layer(3, batch_first=batch_first, norm_first=norm_first, activation=activation)
    model = ModuleClassifier(layer, batch_first=batch_first).double().eval()
    hand = HandEncoderClassifier(model).double().eval()
    x = torch.randn(4, 6, D_IN, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(hand(x), model(x))
    R, layers = lrp(model, x, target=2, composite=composite, return_layer_relevances=True)
    R_hand, layers_hand = lrp(hand, x, target=2, composite=composite, return_layer_relevances=True)
    torch.testing.assert_close(R, R_hand, atol=1e-10, rtol=1e-8)
    # the same relevance at the modules both share (the out-projection, the norms, the FFN)
    for name, hand_name in [
        ("body.self_attn.out_proj", "proj"),
        ("body.norm1", "norm1"),
        ("body.linear1", "fc1"),
    ]:
        ours = layers[name] if batch_first or "self_attn" in name else layers[name].transpose(0, 1)
        torch.testing.assert_close(ours, layers_hand[hand_name], atol=1e-10, rtol=1e-8, msg=name)


def test_float32_relevances_equal_hand_written_encoder() -> None:
    model = ModuleClassifier(encoder_layer(4)).eval()
    x = torch.randn(2, 5, D_IN)
    torch.testing.assert_close(
        lrp(model, x, target=0), lrp(HandEncoderClassifier(model).eval(), x, target=0), atol=1e-5, rtol=1e-4
    )


# -- conservation ---------------------------------------------------------------------------------


def test_conservation_everywhere_but_the_softmaxes() -> None:
    """With no biases and epsilon -> 0 every step conserves relevance (Linear/F.linear epsilon,
    sums, LayerNorm without bias, matmul 50/50, mean, relu/gelu, moves) except AttnLRP's softmax
    rule R_x = x (R - y sum R). So the relevance at any cut equals the target logit minus what the
    softmaxes after that cut absorb, sum(R_softmax_out) - sum(R_softmax_in), each."""
    layer = encoder_layer(5, norm_first=False, activation="gelu", bias=False)
    encoder = nn.TransformerEncoder(
        layer, 2, norm=nn.LayerNorm(EMBED, bias=False), enable_nested_tensor=False
    )
    model = ModuleClassifier(encoder, bias=False).double().eval()
    x = torch.randn(3, 5, D_IN, dtype=torch.float64)
    exact = Composite([(LINEAR_TYPES, rules.Epsilon(1e-12))], stabilizer=1e-12)
    R, layers = lrp(model, x, target=1, composite=exact, return_layer_relevances=True)
    with torch.no_grad():
        logit = model(x)[:, 1]
    errors = conservation(layers, logit)
    softmaxes = [node for node in trace(model).nodes if node.target == "softmax"]
    assert len(softmaxes) == 2
    absorbed = [errors[node.name] - errors[node.all_input_nodes[0].name] for node in softmaxes]
    assert all(bool((a.abs() > 1e-6).all()) for a in absorbed)  # the softmax rule is not conservative
    for name in ("head", "body.norm", "body.layers.1.norm2", "body.layers.1.norm1"):
        torch.testing.assert_close(errors[name], torch.zeros_like(logit), atol=1e-9, rtol=0, msg=name)
    # layer 0's output: only layer 1's softmax lies after it; the input: both softmaxes
    torch.testing.assert_close(errors["body.layers.0.norm2"], -absorbed[1], atol=1e-9, rtol=0)
    torch.testing.assert_close(R.flatten(1).sum(1) - logit, -(absorbed[0] + absorbed[1]), atol=1e-9, rtol=0)


# -- refused options, and the model left as found ------------------------------------------------


class AttentionModel(nn.Module):
    """Embedding, one nn.MultiheadAttention called with ``call_kwargs``, mean, head."""

    def __init__(self, reads_weights: bool = False, **options: object) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.embed = nn.Linear(D_IN, EMBED)
        self.attention = nn.MultiheadAttention(EMBED, HEADS, batch_first=True, **options)  # type: ignore[arg-type,unused-ignore]
        self.head = nn.Linear(EMBED, CLASSES)
        self.reads_weights = reads_weights
        self.call_kwargs: dict[str, object] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        out, weights = self.attention(h, h, h, **self.call_kwargs)
        if self.reads_weights:
            out = out + weights @ h
        return self.head(out.mean(dim=1))


SQUARE_MASK = torch.zeros(4, 4, dtype=torch.bool)  # for inputs [2, 4, D_IN]
PADDING_MASK = torch.zeros(2, 4, dtype=torch.bool)


class LayerModel(nn.Module):
    def __init__(self, body: nn.Module, **call_kwargs: object) -> None:
        super().__init__()
        self.embed, self.body, self.head = nn.Linear(D_IN, EMBED), body, nn.Linear(EMBED, CLASSES)
        self.call_kwargs = call_kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(x), **self.call_kwargs).mean(dim=1))


def _attention_model(option: str) -> nn.Module:
    if option == "add_bias_kv":
        return AttentionModel(add_bias_kv=True)
    if option == "add_zero_attn":
        return AttentionModel(add_zero_attn=True)
    if option == "need_weights":
        return AttentionModel(reads_weights=True)
    model = AttentionModel()
    calls: dict[str, dict[str, object]] = {
        "attn_mask": {"attn_mask": SQUARE_MASK}, "key_padding_mask": {"key_padding_mask": PADDING_MASK},
        "is_causal": {"is_causal": True, "attn_mask": None},
    }  # fmt: skip
    model.call_kwargs = calls[option]
    return model


REFUSED = [
    (lambda: _attention_model("attn_mask"), "attn_mask"),
    (lambda: _attention_model("key_padding_mask"), "key_padding_mask"),
    (lambda: _attention_model("is_causal"), "is_causal"),
    (lambda: _attention_model("add_bias_kv"), "add_bias_kv"),
    (lambda: _attention_model("add_zero_attn"), "add_zero_attn"),
    (lambda: _attention_model("need_weights"), "need_weights"),
    (lambda: LayerModel(encoder_layer(), src_mask=SQUARE_MASK), "src_mask"),
    (lambda: LayerModel(encoder_layer(), src_key_padding_mask=PADDING_MASK), "src_key_padding_mask"),
    (lambda: LayerModel(encoder_layer(), is_causal=True), "is_causal"),
    (lambda: LayerModel(nn.TransformerEncoder(encoder_layer(), 1, enable_nested_tensor=False),
                        mask=SQUARE_MASK), "mask"),
]  # fmt: skip


@pytest.mark.parametrize("build, option", REFUSED, ids=[option for _, option in REFUSED])
def test_refused_options_name_the_option_and_leave_the_model(build: object, option: str) -> None:
    model = build()  # type: ignore[operator]
    model.train()
    calls: list[int] = []
    model.embed.register_forward_hook(lambda *_: calls.append(1))  # counts model evaluations
    before = model_state(model)
    with pytest.raises(UnsupportedLayerError, match=option):
        lrp(model, torch.randn(2, 4, D_IN), target=0)
    assert calls == []  # refused while tracing, before the forward pass and any relevance
    assert_same_state(before, model_state(model))


def test_dropout_in_training_mode_is_refused_directly_and_lrp_runs_in_eval_mode() -> None:
    torch.manual_seed(7)
    attention = nn.MultiheadAttention(EMBED, HEADS, dropout=0.5, batch_first=True)  # training mode
    x = torch.randn(2, 4, EMBED)
    with pytest.raises(UnsupportedLayerError, match="dropout"):
        multihead_attention(attention, x, x, x, name="attention")
    model = ModuleClassifier(encoder_layer(dropout=0.3)).train()
    x = torch.randn(2, 4, D_IN)
    before = model_state(model)
    R = lrp(model, x, target=0)  # traced and run in eval mode: dropout is the identity
    assert_same_state(before, model_state(model))
    torch.testing.assert_close(R, lrp(model.eval(), x, target=0))


def test_unread_weights_are_dropped_from_the_trace() -> None:
    model = AttentionModel().eval()  # need_weights=True by default, the weights discarded
    graph = trace(model)
    softmax = next(node for node in graph.nodes if node.target == "softmax")
    assert [user.target for user in softmax.users] == [operator.matmul]  # the weights' mean is gone
    x = torch.randn(2, 4, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(fx.GraphModule(model, graph)(x), model(x))
