"""Captum's reading of ``target`` on a model output, and the error its checks raise.

``select_target(output, target)`` returns one score per example the way Captum selects it:

- None: the output itself (then summed per row by the callers);
- an int or a one-element tensor ``t``: ``output[:, t]``;
- a tuple ``(i, j, ...)``: ``output[:, i, j, ...]`` (the dimensions after the batch);
- a tensor [B] or a list of B ints: ``output[b, t_b]`` for a [B, C] output;
- a list of B tuples: ``output[b, *t_b]``.

Captum checks its arguments with ``assert``; code written against it may catch
``AssertionError``. ``CaptumArgumentError`` / ``CaptumTypeError`` are a ``ValueError`` /
``TypeError`` (fastxai's errors for bad arguments) that are also an ``AssertionError``, so
such code keeps working.
"""

from __future__ import annotations

import torch

from fastxai._model import check_target_range


class CaptumArgumentError(ValueError, AssertionError):
    """A bad argument, raised where Captum raises ``AssertionError``."""


class CaptumTypeError(TypeError, AssertionError):
    """An argument of the wrong type, raised where Captum raises ``AssertionError``."""


def check_int_at_least(value: object, name: str, minimum: int) -> int:
    """``value`` as an int ``>= minimum`` (not a bool), or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CaptumTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise CaptumArgumentError(f"{name} must be >= {minimum}, got {value}")
    return value


def select_target(output: torch.Tensor, target: object) -> torch.Tensor:
    """One score (or one slice) per example of ``output`` [B, ...] for Captum's ``target``."""
    if target is None:
        return output
    batch = output.shape[0]
    if isinstance(target, torch.Tensor) and target.numel() == 1 and not target.is_floating_point():
        target = int(target.item())
    if isinstance(target, bool):
        raise TypeError("target must be an int, a tuple, a tensor or a list, got bool")
    if isinstance(target, int):
        target = (target,)
    if isinstance(target, tuple):
        if len(target) > output.dim() - 1:
            raise CaptumArgumentError(
                f"target {target} has more indices than the output {tuple(output.shape)} has dimensions "
                "after the batch"
            )
        for dim, index in enumerate(target):
            size = output.shape[dim + 1]
            if isinstance(index, int) and not -size <= index < size:
                raise CaptumArgumentError(
                    f"target index {index} is out of range for dim {dim + 1} of the output "
                    f"{tuple(output.shape)}"
                )
        return output[(slice(None), *target)]
    if isinstance(target, torch.Tensor):
        if target.dim() != 1 or target.numel() != batch:
            raise CaptumArgumentError(
                f"target must be one index or one per example ({batch}), got shape {tuple(target.shape)}"
            )
        if output.dim() < 2:
            raise CaptumArgumentError(
                f"target was given but the forward's output {tuple(output.shape)} has no class dimension"
            )
        rows = target.to(output.device, torch.long)
        check_target_range(rows, output.shape[1])
        # one class per example along dim 1; the dims after it are kept, as Captum's gather does
        index = rows.view(-1, *([1] * (output.dim() - 1))).expand(-1, 1, *output.shape[2:])
        return output.gather(1, index).squeeze(1)
    if isinstance(target, list):
        if len(target) != batch:
            raise CaptumArgumentError(f"target list has {len(target)} entries for {batch} examples")
        if all(isinstance(item, int) and not isinstance(item, bool) for item in target):
            return select_target(output, torch.tensor(target, device=output.device))
        if all(isinstance(item, tuple) for item in target):
            return torch.stack([output[(row, *item)] for row, item in enumerate(target)])
        raise TypeError("a target list must hold only ints or only tuples")
    raise TypeError(f"target must be None, an int, a tuple, a tensor or a list, got {type(target).__name__}")


def expand_target(target: object, copies: int) -> object:
    """``target`` for ``copies`` copies of the batch laid out copy-major (row ``c * B + b``)."""
    if isinstance(target, torch.Tensor) and target.dim() == 1 and target.numel() > 1:
        return target.repeat(copies)
    if isinstance(target, list):
        return target * copies
    return target


__all__ = ["CaptumArgumentError", "CaptumTypeError", "expand_target", "select_target"]
