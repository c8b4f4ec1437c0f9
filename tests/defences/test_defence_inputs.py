"""Bad input to the defences, the detector and the attacks' ``eot_samples``: a clear error naming
the argument before the model runs; the model left as found after success and after an error."""

from __future__ import annotations

import functools

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

import fastxai as fx


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Flatten(), nn.LazyLinear(4))
        self.inner(torch.zeros(1, 1, 8, 8))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


X = torch.rand(2, 1, 8, 8)

BAD = [
    (lambda m: fx.BitDepthReduction(m, 0), ValueError, "bits must be an int"),
    (lambda m: fx.BitDepthReduction(m, 17), ValueError, r"bits must be an int in \[1, 16\]"),
    (lambda m: fx.BitDepthReduction(m, True), ValueError, "bits"),
    (lambda m: fx.BitDepthReduction(m, 2, bounds=(1.0, 0.0)), ValueError, "bounds"),
    (lambda m: fx.BitDepthReduction(m, 2, bpda=1), TypeError, "bpda must be a bool"),
    (lambda m: fx.BitDepthReduction("model", 2), TypeError, "model must be"),
    (lambda m: fx.MedianSmoothing(m, 0), ValueError, "size must be an int"),
    (lambda m: fx.JpegCompression(m, 0), ValueError, "quality must be an int"),
    (lambda m: fx.JpegCompression(m, 101), ValueError, r"quality must be an int in \[1, 100\]"),
    (lambda m: fx.RandomResizePad(m, 0), ValueError, "size must be an int"),
    (lambda m: fx.RandomResizePad(m, 10, seed=-1), ValueError, "seed must be an int"),
    (lambda m: fx.RandomResizePad(m, 10, fill=float("nan")), ValueError, "fill must be a finite"),
    (lambda m: fx.RandomResizePad(m, 6)(X), ValueError, "inputs must be images .* size 6"),
    (lambda m: fx.MedianSmoothing(m, 2)(X.flatten(1)), ValueError, r"inputs must be images \[B, C, H, W\]"),
    (lambda m: fx.reduce_bit_depth(X.long(), 2), TypeError, "inputs must be a floating-point"),
    (lambda m: fx.median_smooth(X[0], 2), ValueError, r"inputs must be images \[B, C, H, W\]"),
    (lambda m: fx.jpeg_compress(X, 50, bounds=(0, 0)), ValueError, "bounds"),
    (lambda m: fx.random_resize_pad(X, 10, generator=3), TypeError, "generator must be"),
    (lambda m: fx.random_resize_pad(X, 7), ValueError, "size must be >= the input's"),
    (lambda m: fx.squeezing_scores(m, X, squeezers=[]), ValueError, "squeezers must be a non-empty"),
    (lambda m: fx.squeezing_scores(m, X, squeezers=[3]), TypeError, r"squeezers\[0\] must be callable"),
    (lambda m: fx.fit_squeezing_detector(m, X, fpr=1.0), ValueError, r"fpr must be a number in \[0, 1\)"),
    (lambda m: fx.fit_squeezing_detector(m, X, fpr=-0.1), ValueError, "fpr"),
    (lambda m: fx.fit_squeezing_detector(m, X.double().long()), TypeError, "inputs must be a floating"),
    (lambda m: fx.fit_squeezing_detector(m, X, chunk_size=0), ValueError, "chunk_size"),
    (lambda m: fx.pgd(m, X, eot_samples=0), ValueError, "eot_samples must be an int >= 1"),
    (lambda m: fx.pgd(m, X, eot_samples=2.0), ValueError, "eot_samples"),
    (lambda m: fx.bim(m, X, eot_samples=-1), ValueError, "eot_samples"),
    (lambda m: fx.apgd(m, X, eot_samples=0), ValueError, "eot_samples"),
    (lambda m: fx.pgd(m, X, eot_samples=2, cuda_graph=True), ValueError, "cuda_graph=True replays"),
    (
        lambda m: fx.robust_accuracy(m, [(X, torch.tensor([0, 1]))], eot_samples=0),
        ValueError,
        "eot_samples",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_refused_before_the_model_runs(call, error: type, message: str) -> None:  # type: ignore[no-untyped-def]
    model = Counting()
    with pytest.raises(error, match=message):
        call(model)
    assert model.calls == 0


def test_squeezer_changing_the_batch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"squeezers\[0\] must return a batch of 2"):
        fx.squeezing_scores(small_cnn(), torch.rand(2, 1, 8, 8), squeezers=[lambda x: x[:1]])


def _awkward() -> nn.Module:
    model = small_cnn(seed=0).train()
    model[0].weight.requires_grad_(False)
    model[1].register_forward_hook(lambda module, inputs, output: None)
    return model


CALLS = {
    "pgd_bpda": lambda m, x: fx.pgd(fx.BitDepthReduction(m, 2, bpda=True), x, steps=2, seed=0),
    "pgd_eot": lambda m, x: fx.pgd(fx.RandomResizePad(m, 10, seed=0), x, steps=2, eot_samples=2, seed=0),
    "apgd_eot": lambda m, x: fx.apgd(fx.JpegCompression(m, 50, bpda=True), x, steps=2, eot_samples=2, seed=0),
    "detector": lambda m, x: fx.fit_squeezing_detector(
        m, x, squeezers=[functools.partial(fx.median_smooth, size=3)]
    ).detect(x),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_model_left_as_found(call: str) -> None:
    model = _awkward()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    before = model_state(model)
    CALLS[call](model, x)
    assert_same_state(before, model_state(model))

    def failing(inputs: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("squeezer crash")

    with pytest.raises(RuntimeError, match="squeezer crash"):
        fx.squeezing_scores(model, x, squeezers=[failing])
    assert_same_state(before, model_state(model))
