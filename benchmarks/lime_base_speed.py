"""Captum's ``LimeBase`` against fastxai's drop-in, default arguments, one thread, best of three:
``PYTHONPATH=. python benchmarks/lime_base_speed.py``.

Two set-ups: an MLP on 20 features (10 groups, 1000 fixed samples, linear surrogate); and Captum's
text-classification LIME tutorial's, a token-id input [1, 128] to a 4-layer transformer encoder,
a 0/1 vector per token mapped back to ids (removed tokens become id 0), the cosine of mean
embeddings as similarity, ``SkLearnLasso``, 500 fixed samples (both libraries fit the same data
and give the same coefficients, printed).

Captum scores one perturbation per forward pass; fastxai's default scores them in chunks. The
user's functions run once per sample in both, so their cost is the floor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from captum import attr as captum_attr
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
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


def best_of_three(name: str, lime: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = lime.attribute(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    print(f"{name}: {best:.3f} s")
    return result


def mlp_case() -> None:
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    x, mask = torch.randn(1, 20), torch.arange(20).view(1, -1) // 2
    samples = torch.bernoulli(torch.full((1000, 1, 10), 0.5), generator=torch.Generator().manual_seed(1))

    def perturb(original: torch.Tensor, **kwargs: Any) -> Iterator[torch.Tensor]:
        yield from samples

    def from_interp(sample: torch.Tensor, original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return sample[0][mask] * original

    for name, cls in (("MLP, captum", captum_attr.LimeBase), ("MLP, fastxai", fc.LimeBase)):
        lime = cls(model, SkLearnLinearRegression(), lambda *a, **k: 1.0, perturb, True, from_interp, None)
        best_of_three(name, lime, x, target=0, n_samples=1000)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mlp_case()
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
        results[name] = best_of_three(f"transformer, {name}", lime, ids, target=1, n_samples=500)
    gap = (results["captum"] - results["fastxai"]).abs().max().item()
    print(f"largest difference of the coefficients: {gap:.1e}")


if __name__ == "__main__":
    main()
