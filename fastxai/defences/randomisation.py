"""Randomised resizing and padding (Xie, Wang, Zhang, Ren and Yuille 2018, "Mitigating
adversarial effects through randomization"), as an input transform and a model wrapper.

Per sample, independently: draw ``e`` uniformly in ``[0, S - max(H, W)]`` (``S`` the output
side), resize the [H, W] image to ``[H + e, W + e]`` with nearest-neighbour sampling (source
pixel ``floor(i * H / (H + e))``, as the paper's ``NEAREST_NEIGHBOR`` resize and torch's
``interpolate(mode='nearest')``), then place it at a random offset ``(top, left)`` drawn
uniformly among all that fit in an ``S x S`` canvas of ``fill`` (zeros in the paper). Every
placement can be drawn (the paper's draws exclude the last offset; here all are in reach).

The whole batch is one gather, so the transform is differentiable in the pixels (each output
pixel is one input pixel or the fill): what defends is the randomness, and the honest attack
averages gradients over draws (EOT, ``eot_samples=`` in ``fastxai.pgd``).

>>> defended = fastxai.RandomResizePad(model, size=10, seed=0)  # 8x8 digits -> 10x10
>>> fastxai.pgd(defended, x, y, eps=0.1, eot_samples=16)
"""

from __future__ import annotations

import torch

from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.defences._defended import InputTransformDefence
from fastxai.defences.squeezing import check_image_batch


def check_size(size: object) -> int:
    return check_count("size", size)


def check_fill(fill: object) -> float:
    if (
        isinstance(fill, bool)
        or not isinstance(fill, (int, float))
        or fill != fill
        or abs(fill) == float("inf")
    ):
        raise ValueError(f"fill must be a finite number, got {fill!r}")
    return float(fill)


def draw_placements(
    batch: int, height: int, width: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample (growth ``e``, ``top``, ``left``), each [batch] int64 on the generator's device:
    ``e`` uniform in [0, size - max(H, W)], then ``top`` uniform in [0, size - H - e] and ``left``
    in [0, size - W - e]."""
    device = generator.device
    growth = torch.randint(0, size - max(height, width) + 1, (batch,), generator=generator, device=device)
    # uniform integers in [0, room] for a per-sample room: floor(u * (room + 1)), u in [0, 1)
    unit = torch.rand((2, batch), generator=generator, device=device, dtype=torch.float64)
    top = (unit[0] * (size - height - growth + 1)).floor().long()
    left = (unit[1] * (size - width - growth + 1)).floor().long()
    return growth, top, left


def resize_pad(
    inputs: torch.Tensor,
    growth: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    size: int,
    fill: float = 0.0,
) -> torch.Tensor:
    """The deterministic part: sample ``b`` resized to ``[H + e_b, W + e_b]`` (nearest) at
    ``(top_b, left_b)`` of a ``size x size`` canvas of ``fill``, as one gather.

    inputs: [B, C, H, W]; growth, top, left: [B] int64; returns [B, C, size, size].
    """
    batch, channels, height, width = inputs.shape
    device = inputs.device
    growth, top, left = growth.to(device), top.to(device), left.to(device)
    position = torch.arange(size, device=device).view(1, -1)

    def axis(length: int, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        resized = (length + growth).view(-1, 1)
        local = position - offset.view(-1, 1)  # [B, size]: index into the resized image
        inside = (local >= 0) & (local < resized)
        # nearest: source floor(local * length / resized), in integers to avoid float rounding
        source = torch.div(local.clamp_min(0) * length, resized, rounding_mode="floor").clamp_max(length - 1)
        return source, inside

    rows, row_inside = axis(height, top)
    cols, col_inside = axis(width, left)
    flat = (rows.view(batch, size, 1) * width + cols.view(batch, 1, size)).view(batch, 1, size * size)
    gathered = inputs.reshape(batch, channels, height * width).gather(2, flat.expand(-1, channels, -1))
    inside = (row_inside.view(batch, size, 1) & col_inside.view(batch, 1, size)).view(batch, 1, size * size)
    canvas = torch.where(inside, gathered, torch.full((), fill, dtype=inputs.dtype, device=device))
    return canvas.view(batch, channels, size, size)


def random_resize_pad(
    inputs: torch.Tensor, size: int, *, generator: torch.Generator | None = None, fill: float = 0.0
) -> torch.Tensor:
    """Randomised resizing and padding to ``size x size`` (see the module docstring); the draws
    come from ``generator`` (a CPU one; None: torch's global generator).

    inputs: [B, C, H, W] with ``max(H, W) <= size``; returns [B, C, size, size].

    >>> random_resize_pad(x, 10, generator=torch.Generator().manual_seed(0))
    """
    size = check_size(size)
    fill = check_fill(fill)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    x = check_image_batch(inputs)
    if max(x.shape[2:]) > size:
        raise ValueError(f"size must be >= the input's height and width {tuple(x.shape[2:])}, got {size}")
    generator = generator if generator is not None else torch.default_generator
    growth, top, left = draw_placements(x.shape[0], x.shape[2], x.shape[3], size, generator)
    return resize_pad(x, growth, top, left, size, fill)


class RandomResizePad(InputTransformDefence):
    """``model(random_resize_pad(x, size))`` with fresh draws at every call from a CPU generator
    seeded with ``seed`` (``reseed()`` starts the sequence again), so a run is reproducible.

    The transform is differentiable, so there is no ``bpda``; attack it with EOT
    (``eot_samples=``). The model must accept ``size x size`` inputs (a global pool does).

    >>> defended = RandomResizePad(model, size=10, seed=0)
    """

    random = True

    def __init__(self, model: Model, size: int, *, seed: int = 0, fill: float = 0.0) -> None:
        checked_size, checked_fill = check_size(size), check_fill(fill)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        super().__init__(model)
        self.size, self.fill, self.seed = checked_size, checked_fill, seed
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the draws from ``seed`` (None: the seed given at construction)."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
        self.generator.manual_seed(self.seed if seed is None else seed)

    def transform(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dim() != 4 or max(inputs.shape[2:]) > self.size:
            raise ValueError(
                f"inputs must be images [B, C, H, W] with H, W <= size {self.size}, "
                f"got shape {tuple(inputs.shape)}"
            )
        growth, top, left = draw_placements(
            inputs.shape[0], inputs.shape[2], inputs.shape[3], self.size, self.generator
        )
        return resize_pad(inputs, growth, top, left, self.size, self.fill)

    def extra_repr(self) -> str:
        return f"size={self.size}, seed={self.seed}, fill={self.fill}"
