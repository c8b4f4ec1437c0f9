"""JPEG-like compression as an input transformation (Dziugaite et al. 2016; Guo et al. 2018),
in torch: 8x8 block DCT, quantisation at a quality factor, inverse DCT.

Per channel (greyscale, or Y, Cb, Cr of an RGB image, JFIF conversion, no chroma subsampling):
levels ``v = round(255 u)`` with ``u`` the input scaled from ``bounds`` to [0, 1]; blocks of
``v - 128`` (the image extended by repeating its last row and column to a multiple of 8, as
libjpeg does); ``c = D B D^T`` with the orthonormal DCT-II matrix
``D[k, n] = a_k cos(pi (2n + 1) k / 16)``, ``a_0 = sqrt(1/8)``, ``a_k = sqrt(2/8)``;
``c' = Q round(c / Q)`` with the IJG tables (ITU T.81 Annex K) scaled by the quality factor
(``5000 / q`` below 50, ``200 - 2q`` from 50, entries clamped to [1, 255]); ``B' = D^T c' D``;
``round(B' + 128)`` clamped to [0, 255], scaled back to ``bounds``.

Piecewise constant in the input (every ``round``): its gradient is zero almost everywhere,
which is why a naive gradient attack fails and BPDA (``bpda=True``) is the honest one.

>>> defended = fastxai.JpegCompression(model, quality=75)
>>> compressed = fastxai.jpeg_compress(x, quality=75)  # x: [B, C, H, W]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional

from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.defences._defended import InputTransformDefence
from fastxai.defences.squeezing import check_bounds, check_image_batch

BLOCK = 8
LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *(((99,) * 8,) * 4),
)
# JFIF RGB -> YCbCr (offset 128 on the chroma channels) and back
TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def check_quality(quality: object) -> int:
    value = check_count("quality", quality)
    if value > 100:
        raise ValueError(f"quality must be an int in [1, 100], got {quality!r}")
    return value


def dct_matrix(dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix ``D`` [8, 8]: ``D @ D.T == I``."""
    k = torch.arange(BLOCK, dtype=torch.float64).view(-1, 1)
    n = torch.arange(BLOCK, dtype=torch.float64).view(1, -1)
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * BLOCK)) * math.sqrt(2 / BLOCK)
    matrix[0] = math.sqrt(1 / BLOCK)
    return matrix.to(dtype=dtype, device=device)


def block_dct(blocks: torch.Tensor) -> torch.Tensor:
    """2-d DCT-II of every 8x8 block: ``D B D^T``; blocks [..., 8, 8]."""
    d = dct_matrix(blocks.dtype, blocks.device)
    return d @ blocks @ d.T


def block_idct(coefficients: torch.Tensor) -> torch.Tensor:
    """The inverse of ``block_dct``: ``D^T C D``; coefficients [..., 8, 8]."""
    d = dct_matrix(coefficients.dtype, coefficients.device)
    return d.T @ coefficients @ d


def quantisation_table(quality: int, *, chroma: bool = False) -> torch.Tensor:
    """The IJG table scaled to ``quality`` in [1, 100], [8, 8] float64 (libjpeg's
    ``jpeg_quality_scaling`` with baseline clamping)."""
    quality = check_quality(quality)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(CHROMINANCE if chroma else LUMINANCE, dtype=torch.int64)
    return ((base * scale + 50) // 100).clamp(1, 255).double()


def _colour(levels: torch.Tensor, matrix: tuple[tuple[float, ...], ...], offset: float) -> torch.Tensor:
    """A 3x3 colour transform over dimension 1 of [B, 3, H, W]; ``offset`` is added to (YCbCr) or
    removed from (RGB) the two chroma channels."""
    m = torch.tensor(matrix, dtype=levels.dtype, device=levels.device)
    shift = torch.tensor([0.0, offset, offset], dtype=levels.dtype, device=levels.device).view(1, 3, 1, 1)
    if offset < 0:
        levels = levels + shift
        return torch.einsum("ij,bjhw->bihw", m, levels)
    return torch.einsum("ij,bjhw->bihw", m, levels) + shift


def _jpeg(x: torch.Tensor, quality: int, bounds: tuple[float, float]) -> torch.Tensor:
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    low, high = bounds
    levels = torch.round((x.to(work) - low) / (high - low) * 255).clamp(0, 255)
    colour = levels.shape[1] == 3
    if colour:
        levels = torch.round(_colour(levels, TO_YCBCR, 128.0)).clamp(0, 255)
    batch, channels, height, width = levels.shape
    tall, wide = -height % BLOCK, -width % BLOCK
    padded = (
        functional.pad(levels - 128, (0, wide, 0, tall), mode="replicate") if tall or wide else levels - 128
    )
    rows, cols = padded.shape[2] // BLOCK, padded.shape[3] // BLOCK
    blocks = padded.view(batch, channels, rows, BLOCK, cols, BLOCK).transpose(3, 4)
    luminance = quantisation_table(quality).to(dtype=work, device=x.device)
    if colour:
        chrominance = quantisation_table(quality, chroma=True).to(dtype=work, device=x.device)
        table = torch.stack([luminance, chrominance, chrominance]).view(1, 3, 1, 1, BLOCK, BLOCK)
    else:
        table = luminance.view(1, 1, 1, 1, BLOCK, BLOCK)
    coefficients = torch.round(block_dct(blocks) / table) * table
    restored = block_idct(coefficients).transpose(3, 4).reshape(padded.shape)[:, :, :height, :width] + 128
    if colour:
        restored = _colour(torch.round(restored).clamp(0, 255), TO_RGB, -128.0)
    out = torch.round(restored).clamp(0, 255) / 255 * (high - low) + low
    return out.to(x.dtype)


def jpeg_compress(
    inputs: torch.Tensor, quality: int = 75, *, bounds: Sequence[float] = (0.0, 1.0)
) -> torch.Tensor:
    """JPEG-like compression at ``quality`` in [1, 100] (see the module docstring).

    inputs: [B, C, H, W] within ``bounds`` (C = 3 is read as RGB and compressed in YCbCr, any
    other C channel by channel with the luminance table); returns [B, C, H, W].

    >>> jpeg_compress(x, quality=100)  # x to within a few 8-bit levels
    """
    low_high = check_bounds(bounds)
    quality = check_quality(quality)
    return _jpeg(check_image_batch(inputs), quality, low_high)


class JpegCompression(InputTransformDefence):
    """``model(jpeg_compress(x, quality))``; ``bpda=True`` for the adaptive attack's gradient.

    >>> fastxai.pgd(JpegCompression(model, quality=75, bpda=True), x, y)
    """

    def __init__(
        self, model: Model, quality: int = 75, *, bounds: Sequence[float] = (0.0, 1.0), bpda: bool = False
    ) -> None:
        checked_quality, checked_bounds = check_quality(quality), check_bounds(bounds)
        super().__init__(model, bpda=bpda)
        self.quality, self.bounds = checked_quality, checked_bounds

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images [B, C, H, W], got shape {tuple(inputs.shape)}")
        return _jpeg(inputs, self.quality, self.bounds)

    def extra_repr(self) -> str:
        return f"quality={self.quality}, bounds={self.bounds}, bpda={self.bpda}"
