"""The model on rows of the batch, with its extra arguments: what every method that runs copies
of its inputs shares (the gradient methods' path and noise points, the perturbation methods'
perturbed copies, Score-CAM's masked inputs).

A model batch of ``count`` copies of rows ``r`` (``n`` rows) is laid out copy-major: copy ``c``
of row ``i`` is batch row ``c * n + i``, the layout of the fused ops. Extra model arguments
(``forward_kwargs``; Captum's ``additional_forward_args``) that hold one row per example (a
tensor whose first dimension is the batch size, like an attention mask) are cut to the rows
and repeated the same way; all others (numbers, flags, tensors of another first dimension)
are passed unchanged to every call.

    forward = RowForward(model, (x,), kwargs={"attention_mask": mask})
    call, head = forward.bound(slice(0, 4), 3, (copies,))   # copies: [3 * 4, *F], copy-major
    output = call(head)                                     # model(copies, attention_mask=mask[:4] x 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fastxai import _compile, _model, _precision

Rows = slice | torch.Tensor
"""Rows of the batch: a slice, or a LongTensor of row indices."""


def is_integer(tensor: torch.Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def repeat_rows(tensor: torch.Tensor, rows: Rows, count: int) -> torch.Tensor:
    """``tensor[rows]`` repeated ``count`` times along dim 0, copy-major."""
    part = tensor[rows]
    return part if count == 1 else part.repeat(count, *([1] * (part.dim() - 1)))


def check_forward_kwargs(forward_kwargs: object) -> dict[str, Any]:
    if forward_kwargs is None:
        return {}
    if not isinstance(forward_kwargs, dict) or not all(isinstance(key, str) for key in forward_kwargs):
        raise TypeError(
            "forward_kwargs must be a dict of keyword arguments to the model (e.g. "
            f"{{'attention_mask': mask}}), got {type(forward_kwargs).__name__}"
        )
    return dict(forward_kwargs)


class RowForward:
    """The model on rows of the batch, each row repeated ``count`` times copy-major, with the
    per-example extra arguments repeated alike. With ``dtype`` (``_precision``) every call runs
    under autocast. ``plain`` is what a compiled step (``_compile.Step``) calls: the model
    without autocast (the step autocasts itself), a compiled model's original module (the step
    is compiled as a whole)."""

    def __init__(
        self,
        model: Callable[..., Any],
        inputs: tuple[torch.Tensor, ...],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.plain, self.dtype, self.args = _compile.original(model), dtype, args
        self.model = _precision.autocast_model(model, dtype, inputs[0].device.type)
        self.inputs = tuple(tensor.detach() for tensor in inputs)
        self.kwargs = kwargs or {}
        self.batch = inputs[0].shape[0]
        self.unchecked_target: torch.Tensor | None = None
        self.has_per_example = any(self._per_example(value) for value in (*args, *self.kwargs.values()))

    def _per_example(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == self.batch

    def _extra(self, value: Any, rows: Rows, count: int) -> Any:
        return repeat_rows(value, rows, count) if self._per_example(value) else value

    def extras(self, rows: Rows, count: int) -> dict[str, Any]:
        """The keyword arguments of the model batch of ``rows`` x ``count`` (per-example ones
        cut and repeated), for a model that takes one input and no extra positional arguments."""
        assert not self.args and len(self.inputs) == 1
        return {key: self._extra(value, rows, count) for key, value in self.kwargs.items()}

    def bound(
        self, rows: Rows, count: int, inputs: Sequence[torch.Tensor] | None = None
    ) -> tuple[Callable[[torch.Tensor], Any], torch.Tensor]:
        """(a one-argument model, its argument) for the model batch of ``rows`` x ``count``;
        ``inputs`` replaces the rows' own inputs (already ``count * n`` rows)."""
        tensors = (
            tuple(inputs) if inputs is not None else tuple(repeat_rows(t, rows, count) for t in self.inputs)
        )
        if not self.args and not self.kwargs and len(tensors) == 1:
            return self.model, tensors[0]
        rest = tensors[1:]
        args = tuple(self._extra(value, rows, count) for value in self.args)
        kwargs = {key: self._extra(value, rows, count) for key, value in self.kwargs.items()}
        return (lambda head: self.model(head, *rest, *args, **kwargs)), tensors[0]

    def logits(self, rows: Rows, count: int, inputs: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """The output flattened to [N, prod(O)], which ``resolve_target``'s indices index. The
        first pass after ``resolve_target`` deferred its check checks the target on its output."""
        model, head = self.bound(rows, count, inputs)
        if self.unchecked_target is None:
            return _model.flat_outputs(model, head)
        output = _model.outputs(model, head)
        _model.flat_target(self.unchecked_target, output.shape[1:])  # raises on a bad target
        self.unchecked_target = None
        return output.reshape(output.shape[0], -1)

    def outputs(self, rows: Rows, count: int) -> torch.Tensor:
        model, head = self.bound(rows, count)
        return _model.outputs(model, head)

    def resolve_target(self, target: torch.Tensor | None, chunk: int) -> torch.Tensor:
        """``_model.resolve_target`` on rows: the predicted class for None, else the range checked."""
        if target is not None and target.dim() == 1 and self.batch <= chunk:
            # One model pass holds every row: its output checks the target (``logits``) before
            # any backward pass, instead of a probe forward that costs as much on a small model.
            self.unchecked_target = target
            return target
        if not self.args and not self.kwargs and len(self.inputs) == 1:
            return _model.resolve_target(self.model, self.inputs[0], target, chunk)
        with torch.no_grad():
            if target is not None:
                resolved = _model.flat_target(target, self.outputs(slice(0, 1), 1).shape[1:])
                assert resolved is not None
                return resolved
            predictions = []
            for start in range(0, self.batch, chunk):
                output = self.outputs(slice(start, start + chunk), 1)
                if output.dim() != 2:
                    _model.flat_target(None, output.shape[1:])  # raises: no predicted class
                predictions.append(output.argmax(dim=1))
            return torch.cat(predictions)


__all__ = ["RowForward", "Rows", "check_forward_kwargs", "is_integer", "repeat_rows"]
