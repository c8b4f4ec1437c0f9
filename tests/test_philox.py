"""The PyTorch Philox 4x32-10 and the noise drawn from it."""

from __future__ import annotations

import math

import pytest
import torch

from fastxai.reference import gaussian_perturb
from fastxai.reference.philox import philox4x32_10, philox_normal

# Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
def test_philox_known_answers(counter: tuple, key: tuple, expected: tuple) -> None:
    words = philox4x32_10(*(torch.tensor(c) for c in counter), *key)
    assert tuple(int(w) for w in words) == expected


def test_normals_are_standard_normal() -> None:
    z = philox_normal(torch.arange(200_000), 0, 0, seed=1234).double()
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel())
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / z.numel())
    # Tail mass against the normal CDF: P(|z| > 2) = 0.0455, P(|z| > 3) = 0.0027.
    for bound, mass in [(2.0, 0.04550026), (3.0, 0.00269980)]:
        observed = (z.abs() > bound).double().mean().item()
        assert abs(observed - mass) < 5 * math.sqrt(mass * (1 - mass) / z.numel())
    assert torch.isfinite(z).all()


def test_lanes_and_streams_are_uncorrelated() -> None:
    z = philox_normal(torch.arange(40_000), torch.arange(3).view(3, 1), 0, seed=5).double()
    limit = 5 / math.sqrt(z.shape[1])
    assert abs(torch.corrcoef(z)[0, 1].item()) < limit  # neighbouring samples
    lanes = z[0].view(-1, 4)
    correlation = torch.corrcoef(lanes.T)
    assert (correlation - torch.eye(4, dtype=torch.float64)).abs().max().item() < 2 * limit


def test_seeds_give_different_noise() -> None:
    first = philox_normal(torch.arange(64), 0, 0, seed=0)
    assert not torch.equal(first, philox_normal(torch.arange(64), 0, 0, seed=1))
    assert not torch.equal(first, philox_normal(torch.arange(64), 0, 0, seed=2**32))  # high key word
    assert torch.equal(first, philox_normal(torch.arange(64), 0, 0, seed=0))


def test_blocks_of_samples_and_rows_equal_one_large_draw() -> None:
    x = torch.randn(5, 3, 7)
    sigma = torch.rand(5)
    whole = gaussian_perturb(x, sigma, seed=9, sample_offset=0, n_samples=6)
    block = gaussian_perturb(x[2:4], sigma[2:4], seed=9, sample_offset=3, n_samples=2, batch_offset=2)
    assert torch.equal(block, whole[3:5, 2:4])
