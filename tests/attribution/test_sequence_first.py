"""Layers whose batch is not dim 0 (sequence-first [T, B, D]): XLNet, ``nn.TransformerEncoder``
and ``nn.LSTM`` without ``batch_first``. Attributions there are taken on the layer's batch-first
view and must equal those of the same model written batch-first (same weights), or of the
model's embeddings fed by hand; where T == B the batch axis is either found exactly or refused."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

import fastxai as fx
from fastxai.compat import captum as fc


class Tagger(nn.Module):
    """Token ids [B, T] -> embedding -> encoder -> mean over tokens -> 3 logits. With
    ``batch_first=False`` the embedding takes ``ids.t()`` and every layer after it is [T, B, D]."""

    def __init__(self, kind: str, batch_first: bool) -> None:
        super().__init__()
        self.kind, self.batch_first = kind, batch_first
        self.embedding = nn.Embedding(20, 8)
        if kind == "transformer":
            block = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
            self.encoder: nn.Module = nn.TransformerEncoder(block, 2, enable_nested_tensor=False)
        else:
            self.encoder = nn.LSTM(8, 8, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T], or embeddings [B, T, D] (skipping the embedding)."""
        if ids.is_floating_point():
            hidden = ids if self.batch_first else ids.transpose(0, 1)
        else:
            hidden = self.embedding(ids if self.batch_first else ids.t())
        encoded = self.encoder(hidden)
        if self.kind == "lstm":
            encoded = encoded[0]
        return self.head(encoded.mean(1 if self.batch_first else 0))


def _pair(kind: str) -> tuple[Tagger, Tagger]:
    """The same weights, batch-first and sequence-first, in float64."""
    torch.manual_seed(0)
    batch_first = Tagger(kind, True).double().eval()
    sequence_first = Tagger(kind, False).double().eval()
    sequence_first.load_state_dict(batch_first.state_dict())
    return batch_first, sequence_first


def _ids(batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 20, (batch, tokens), generator=torch.Generator().manual_seed(seed))


METHODS = {
    "integrated_gradients": lambda m, ids, **kw: fx.integrated_gradients(m, ids, target=1, n_steps=8, **kw),
    "smoothgrad": lambda m, ids, **kw: fx.smoothgrad(m, ids, target=1, n_samples=4, seed=0, **kw),
    "gradient_shap": lambda m, ids, **kw: fx.gradient_shap(
        m, ids, baselines=torch.zeros(2, 5, dtype=torch.long), target=1, n_samples=4, seed=0, **kw
    ),
    "input_x_gradient": lambda m, ids, **kw: fx.input_x_gradient(m, ids, target=1, **kw),
    "deeplift": lambda m, ids, **kw: fx.deeplift(m, ids, target=1, **kw),
    "deeplift_shap": lambda m, ids, **kw: fx.deeplift_shap(
        m, ids, target=1, baselines=torch.tensor([[0] * 5, [3] * 5]), **kw
    ),
}


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
@pytest.mark.parametrize("name", list(METHODS))
def test_embedding_attributions_equal_the_batch_first_model(kind: str, name: str) -> None:
    batch_first, sequence_first = _pair(kind)
    ids = _ids(3, 5)
    expected = METHODS[name](batch_first, ids)
    before = model_state(sequence_first)
    got = METHODS[name](sequence_first, ids)
    assert_same_state(before, model_state(sequence_first))
    assert got.shape == (3, 5, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "name, call",
    [
        (
            "integrated_gradients",
            lambda m, ids, layer: fx.integrated_gradients(m, ids, target=1, layer=layer, n_steps=8),
        ),
        (
            "layer_conductance",
            lambda m, ids, layer: fx.layer_conductance(m, m.embedding(ids), target=1, layer=layer, n_steps=8),
        ),
        ("input_x_gradient", lambda m, ids, layer: fx.input_x_gradient(m, ids, target=1, layer=layer)),
        ("deeplift", lambda m, ids, layer: fx.deeplift(m, ids, target=1, layer=layer)),
    ],
)
def test_inner_layer_comes_back_batch_first(name: str, call: object) -> None:
    """A user-chosen sequence-first layer: its attributions in the layer's batch-first view
    [B, T, D], equal to the batch-first model's at the same layer."""
    batch_first, sequence_first = _pair("transformer")
    ids = _ids(3, 5)
    expected = call(batch_first, ids, "encoder.layers.0")  # type: ignore[operator]
    got = call(sequence_first, ids, "encoder.layers.0")  # type: ignore[operator]
    assert got.shape == (3, 5, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_integrated_gradients_complete_on_the_sequence_first_model() -> None:
    _, sequence_first = _pair("lstm")
    ids = _ids(3, 5)
    attributions, delta = fx.integrated_gradients(
        sequence_first, ids, baselines=0, target=1, n_steps=64, return_convergence_delta=True
    )
    with torch.no_grad():
        difference = sequence_first(ids)[:, 1] - sequence_first(torch.zeros_like(ids))[:, 1]
    torch.testing.assert_close(attributions.sum((1, 2)), difference, rtol=0, atol=1e-6)
    assert delta.abs().max() < 1e-6


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (fc.LayerIntegratedGradients, {"n_steps": 8}),
        (fc.LayerGradientXActivation, {}),
        (fc.LayerActivation, {}),
        (fc.LayerConductance, {"n_steps": 8}),
        (fc.LayerDeepLift, {}),
    ],
)
def test_captum_layer_classes_on_a_sequence_first_layer(cls: type, kwargs: dict) -> None:
    batch_first, sequence_first = _pair("transformer")
    ids = _ids(3, 5)
    results = []
    for model in (batch_first, sequence_first):
        method = cls(model, model.encoder.layers[0])
        options = dict(kwargs)
        if cls is not fc.LayerActivation:
            options["target"] = 1
        inputs = model.embedding(ids).detach() if cls is fc.LayerConductance else ids  # floats only
        if cls in (fc.LayerIntegratedGradients, fc.LayerConductance, fc.LayerDeepLift):
            options["baselines"] = torch.zeros_like(inputs)
        results.append(method.attribute(inputs, **options))
    assert results[1].shape == (3, 5, 8)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=1e-6)


def test_batch_equal_to_tokens_at_the_embedding_is_exact() -> None:
    """T == B: the embedding's [T, B, D] output has two axes of the batch's size; the ids tell
    which is the batch."""
    batch_first, sequence_first = _pair("transformer")
    ids = _ids(5, 5)
    expected = fx.integrated_gradients(batch_first, ids, target=1, n_steps=8)
    got = fx.integrated_gradients(sequence_first, ids, target=1, n_steps=8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    expected = fx.deeplift(batch_first, ids, target=1)  # all-pad baselines read alike both ways
    torch.testing.assert_close(fx.deeplift(sequence_first, ids, target=1), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, ids: fx.integrated_gradients(m, ids, target=1, n_steps=4, layer="encoder.layers.0"),
        lambda m, ids: fx.input_x_gradient(m, ids, target=1, layer="encoder.layers.0"),
        lambda m, ids: fx.deeplift(m, ids, target=1, layer="encoder.layers.0"),
        lambda m, ids: fc.LayerIntegratedGradients(m, m.encoder.layers[0]).attribute(
            ids, target=1, n_steps=4
        ),
    ],
)
def test_batch_equal_to_tokens_at_an_inner_layer_is_refused(call: object) -> None:
    """T == B at a layer after a sequence-first embedding: which axis is the batch cannot be
    told from the shape, so it is refused (naming the layer), the model left as found."""
    batch_first, sequence_first = _pair("transformer")
    ids = _ids(5, 5)
    before = model_state(sequence_first)
    with pytest.raises(ValueError, match=r"TransformerEncoderLayer.*batch axis cannot be told"):
        call(sequence_first, ids)  # type: ignore[operator]
    assert_same_state(before, model_state(sequence_first))
    assert call(batch_first, ids).shape == (5, 5, 8)  # type: ignore[operator]  # batch-first: dim 0


def test_symmetric_ids_with_batch_equal_to_tokens_are_refused() -> None:
    """Square ids equal to their transpose read alike along both axes: nothing tells the batch."""
    _, sequence_first = _pair("transformer")
    upper = torch.triu(_ids(5, 5))
    ids = upper + torch.triu(upper, 1).t()  # symmetric, in the vocabulary
    assert torch.equal(ids, ids.t())
    with pytest.raises(ValueError, match=r"layer \(Embedding\).*batch axis cannot be told"):
        fx.integrated_gradients(sequence_first, ids, target=1, n_steps=4)
    alone = fx.integrated_gradients(sequence_first, ids[:2], target=1, n_steps=4)  # B != T: fine
    assert alone.shape == (2, 5, 8)


def test_a_layer_without_a_batch_axis_is_refused() -> None:
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            total = self.embedding(ids).sum((0, 1))  # [D]: the batch is summed away
            return self.head(total).expand(ids.shape[0], 3)

    model = Pooled()
    with pytest.raises(ValueError, match=r"layer \(Linear\).*no axis has the batch size 2"):
        fx.integrated_gradients(model, _ids(2, 5), target=1, layer="head", n_steps=4)


# --- XLNet: transposes its ids to [T, B] before the word embedding ------------------------


@pytest.fixture(scope="module")
def xlnet() -> nn.Module:
    from real_models import tiny_xlnet

    return tiny_xlnet().double()


def _embedded(model: nn.Module) -> nn.Module:
    """XLNet fed embeddings [B, T, D] by hand (``inputs_embeds``), as a float-input model."""

    class Embedded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, embeds: torch.Tensor) -> torch.Tensor:
            return self.model(inputs_embeds=embeds).logits

    return Embedded()


def _xlnet_ids(batch: int, tokens: int) -> torch.Tensor:
    return torch.randint(3, 100, (batch, tokens), generator=torch.Generator().manual_seed(1))


def test_xlnet_integrated_gradients_by_hand(xlnet: nn.Module) -> None:
    ids = _xlnet_ids(2, 12)
    got, delta = fx.integrated_gradients(
        xlnet, ids, baselines=0, target=1, n_steps=8, method="riemann_right", return_convergence_delta=True
    )
    embedding = xlnet.get_input_embeddings()
    with torch.no_grad():
        start, end = embedding(torch.zeros_like(ids)), embedding(ids)
    total = torch.zeros_like(end)
    for step in range(1, 9):
        point = (start + step / 8 * (end - start)).requires_grad_(True)
        score = xlnet(inputs_embeds=point).logits[:, 1].sum()
        total += torch.autograd.grad(score, point)[0] / 8
    assert got.shape == (2, 12, 32)
    torch.testing.assert_close(got, (end - start) * total, rtol=0, atol=1e-10)
    with torch.no_grad():
        difference = xlnet(ids).logits[:, 1] - xlnet(torch.zeros_like(ids)).logits[:, 1]
    torch.testing.assert_close(delta, got.sum((1, 2)) - difference, rtol=0, atol=1e-10)


def test_xlnet_integrated_gradients_complete_and_per_example(xlnet: nn.Module) -> None:
    ids = _xlnet_ids(2, 12)
    got, delta = fx.integrated_gradients(
        xlnet, ids, baselines=0, target=1, n_steps=32, return_convergence_delta=True
    )
    with torch.no_grad():
        difference = xlnet(ids).logits[:, 1] - xlnet(torch.zeros_like(ids)).logits[:, 1]
    assert (delta.abs() <= 1e-3 * difference.abs() + 1e-6).all()
    for row in range(2):
        alone = fx.integrated_gradients(xlnet, ids[row : row + 1], baselines=0, target=1, n_steps=32)
        torch.testing.assert_close(got[row : row + 1], alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "name, on_ids, on_embeddings",
    [
        (
            "smoothgrad",
            lambda m, ids: fx.smoothgrad(m, ids, target=1, n_samples=3, seed=0),
            lambda m, e, e0: fx.smoothgrad(m, e, target=1, n_samples=3, seed=0),
        ),
        (
            "deeplift",
            lambda m, ids: fx.deeplift(m, ids, target=1),
            lambda m, e, e0: fx.deeplift(m, e, target=1, baselines=e0),
        ),
        (
            "deeplift_shap",
            lambda m, ids: fx.deeplift_shap(m, ids, target=1, baselines=0),
            lambda m, e, e0: fx.deeplift(m, e, target=1, baselines=e0),
        ),
    ],
)
def test_xlnet_token_ids_equal_embeddings_by_hand(
    xlnet: nn.Module, name: str, on_ids: object, on_embeddings: object
) -> None:
    ids = _xlnet_ids(2, 12)
    with torch.no_grad():
        embeds = xlnet.get_input_embeddings()(ids)
        pads = xlnet.get_input_embeddings()(torch.zeros_like(ids))
    got = on_ids(xlnet, ids)  # type: ignore[operator]
    assert got.shape == (2, 12, 32) and torch.isfinite(got).all()
    expected = on_embeddings(_embedded(xlnet), embeds, pads)  # type: ignore[operator]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_xlnet_batch_equal_to_tokens(xlnet: nn.Module) -> None:
    """ids [12, 12]: exact at the embedding (equal to one example at a time), refused at an
    inner layer, whose [T, B, D] output cannot tell its batch axis."""
    ids = _xlnet_ids(12, 12)
    got = fx.integrated_gradients(xlnet, ids, target=1, n_steps=4)
    alone = fx.integrated_gradients(xlnet, ids[3:4], target=1, n_steps=4)
    torch.testing.assert_close(got[3:4], alone, rtol=0, atol=1e-10)
    before = model_state(xlnet)
    with pytest.raises(ValueError, match=r"XLNetFeedForward.*batch axis cannot be told"):
        fx.integrated_gradients(xlnet, ids, target=1, n_steps=4, layer="transformer.layer.0.ff")
    assert_same_state(before, model_state(xlnet))
    inner = fx.integrated_gradients(xlnet, ids[:2], target=1, n_steps=4, layer="transformer.layer.0.ff")
    assert inner.shape == (2, 12, 32) and torch.isfinite(inner).all()
