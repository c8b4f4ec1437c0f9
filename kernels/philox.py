"""Philox 4x32-10 and the Box-Muller normals of ``fastxai.reference.philox``, as Triton helpers.

Counter ``(c0, c1, c2, c3)`` and key ``(k0, k1)`` are uint32 tensors (scalars or blocks, which
broadcast). One call yields four normals::

    r0..r3 = philox4x32_10(counter, key)
    z0, z1 = sqrt(-2 ln u_open(r0)) * (cos, sin)(2 pi u_closed(r1))
    z2, z3 = sqrt(-2 ln u_open(r2)) * (cos, sin)(2 pi u_closed(r3))

with ``u_open(w) = ((w >> 8) + 1) * 2**-24`` in (0, 1] and ``u_closed(w) = (w >> 8) * 2**-24``
in [0, 1), all in float32, bit-for-bit the reference's counter layout (not ``tl.randn``'s).
"""

from __future__ import annotations

import triton
import triton.language as tl

PHILOX_M0: tl.constexpr = tl.constexpr(0xD2511F53)
PHILOX_M1: tl.constexpr = tl.constexpr(0xCD9E8D57)
PHILOX_W0: tl.constexpr = tl.constexpr(0x9E3779B9)
PHILOX_W1: tl.constexpr = tl.constexpr(0xBB67AE85)
PHILOX_ROUNDS: tl.constexpr = tl.constexpr(10)
TWO_PI_F32: tl.constexpr = tl.constexpr(6.2831854820251465)  # float32(2 * pi), exactly representable
TWO_POW_M24: tl.constexpr = tl.constexpr(5.9604644775390625e-08)  # 2**-24


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox 4x32 with 10 rounds on uint32 words; returns the four output words (uint32)."""
    for _ in tl.static_range(PHILOX_ROUNDS):
        hi0 = tl.umulhi(c0, PHILOX_M0)
        lo0 = c0 * PHILOX_M0
        hi1 = tl.umulhi(c2, PHILOX_M1)
        lo1 = c2 * PHILOX_M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def uniform_open_closed(word):
    """uint32 word -> float32 in (0, 1]: ``((word >> 8) + 1) * 2**-24`` (exact)."""
    return ((word >> 8) + 1).to(tl.float32) * TWO_POW_M24


@triton.jit
def uniform_closed_open(word):
    """uint32 word -> float32 in [0, 1): ``(word >> 8) * 2**-24`` (exact)."""
    return (word >> 8).to(tl.float32) * TWO_POW_M24


@triton.jit
def box_muller(radius_word, angle_word):
    """Two standard normals (float32) from two uint32 words: ``r * cos(a)``, ``r * sin(a)``."""
    radius = tl.sqrt_rn(-2.0 * tl.log(uniform_open_closed(radius_word)))
    angle = uniform_closed_open(angle_word) * TWO_PI_F32
    return radius * tl.cos(angle), radius * tl.sin(angle)


@triton.jit
def philox_normal4(c0, c1, c2, c3, k0, k1):
    """The four float32 normals (lanes 0..3) of counter ``(c0, c1, c2, c3)`` under key ``(k0, k1)``."""
    r0, r1, r2, r3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    z0, z1 = box_muller(r0, r1)
    z2, z3 = box_muller(r2, r3)
    return z0, z1, z2, z3
