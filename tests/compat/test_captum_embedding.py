"""configure/remove_interpretable_embedding_layer and InterpretableEmbeddingBase against Captum's
own: nested names, the embeddings, the model's outputs and parameters, warnings and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat.captum")


class PairEmbedding(nn.Module):
    """A custom embedding layer of two index tensors (a keyword argument too)."""

    def __init__(self) -> None:
        super().__init__()
        self.words = nn.Embedding(13, 4)
        self.positions = nn.Embedding(6, 4)

    def forward(self, input: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.words(input) + self.positions(positions)


class TextNet(nn.Module):
    """Ids [B, L] -> embeddings [B, L, 4] (a nested layer, or a custom one given positions) -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Module()
        self.encoder.embedding = nn.Embedding(13, 4)
        self.blocks = nn.ModuleList([PairEmbedding()])
        self.head = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            vectors = self.encoder.embedding(ids)
        else:
            vectors = self.blocks[0](ids, positions=positions)
        return self.head(torch.tanh(vectors).mean(1))


IDS = torch.tensor([[3, 2, 0, 7], [1, 12, 4, 4]])
POSITIONS = torch.tensor([[0, 1, 2, 3], [5, 4, 3, 2]])


@pytest.mark.parametrize("module", [fc, captum_attr], ids=["fastxai", "captum"])
def test_nested_layer_round_trip(module: object) -> None:
    model = TextNet()
    original, parameters, expected = model.encoder.embedding, list(model.parameters()), model(IDS)
    with pytest.warns(UserWarning):
        interpretable = module.configure_interpretable_embedding_layer(model, "encoder.embedding")  # type: ignore[attr-defined]
    assert model.encoder.embedding is interpretable and interpretable.embedding is original
    assert (interpretable.full_name, interpretable.num_embeddings, interpretable.embedding_dim) == (
        "encoder.embedding",
        13,
        4,
    )
    vectors = interpretable.indices_to_embeddings(IDS)
    assert torch.equal(vectors, original(IDS))
    torch.testing.assert_close(model(vectors), expected)
    assert list(model.parameters()) == parameters  # the original layer stays a submodule
    module.remove_interpretable_embedding_layer(model, interpretable)  # type: ignore[attr-defined]
    assert model.encoder.embedding is original and list(model.parameters()) == parameters
    torch.testing.assert_close(model(IDS), expected)


def test_custom_layer_in_a_module_list_matches_captum() -> None:
    results = []
    for module in (fc, captum_attr):
        model = TextNet()
        expected = model(IDS, positions=POSITIONS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            interpretable = module.configure_interpretable_embedding_layer(model, "blocks.0")
        assert model.blocks[0] is interpretable and isinstance(
            interpretable, module.InterpretableEmbeddingBase
        )
        assert interpretable.num_embeddings is None and interpretable.embedding_dim is None
        vectors = interpretable.indices_to_embeddings(IDS, positions=POSITIONS)
        output = model(vectors, positions=POSITIONS)  # the layer passes the vectors through
        torch.testing.assert_close(output, expected)
        results.append((vectors, output, interpretable(input=vectors, positions=None)))
        module.remove_interpretable_embedding_layer(model, interpretable)
        assert isinstance(model.blocks[0], PairEmbedding)
    for ours, theirs in zip(*results, strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(results[0][2], results[0][0])  # forward returns its first (keyword) argument


def test_integrated_gradients_on_the_embeddings_matches_captum() -> None:
    model = TextNet()
    with pytest.warns(UserWarning, match="encoder.embedding"):
        interpretable = fc.configure_interpretable_embedding_layer(model, "encoder.embedding")
    vectors = interpretable.indices_to_embeddings(IDS)
    reference = interpretable.indices_to_embeddings(torch.zeros_like(IDS))
    ours = fc.IntegratedGradients(model).attribute(vectors, baselines=reference, target=1, n_steps=20)
    theirs = captum_attr.IntegratedGradients(model).attribute(
        vectors, baselines=reference, target=1, n_steps=20
    )
    fc.remove_interpretable_embedding_layer(model, interpretable)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_errors_are_captums_kinds_and_name_the_argument() -> None:
    model = TextNet()
    for module in (fc, captum_attr):  # both: AttributeError for a missing name
        with pytest.raises(AttributeError):
            module.configure_interpretable_embedding_layer(model, "encoder.missing")
    with pytest.raises(
        ValueError, match=r"embedding_layer_name 'encoder.missing'.*model.encoder has no attribute"
    ):
        fc.configure_interpretable_embedding_layer(model, "encoder.missing")
    with pytest.raises(ValueError, match="embedding_layer_name"):
        fc.configure_interpretable_embedding_layer(model, "encoder.")
    with pytest.raises(TypeError, match="embedding_layer_name must be a str"):
        fc.configure_interpretable_embedding_layer(model, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        fc.configure_interpretable_embedding_layer(lambda ids: ids, "embedding")  # type: ignore[arg-type]
    with pytest.warns(UserWarning):
        interpretable = fc.configure_interpretable_embedding_layer(model, "encoder.embedding")
    with pytest.raises(AssertionError, match="already an InterpretableEmbeddingBase"):  # Captum asserts
        fc.configure_interpretable_embedding_layer(model, "encoder.embedding")
    with pytest.raises(ValueError, match="got no argument"):
        interpretable()
    with pytest.raises(TypeError, match="interpretable_emb must be"):
        fc.remove_interpretable_embedding_layer(model, model.encoder)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interpretable_emb: the model's layer"):
        fc.remove_interpretable_embedding_layer(TextNet(), interpretable)  # another model: not overwritten
    fc.remove_interpretable_embedding_layer(model, interpretable)
    fc.remove_interpretable_embedding_layer(model, interpretable)  # twice: nothing more to do
    assert isinstance(model.encoder.embedding, nn.Embedding)
