"""Captum's ``LimeBase`` against fastxai's drop-in on the set-up of Captum's text-classification
LIME tutorial: a token-id input [1, 128], a 0/1 vector per token mapped back to ids (removed
tokens become id 0), the cosine of mean embeddings as similarity, ``SkLearnLasso``; 500 fixed
samples (both fit the same data and give the same coefficients), default arguments, a 4-layer
transformer encoder, one thread, best of three: ``PYTHONPATH=. python benchmarks/lime_base_speed.py``.

Captum scores one perturbation per forward pass; fastxai's default scores them in chunks. The
user's functions run once per sample in both, so their cost is the floor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from captum import attr as captum_attr
from captum._utils.models.linear_model import SkLearnLasso
from torch import nn

from fastxai.compat import captum as fc


class TextClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(5000, 256)
        layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4)
        self.head = nn.Linear(256, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embedding(ids)).mean(1))


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TextClassifier().eval()
    ids = torch.randint(1, 5000, (1, 128))
    samples = torch.bernoulli(
        torch.full((500, 1, 128), 0.7), generator=torch.Generator().manual_seed(1)
    ).long()

    def perturb(original: torch.Tensor, **kwargs: Any) -> Iterator[torch.Tensor]:
        yield from samples

    def to_ids(sample: torch.Tensor, original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.where(sample.bool(), original, torch.zeros_like(original))

    def similarity(original: torch.Tensor, perturbed: torch.Tensor, _: Any, **kwargs: Any) -> torch.Tensor:
        a, b = model.embedding(original).mean(1), model.embedding(perturbed).mean(1)
        distance = 1 - torch.nn.functional.cosine_similarity(a, b)
        return torch.exp(-(distance**2) / (2 * 0.75**2))

    results = {}
    for name, cls in (("captum", captum_attr.LimeBase), ("fastxai", fc.LimeBase)):
        lime = cls(model, SkLearnLasso(alpha=0.001), similarity, perturb, True, to_ids, None)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            results[name] = lime.attribute(ids, target=1, n_samples=500)
            best = min(best, time.perf_counter() - start)
        print(f"{name}: {best:.2f} s")
    gap = (results["captum"] - results["fastxai"]).abs().max().item()
    print(f"largest difference of the coefficients: {gap:.1e}")


if __name__ == "__main__":
    main()
