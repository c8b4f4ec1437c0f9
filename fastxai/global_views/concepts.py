"""A synthetic concept data set with pixel masks, generated in code (seeded, nothing to download):
shapes, intensities and textures on the digits' dark canvas, for network dissection.

Every image holds one or more objects on a black background, each a shape filled with an
intensity or a texture; each pixel of an object carries two concept labels (its shape and its
fill), as a pixel of the Broden data set (Bau et al. 2017) carries an object, a colour and a
texture label. Shapes and fills are drawn independently, so their masks decorrelate over the
data set, and a unit that detects one concept scores a high IoU with that concept alone.

>>> concepts = fastxai.concept_dataset(n_images=256, seed=0)
>>> concepts.images.shape, concepts.masks.shape, concepts.names[:2]   # [256, 1, 32, 32], [256, 9, 32, 32]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastxai._checks import check_count

SHAPES = ("square", "disc", "horizontal_bar", "vertical_bar")
INTENSITIES = ("dim", "bright")
TEXTURES = ("horizontal_stripes", "vertical_stripes", "checkerboard")
CONCEPTS = SHAPES + INTENSITIES + TEXTURES
CATEGORIES = ("shape",) * len(SHAPES) + ("intensity",) * len(INTENSITIES) + ("texture",) * len(TEXTURES)
FILLS = INTENSITIES + TEXTURES


@dataclass(frozen=True)
class ConceptDataset:
    """Images [N, 1, S, S] float32 in [0, 1]; masks [N, K, S, S] bool, ``masks[n, k]`` the pixels
    of image ``n`` that show concept ``k``; names: the K concept names; categories: each
    concept's kind (``"shape"``, ``"intensity"`` or ``"texture"``)."""

    images: torch.Tensor
    masks: torch.Tensor
    names: tuple[str, ...]
    categories: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _uniform(generator: torch.Generator, count: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _shape_masks(
    generator: torch.Generator, count: int, size: int, ys: torch.Tensor, xs: torch.Tensor
) -> torch.Tensor:
    """[4, N, S, S] bool: one square, disc, horizontal bar and vertical bar per image, each of a
    random size at a random position inside the canvas (pixel centres at integer + 0.5)."""

    def box(half_h: torch.Tensor, half_w: torch.Tensor) -> torch.Tensor:
        cy = half_h + (size - 2 * half_h) * torch.rand(count, generator=generator)
        cx = half_w + (size - 2 * half_w) * torch.rand(count, generator=generator)
        inside_y = (ys.view(1, -1, 1) - cy.view(-1, 1, 1)).abs() <= half_h.view(-1, 1, 1)
        inside_x = (xs.view(1, 1, -1) - cx.view(-1, 1, 1)).abs() <= half_w.view(-1, 1, 1)
        return inside_y & inside_x

    side = _uniform(generator, count, 0.30 * size, 0.55 * size) / 2
    square = box(side, side)
    radius = _uniform(generator, count, 0.15 * size, 0.28 * size)
    cy = radius + (size - 2 * radius) * torch.rand(count, generator=generator)
    cx = radius + (size - 2 * radius) * torch.rand(count, generator=generator)
    distance = (ys.view(1, -1, 1) - cy.view(-1, 1, 1)).square()
    distance = distance + (xs.view(1, 1, -1) - cx.view(-1, 1, 1)).square()
    disc = distance <= radius.view(-1, 1, 1).square()
    length = _uniform(generator, count, 0.55 * size, 0.9 * size) / 2
    thickness = _uniform(generator, count, 0.18 * size, 0.28 * size) / 2
    return torch.stack([square, disc, box(thickness, length), box(length, thickness)])


def _fill_values(
    generator: torch.Generator, count: int, period: int, ys: torch.Tensor, xs: torch.Tensor
) -> torch.Tensor:
    """[5, N, S, S]: per image a dim and a bright uniform level (with a random level each) and
    horizontal stripes, vertical stripes and a checkerboard of ``period`` pixels (random phase),
    bright on black."""
    half = period // 2 if period > 1 else 1
    dim = _uniform(generator, count, 0.40, 0.60).view(-1, 1, 1).expand(count, ys.numel(), xs.numel())
    level = _uniform(generator, count, 0.85, 1.00).view(-1, 1, 1)
    bright = level.expand_as(dim)
    phase_y = torch.randint(0, period, (count, 1, 1), generator=generator)
    phase_x = torch.randint(0, period, (count, 1, 1), generator=generator)
    rows = torch.div(ys.long().view(1, -1, 1) + phase_y, half, rounding_mode="floor")
    columns = torch.div(xs.long().view(1, 1, -1) + phase_x, half, rounding_mode="floor")
    horizontal = (rows % 2 == 0).expand_as(dim) * level
    vertical = (columns % 2 == 0).expand_as(dim) * level
    checker = ((rows + columns) % 2 == 0) * level
    return torch.stack([dim, bright, horizontal, vertical, checker])


def concept_dataset(
    n_images: int = 512,
    *,
    size: int = 32,
    period: int = 4,
    max_objects: int = 2,
    noise: float = 0.02,
    seed: int = 0,
) -> ConceptDataset:
    """Synthetic concept images with masks, the same for the same arguments on every machine.

    Each image: a black ``size`` x ``size`` canvas (the digits' background), objects painted in
    turn (the first always, each further one of ``max_objects`` with probability 1/2; a later one
    hides what it covers, in the masks too). An object is a shape (square, disc, horizontal or
    vertical bar; random size and position inside the canvas) filled with a uniform intensity
    (dim: a level in [0.4, 0.6], bright: [0.85, 1]) or a texture of ``period`` pixels
    (horizontal stripes, vertical stripes, checkerboard; bright on black, random phase), shape
    and fill drawn uniformly and independently. Gaussian noise of std ``noise`` is added and
    the image clipped to [0, 1]; the noise also keeps activations from tying at the
    dissection threshold. ``masks[n, k]`` is where object pixels of concept ``k`` are visible
    (a texture's mask covers its dark stripes too, as a region label).

    The digits are 8 x 8: at the default 32 x 32 a digits model sees the concepts either at
    32 x 32 (it is fully convolutional) or through ``network_dissection``'s ``input_adapter``
    (e.g. area pooling to 8 x 8, where a texture needs ``period`` >= 8 to survive).

    Returns a ``ConceptDataset``: images [n_images, 1, size, size], masks [n_images, 9, size,
    size], ``names`` ``CONCEPTS``.

    >>> concepts = fastxai.concept_dataset(256, seed=0)
    >>> fastxai.network_dissection(model, concepts, layer="4").labels[:4]
    """
    n_images = check_count("n_images", n_images, 1)
    size = check_count("size", size, 8)
    period = check_count("period", period, 2)
    if period > size:
        raise ValueError(f"period must be at most size ({size}), got {period}")
    max_objects = check_count("max_objects", max_objects, 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < 1:
        raise ValueError(f"noise must be a number in [0, 1), got {noise!r}")
    seed = check_count("seed", seed, 0)
    generator = torch.Generator().manual_seed(seed)
    ys = torch.arange(size, dtype=torch.float32) + 0.5
    xs = ys
    images = torch.zeros(n_images, size, size)
    masks = torch.zeros(n_images, len(CONCEPTS), size, size, dtype=torch.bool)
    rows = torch.arange(n_images)
    for slot in range(max_objects):
        present = torch.rand(n_images, generator=generator) < 0.5
        if slot == 0:
            present.fill_(True)  # the first object always; drawing anyway keeps the stream fixed
        shape = torch.randint(0, len(SHAPES), (n_images,), generator=generator)
        fill = torch.randint(0, len(FILLS), (n_images,), generator=generator)
        region = _shape_masks(generator, n_images, size, ys, xs)[shape, rows] & present.view(-1, 1, 1)
        values = _fill_values(generator, n_images, period, ys, xs)[fill, rows]
        images = torch.where(region, values, images)
        masks &= ~region.unsqueeze(1)
        masks[rows, shape] |= region
        masks[rows, len(SHAPES) + fill] |= region
    if noise:
        images = images + noise * torch.randn(images.shape, generator=generator)
    return ConceptDataset(images.clamp_(0, 1).unsqueeze(1), masks, CONCEPTS, CATEGORIES)
