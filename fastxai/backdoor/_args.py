"""Argument checks of the backdoor methods: each raises before any work, naming the argument."""

from __future__ import annotations

import math

import torch

from fastxai import _model


def check_fraction(name: str, value: object, *, allow_zero: bool = False, allow_one: bool = True) -> float:
    """A finite number in (0, 1] (``allow_zero``: [0, 1]; ``allow_one=False``: below 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not (value >= 0 if allow_zero else value > 0)
        or not (value <= 1 if allow_one else value < 1)
    ):
        interval = ("[0" if allow_zero else "(0") + (", 1]" if allow_one else ", 1)")
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_seed(seed: object) -> int:
    """An int in [0, 2**63); these methods are always seeded, so None is refused."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def check_class(name: str, value: object, classes: int | None = None) -> int:
    """A class index: an int >= 0 (below ``classes`` when that is known)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0 (a class index), got {value!r}")
    if classes is not None and value >= classes:
        raise ValueError(f"{name} must be in [0, {classes}) for a model with {classes} classes, got {value}")
    return value


def check_labels(labels: object, batch: int, name: str = "labels") -> torch.Tensor:
    """Integer class labels [batch], all >= 0."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class indices, got {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(
            f"{name} must have shape ({batch},) (one label per input), got {tuple(labels.shape)}"
        )
    if batch and int(labels.min()) < 0:
        raise ValueError(f"{name} must be class indices >= 0, got a minimum of {int(labels.min())}")
    return labels.long()


def check_data(inputs: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs`` [N, *F] floating point and finite; ``labels`` [N] integer."""
    x = _model.check_inputs(inputs)
    return x, check_labels(labels, x.shape[0]).to(x.device)


def check_bounds(bounds: object) -> tuple[float, float]:
    """(lo, hi) finite numbers with lo < hi."""
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds
        )
        or not bounds[0] < bounds[1]
    ):
        raise ValueError(f"bounds must be (lo, hi), finite numbers with lo < hi, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def model_classes(model: _model.Model, probe: torch.Tensor) -> int:
    """The number of classes of ``model``, read off its output for one input (no gradients)."""
    with torch.no_grad():
        return int(_model.logits(model, probe[:1]).shape[1])
