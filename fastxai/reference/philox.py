"""Philox 4x32-10 and the gaussian noise built on it, in plain PyTorch.

This is the oracle for the in-kernel generators of the Triton and native backends: all of
them turn the same counters into the same normals, so noise is never stored and a result
does not depend on how samples are chunked or which backend drew them.

Counter layout (one Philox call yields four normals)::

    counter = (element_index // 4, sample_index, batch_index, 0)
    key     = (seed mod 2**32, seed // 2**32)
    r0..r3  = philox4x32_10(counter, key)
    u1      = ((r0 >> 8) + 1) * 2**-24, u2 = (r1 >> 8) * 2**-24      # pair 0
    u3      = ((r2 >> 8) + 1) * 2**-24, u4 = (r3 >> 8) * 2**-24      # pair 1
    lane = element_index % 4: z = sqrt(-2 ln u1) * (cos, sin)(2 pi u2) for lanes 0, 1,
                              z = sqrt(-2 ln u3) * (cos, sin)(2 pi u4) for lanes 2, 3

All floating-point work is float32. ``u1`` lies in (0, 1], so the logarithm is finite.
Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011.
"""

from __future__ import annotations

import torch

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
TWO_PI_F32 = 6.2831854820251465  # float32(2 * pi)


def _mulhilo(multiplier: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``multiplier * value`` for uint32 values held in int64.

    The 64-bit product would overflow int64, so ``value`` is split into 16-bit halves:
    ``m*v = (m*v_hi + (m*v_lo >> 16)) * 2**16 + (m*v_lo & 0xFFFF)``, every term below 2**49.
    """
    product_hi_half = multiplier * (value >> 16)
    product_lo_half = multiplier * (value & 0xFFFF)
    upper = product_hi_half + (product_lo_half >> 16)
    hi = upper >> 16
    lo = ((upper & 0xFFFF) << 16) | (product_lo_half & 0xFFFF)
    return hi, lo


def philox4x32_10(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, k0: int, k1: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox 4x32 with 10 rounds on int64 tensors holding uint32 counter words.

    Returns the four uint32 output words, as int64 tensors, broadcast over the counters.
    """
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in (c0, c1, c2, c3))
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    k0 &= _MASK32
    k1 &= _MASK32
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def split_seed(seed: int) -> tuple[int, int]:
    """The Philox key words of a seed in [0, 2**63)."""
    return seed & _MASK32, (seed >> 32) & _MASK32


def _uniform_open_closed(word: torch.Tensor) -> torch.Tensor:
    return ((word >> 8) + 1).to(torch.float32) * (2.0**-24)


def _uniform_closed_open(word: torch.Tensor) -> torch.Tensor:
    return (word >> 8).to(torch.float32) * (2.0**-24)


def philox_normal(
    element_index: torch.Tensor,
    sample_index: torch.Tensor | int,
    batch_index: torch.Tensor | int,
    seed: int,
) -> torch.Tensor:
    """Standard normals (float32) for the given counters, broadcast together."""
    element_index = torch.as_tensor(element_index, dtype=torch.int64)
    k0, k1 = split_seed(seed)
    r0, r1, r2, r3 = philox4x32_10(
        element_index >> 2,
        torch.as_tensor(sample_index, dtype=torch.int64),
        torch.as_tensor(batch_index, dtype=torch.int64),
        torch.zeros((), dtype=torch.int64),
        k0,
        k1,
    )
    lane = (element_index & 3).expand_as(r0)
    second_pair = lane >= 2
    radius_word = torch.where(second_pair, r2, r0)
    angle_word = torch.where(second_pair, r3, r1)
    radius = torch.sqrt(-2.0 * torch.log(_uniform_open_closed(radius_word)))
    angle = _uniform_closed_open(angle_word) * torch.tensor(TWO_PI_F32, dtype=torch.float32)
    trig = torch.where((lane & 1) == 1, torch.sin(angle), torch.cos(angle))
    return radius * trig
