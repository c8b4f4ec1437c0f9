"""Layer attribution on a tiny BERT (random weights, nothing downloaded) beside Captum's
``LayerIntegratedGradients``: token ids, pad-token baselines, an attention mask batched over steps."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from real_models import tiny_bert
from torch import nn

import fastxai as fx


class Logits(nn.Module):
    """transformers' classifier as ``(ids, attention_mask) -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, attention_mask=attention_mask).logits


@pytest.fixture(scope="module")
def bert() -> Logits:
    return Logits(tiny_bert(pad_token_id=0))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (3, 7), generator=generator)
    mask = (torch.arange(7) < torch.tensor([[7], [5], [3]])).long()
    return ids * mask, mask


@pytest.mark.parametrize("layer", ["model.bert.embeddings.word_embeddings", "model.bert.embeddings"])
def test_against_captum_layer_integrated_gradients(bert: Logits, layer: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    bert.eval()
    ids, mask = _batch()
    pad = torch.zeros_like(ids)
    target = torch.tensor([0, 1, 1])
    # chunk_size 8 < 3 rows x 6 steps: steps go through the model in blocks, with the mask's rows
    ours, delta = fx.integrated_gradients(
        bert,
        ids,
        baselines=0,
        target=target,
        n_steps=6,
        layer=layer,
        return_convergence_delta=True,
        forward_kwargs={"attention_mask": mask},
        chunk_size=8,
    )
    module = dict(bert.named_modules())[layer]
    theirs, their_delta = captum_attr.LayerIntegratedGradients(bert, module).attribute(
        ids,
        baselines=pad,
        target=target,
        n_steps=6,
        additional_forward_args=(mask,),
        return_convergence_delta=True,
    )
    assert ours.shape == theirs.shape == (3, 7, 16)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(delta, their_delta.to(delta.dtype), rtol=1e-3, atol=1e-5)
    per_token = ours.sum(-1)
    assert per_token[2, 3:].abs().max() < 1e-6 < per_token[2, :3].abs().max()  # padding after the mask


def test_default_layer_is_the_input_embedding(bert: Logits) -> None:
    ids, mask = _batch()
    kwargs = {"attention_mask": mask}
    default = fx.saliency(bert, ids, target=1, forward_kwargs=kwargs)
    named = fx.saliency(
        bert, ids, target=1, forward_kwargs=kwargs, layer="model.bert.embeddings.word_embeddings"
    )
    torch.testing.assert_close(default, named)


def test_model_left_as_found(bert: Logits) -> None:
    ids, mask = _batch()
    bert.train()
    before = model_state(bert)
    fx.integrated_gradients(bert, ids, target=0, n_steps=3, forward_kwargs={"attention_mask": mask})
    fx.gradient_shap(
        bert,
        ids,
        target=0,
        baselines=torch.zeros_like(ids),
        n_samples=2,
        seed=0,
        forward_kwargs={"attention_mask": mask},
    )
    assert_same_state(before, model_state(bert))
    bert.eval()


def test_deeplift_takes_token_ids_at_the_input_embedding(bert: Logits) -> None:
    """``fx.deeplift`` on token ids: DeepLIFT at the input embedding against pad-id baselines,
    as the gradient methods take token ids (it refused integer inputs)."""
    ids, _ = _batch()
    attributions, delta = fx.deeplift(bert, ids, target=1, return_convergence_delta=True)
    assert attributions.shape == (3, 7, 16) and attributions.dtype == torch.float32
    named = fx.deeplift(bert, ids, target=1, baselines=0, layer="model.bert.embeddings.word_embeddings")
    torch.testing.assert_close(attributions, named)
    with torch.no_grad():
        difference = bert(ids)[:, 1] - bert(torch.zeros_like(ids))[:, 1]
    torch.testing.assert_close(attributions.sum((1, 2)) - difference, delta)
    with pytest.raises(TypeError, match="baselines of token-id inputs"):
        fx.deeplift(bert, ids, target=1, baselines=0.5)


class BagOfEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(20, 4)
        self.head = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).mean(1))


def test_deeplift_on_token_ids_sums_to_the_score_difference() -> None:
    """Linear maps and a ReLU after the embedding: DeepLIFT's attributions at the embedding sum
    to ``f(x) - f(x')`` exactly (Rescale rule), with any token-id baselines."""
    model = BagOfEmbeddings().eval()
    ids = torch.randint(1, 20, (4, 5), generator=torch.Generator().manual_seed(2))
    baselines = torch.full((1, 5), 7)
    attributions, delta = fx.deeplift(
        model, ids, target=2, baselines=baselines, return_convergence_delta=True
    )
    assert attributions.shape == (4, 5, 4)
    torch.testing.assert_close(delta, torch.zeros(4), atol=1e-5, rtol=0)
