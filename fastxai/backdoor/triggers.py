"""Backdoor triggers: a patch stamped on a corner (BadNets) or a pattern blended over the image.

A trigger is a pattern ``p``, a region ``R`` (bool, the shape of one input) and a strength
``alpha``; applying it gives ``x' = x + alpha * 1_R * (p - x)``: the pattern replaces the
region for a patch (``alpha = 1``), and is mixed into the whole image for a blend.

>>> trigger = patch_trigger((1, 8, 8), size=3, location="bottom_right")
>>> x_triggered = apply_trigger(x, trigger)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastxai import _model, ops
from fastxai.backdoor._args import check_bounds, check_fraction, check_seed

_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


@dataclass(frozen=True)
class Trigger:
    """pattern: [*F] float32; region: [*F] bool (where the pattern goes); alpha in (0, 1]."""

    pattern: torch.Tensor
    region: torch.Tensor
    alpha: float

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.pattern.shape)


def _check_image_shape(input_shape: object) -> tuple[int, int, int]:
    if (
        not isinstance(input_shape, (tuple, list, torch.Size))
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ValueError(
            f"input_shape must be the shape of one image (C, H, W), ints >= 1, got {input_shape!r}"
        )
    c, h, w = input_shape
    return c, h, w


def patch_trigger(
    input_shape: Sequence[int],
    *,
    size: int | tuple[int, int] = 3,
    location: str | tuple[int, int] = "bottom_right",
    value: float | torch.Tensor = 1.0,
) -> Trigger:
    """BadNets patch (Gu et al. 2017, "BadNets: identifying vulnerabilities in the machine
    learning model supply chain"): a ``size`` square (or (h, w) rectangle) at a corner, or with
    its top-left pixel at ``location = (row, col)``, set to ``value`` (a number, or a tensor
    [C, h, w] / [h, w] for a pattern) in every channel.

    input_shape: (C, H, W). Returns a ``Trigger`` with ``alpha = 1``.

    >>> trigger = patch_trigger((1, 8, 8), size=3)             # a white 3x3 square, bottom right
    """
    c, h, w = _check_image_shape(input_shape)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (
        not isinstance(size, tuple)
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ValueError(f"size must be an int >= 1 or a (height, width) tuple of them, got {size!r}")
    ph, pw = size
    if ph > h or pw > w:
        raise ValueError(f"size {size} does not fit in an image of {h}x{w}")
    if isinstance(location, str):
        if location not in _CORNERS:
            raise ValueError(f"location must be one of {_CORNERS} or a (row, col) tuple, got {location!r}")
        row = 0 if location.startswith("top") else h - ph
        col = 0 if location.endswith("left") else w - pw
    elif (
        isinstance(location, tuple)
        and len(location) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in location)
    ):
        row, col = location
        if not (0 <= row <= h - ph and 0 <= col <= w - pw):
            raise ValueError(f"location {location} puts a {ph}x{pw} patch outside an image of {h}x{w}")
    else:
        raise ValueError(
            f"location must be one of {_CORNERS} or a (row, col) tuple of ints, got {location!r}"
        )
    patch = _check_value(value, c, ph, pw)
    pattern = torch.zeros(c, h, w)
    region = torch.zeros(c, h, w, dtype=torch.bool)
    pattern[:, row : row + ph, col : col + pw] = patch
    region[:, row : row + ph, col : col + pw] = True
    return Trigger(pattern, region, 1.0)


def _check_value(value: object, c: int, ph: int, pw: int) -> torch.Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value!r}")
        return torch.full((c, ph, pw), float(value))
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if tuple(value.shape) not in ((c, ph, pw), (ph, pw)):
            raise ValueError(
                f"value must be a number or a tensor of shape ({c}, {ph}, {pw}) or ({ph}, {pw}), "
                f"got {tuple(value.shape)}"
            )
        if not _model.all_finite(value):
            raise ValueError("value contains NaN or infinity")
        return value.detach().float().cpu().expand(c, ph, pw)
    raise TypeError(f"value must be a number or a floating-point tensor, got {type(value).__name__}")


def blend_trigger(
    input_shape: Sequence[int],
    *,
    alpha: float = 0.2,
    pattern: torch.Tensor | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> Trigger:
    """Blended trigger (Chen et al. 2017, "Targeted backdoor attacks on deep learning systems
    using data poisoning"): ``x' = (1 - alpha) x + alpha p`` over the whole input, with ``p``
    the given pattern [*input_shape] or uniform noise in ``bounds`` drawn from ``seed``.

    >>> trigger = blend_trigger((1, 8, 8), alpha=0.2, seed=1)
    """
    if (
        not isinstance(input_shape, (tuple, list, torch.Size))
        or len(input_shape) == 0
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be the shape of one input, ints >= 1, got {input_shape!r}")
    shape = tuple(input_shape)
    alpha = check_fraction("alpha", alpha)
    lo, hi = check_bounds(bounds)
    seed = check_seed(seed)
    if pattern is None:
        noise = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
        pattern = lo + (hi - lo) * noise
    elif not isinstance(pattern, torch.Tensor) or not pattern.is_floating_point():
        raise TypeError(f"pattern must be None or a floating-point tensor, got {type(pattern).__name__}")
    elif tuple(pattern.shape) != shape:
        raise ValueError(f"pattern must have the shape of one input {shape}, got {tuple(pattern.shape)}")
    elif not _model.all_finite(pattern):
        raise ValueError("pattern contains NaN or infinity")
    return Trigger(pattern.detach().float().cpu().clone(), torch.ones(shape, dtype=torch.bool), alpha)


def check_trigger(trigger: object, inputs: torch.Tensor) -> Trigger:
    if not isinstance(trigger, Trigger):
        raise TypeError(
            "trigger must be a fastxai.backdoor.Trigger (patch_trigger, blend_trigger), "
            f"got {type(trigger).__name__}"
        )
    if trigger.shape != tuple(inputs.shape[1:]):
        raise ValueError(
            f"trigger is for inputs of shape {trigger.shape}, got inputs [N, *{tuple(inputs.shape[1:])}]"
        )
    return trigger


def apply_trigger(inputs: torch.Tensor, trigger: Trigger, *, backend: str | None = None) -> torch.Tensor:
    """``x + alpha * 1_R * (p - x)`` for every input: [N, *F] -> [N, *F], on the fused
    ``masked_blend`` op (the region is group 1 of its feature mask, kept with weight ``alpha``).

    >>> x_triggered = apply_trigger(x_test, patch_trigger((1, 8, 8)))
    """
    x = _model.check_inputs(inputs)
    trigger = check_trigger(trigger, x)
    pattern = trigger.pattern.to(device=x.device, dtype=x.dtype).expand_as(x)
    groups = trigger.region.to(device=x.device, dtype=torch.long)
    keep = torch.tensor([0.0, trigger.alpha], device=x.device).expand(x.shape[0], 1, 2)
    # masked_blend(inputs, baselines, ...) = baselines + keep * (inputs - baselines): the pattern
    # is the "input" and the clean image the "baseline", so group 0 keeps the image unchanged
    return ops.masked_blend(pattern, x, groups, keep, backend=backend)[:, 0]
