"""Explaining generated tokens: fastxai.explain_generation against Captum's per-step loop and the floor.

A tiny random GPT-2 (2 layers, width 64, vocabulary 512; nothing downloaded), B prompts of
T_in tokens and T_out continuation tokens each, Integrated Gradients at the input embedding with
``n_steps`` Gauss-Legendre points, the log-probability of each continuation token as the target.

- floor: the same model work done plainly: one forward and backward over all the rows
  (B * T_out * n_steps sequences of T_in + T_out tokens), gradients for the embeddings only, in
  the same chunks as fastxai;
- fastxai: ``fx.explain_generation`` (all steps of all prompts batched);
- captum: the loop Captum's ``LLMGradientAttribution`` runs, one ``LayerIntegratedGradients``
  call per prompt and generated token on the embedding layer (``internal_batch_size`` = all
  steps in one pass), targets the log-probabilities of a wrapper.

The figure that matters is Captum over fastxai, and fastxai over the floor.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
import torch
from torch import nn

import fastxai as fx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from real_models import transformers as import_transformers

transformers = import_transformers()
captum_attr = pytest.importorskip("captum.attr")

BATCH, T_IN, T_OUT, STEPS = 64, 16, 32, 16  # the 64 prompts x 32 generated tokens
CHUNK = 512


def _model() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=512, n_positions=64)
    return transformers.GPT2LMHeadModel(config).eval()


class LogProbs(nn.Module):
    """Scores [N, T * V]: the model's log-probabilities, flattened for Captum's int targets."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.model(ids).logits, dim=-1).flatten(1)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 512, (BATCH, T_IN), generator=generator)
    continuations = torch.randint(0, 512, (BATCH, T_OUT), generator=generator)
    return prompts, continuations


def _floor(model: nn.Module, prompts: torch.Tensor, continuations: torch.Tensor) -> None:
    ids = torch.cat([prompts, continuations], 1).repeat_interleave(T_OUT * STEPS, 0)
    embedding = model.get_input_embeddings()
    positions = torch.arange(T_IN - 1, T_IN + T_OUT - 1).repeat(BATCH).repeat_interleave(STEPS)
    tokens = continuations.reshape(-1).repeat_interleave(STEPS)
    for start in range(0, ids.shape[0], CHUNK):
        rows = slice(start, start + CHUNK)
        embeds = embedding(ids[rows]).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits
        log_probs = torch.log_softmax(logits, dim=-1)
        index = torch.arange(embeds.shape[0])
        score = log_probs[index, positions[rows], tokens[rows]].sum()
        torch.autograd.grad(score, embeds)


def _captum(model: nn.Module, prompts: torch.Tensor, continuations: torch.Tensor) -> None:
    wrapped = LogProbs(model)
    lig = captum_attr.LayerIntegratedGradients(wrapped, model.get_input_embeddings())
    vocab = 512
    for b in range(BATCH):
        ids = torch.cat([prompts[b], continuations[b]]).unsqueeze(0)
        for j in range(T_OUT):
            target = (T_IN + j - 1) * vocab + int(continuations[b, j])
            lig.attribute(ids, baselines=torch.zeros_like(ids), target=target, n_steps=STEPS,
                          internal_batch_size=STEPS)


@pytest.mark.parametrize("implementation", ["floor", "fastxai", "captum"])
def test_explain_generation(benchmark: Any, implementation: str) -> None:
    model = _model()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    prompts, continuations = _data()
    benchmark.group = f"explain_generation gpt2-tiny {BATCH}x{T_OUT} tokens, {STEPS} steps"
    if implementation == "floor":
        run = lambda: _floor(model, prompts, continuations)  # noqa: E731
    elif implementation == "fastxai":
        run = lambda: fx.explain_generation(  # noqa: E731
            model, prompts, continuations, n_steps=STEPS, chunk_size=CHUNK
        )
    else:
        run = lambda: _captum(model, prompts, continuations)  # noqa: E731
    benchmark.pedantic(run, rounds=2, warmup_rounds=0)
