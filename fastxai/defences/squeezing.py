"""Feature squeezing (Xu, Evans and Qi 2018, "Feature squeezing: detecting adversarial examples
in deep neural networks"): bit-depth reduction and median smoothing, as input transforms and as
model wrappers.

- Bit depth ``b``: ``x' = round(x (2^b - 1)) / (2^b - 1)`` on inputs scaled to [0, 1] (``round``
  halves to even, as ``numpy.rint`` in the authors' code).
- Median smoothing ``k x k``: each pixel of each channel becomes the median of the ``k x k``
  window ``[i - k//2, i + k - 1 - k//2]`` around it (per row and column), the image extended by
  half-sample symmetric reflection (``d c b a | a b c d``), which is what the authors'
  ``scipy.ndimage.median_filter(..., mode='reflect')`` does; for an even window of ``n = k^2``
  values the median is the ``n // 2``-th smallest (0-based, the upper of the two middle values),
  also as scipy's. Note torch's ``F.pad(mode='reflect')`` is the other reflection (``d c b | a b c
  d``), not used here.

>>> squeezed = fastxai.BitDepthReduction(model, bits=1)
>>> smoothed = fastxai.median_smooth(x, size=2)  # x: [B, C, H, W]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastxai._checks import check_count
from fastxai._model import Model, check_inputs
from fastxai.defences._defended import InputTransformDefence

MAX_BITS = 16


def check_bounds(bounds: object) -> tuple[float, float]:
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not float(bounds[0]) < float(bounds[1])
    ):
        raise ValueError(f"bounds must be (lower, upper) numbers with lower < upper, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def check_bits(bits: object) -> int:
    value = check_count("bits", bits)
    if value > MAX_BITS:
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}], got {bits!r}")
    return value


def check_image_batch(inputs: object, name: str = "inputs") -> torch.Tensor:
    x = check_inputs(inputs)
    if x.dim() != 4:
        raise ValueError(f"{name} must be images [B, C, H, W], got shape {tuple(x.shape)}")
    return x


def _bit_depth(x: torch.Tensor, bits: int, bounds: tuple[float, float]) -> torch.Tensor:
    levels = float(2**bits - 1)
    low, high = bounds
    if (low, high) == (0.0, 1.0):
        return torch.round(x * levels) / levels
    unit = (x - low) / (high - low)
    return torch.round(unit * levels) / levels * (high - low) + low


def reduce_bit_depth(
    inputs: torch.Tensor, bits: int, *, bounds: Sequence[float] = (0.0, 1.0)
) -> torch.Tensor:
    """Bit-depth reduction: ``round(u (2^bits - 1)) / (2^bits - 1)`` with ``u`` the input scaled
    from ``bounds`` to [0, 1], mapped back to ``bounds``. Any shape [B, *F]; same shape back.

    >>> reduce_bit_depth(torch.tensor([[0.2, 0.6]]), bits=1)  # tensor([[0., 1.]])
    """
    low_high = check_bounds(bounds)
    bits = check_bits(bits)
    return _bit_depth(check_inputs(inputs), bits, low_high)


def _symmetric_index(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices of a padded axis under half-sample symmetric reflection, any pad width."""
    index = torch.arange(-before, length + after, device=device) % (2 * length)
    return torch.where(index >= length, 2 * length - 1 - index, index)


def _median(x: torch.Tensor, size: int) -> torch.Tensor:
    before, after = size // 2, size - 1 - size // 2
    height, width = x.shape[-2:]
    rows = _symmetric_index(height, before, after, x.device)
    cols = _symmetric_index(width, before, after, x.device)
    padded = x.index_select(-2, rows).index_select(-1, cols)
    windows = padded.unfold(-2, size, 1).unfold(-2, size, 1)  # [B, C, H, W, k, k]
    # kthvalue is 1-based: the (n // 2)-th smallest, 0-based, as scipy's median rank
    return windows.flatten(-2).kthvalue(size * size // 2 + 1, dim=-1).values


def median_smooth(inputs: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Median smoothing over ``size x size`` windows, per channel, symmetric-reflected borders
    (see the module docstring for the window's anchor and the even-size median).

    inputs: [B, C, H, W]; returns [B, C, H, W]. Differentiable almost everywhere (the gradient
    flows to the pixel each median picked).

    >>> median_smooth(x, size=3)
    """
    size = check_count("size", size)
    return _median(check_image_batch(inputs), size)


class BitDepthReduction(InputTransformDefence):
    """``model(reduce_bit_depth(x, bits))``; ``bpda=True`` for the adaptive attack's gradient.

    >>> defended = BitDepthReduction(model, bits=1)
    >>> fastxai.pgd(BitDepthReduction(model, bits=1, bpda=True), x, y)
    """

    def __init__(
        self, model: Model, bits: int = 1, *, bounds: Sequence[float] = (0.0, 1.0), bpda: bool = False
    ) -> None:
        checked_bits, checked_bounds = check_bits(bits), check_bounds(bounds)
        super().__init__(model, bpda=bpda)
        self.bits, self.bounds = checked_bits, checked_bounds

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        return _bit_depth(inputs, self.bits, self.bounds)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, bounds={self.bounds}, bpda={self.bpda}"


class MedianSmoothing(InputTransformDefence):
    """``model(median_smooth(x, size))`` on image inputs [B, C, H, W].

    >>> defended = MedianSmoothing(model, size=2)
    """

    def __init__(self, model: Model, size: int = 2, *, bpda: bool = False) -> None:
        checked = check_count("size", size)
        super().__init__(model, bpda=bpda)
        self.size = checked

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 4:
            raise ValueError(f"inputs must be images [B, C, H, W], got shape {tuple(inputs.shape)}")
        return _median(inputs, self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, bpda={self.bpda}"
