"""Captum-style tuple inputs and ``additional_forward_args`` on top of fastxai's one-tensor methods.

fastxai's methods attribute one tensor ``[B, *F]``. Captum's classes take a tuple of inputs
``([B, *F_1], [B, *F_2], ...)`` and extra forward arguments. ``PackedInputs`` packs the tuple
into one flat tensor ``[B, n_1 + n_2 + ...]`` (``n_k = prod(F_k)``), wraps the forward function
so that it takes that flat tensor, and unpacks attributions back into the tuple::

    packed = PackedInputs(inputs)                  # a tensor or a tuple of tensors [B, *F_k]
    forward = packed.forward(model, additional_forward_args)
    flat_attr = fastxai.saliency(forward, packed.flat, target)
    attributions = packed.format(flat_attr)        # a tensor or tuple, as the user gave

Rows of a model batch and rows of the inputs. A tensor in ``additional_forward_args`` whose
first dimension is the batch size ``B`` belongs to the examples row by row. The wrapped forward
matches it to a model batch of ``N`` rows when the batch holds whole copies of the inputs
laid out copy-major (``N = k * B``, row ``i`` is example ``i % B``): the layout of fastxai's
scheduler when a chunk holds whole batches, and of Captum's own expansion. ``chunk_rows``
gives a chunk size that guarantees it. The only other call it accepts is a first call on one
row (the class-count probe of ``fastxai._model.resolve_target``, which runs example 0); any
other number of rows raises ``NotImplementedError`` naming the argument rather than guessing.
0-d tensors and non-tensor arguments are passed unchanged, as are tensors whose first
dimension is not ``B`` (constants, as in Captum's single-pass methods).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from fastxai import _scheduling

Forward = Callable[..., torch.Tensor]


def as_tuple(value: Any) -> tuple[Any, ...]:
    return value if isinstance(value, tuple) else (value,)


class PackedInputs:
    """A tensor or tuple of tensors ``[B, *F_k]`` as one flat tensor ``[B, sum_k n_k]``.

    All tensors must share the batch size, dtype and device (nothing is cast). ``flat`` is
    detached; ``unpack`` returns views of its argument, so gradients flow through it.
    """

    def __init__(self, inputs: Any, *, name: str = "inputs") -> None:
        self.is_tuple = isinstance(inputs, tuple)
        tensors = as_tuple(inputs)
        if len(tensors) == 0:
            raise ValueError(f"{name} must be a tensor or a non-empty tuple of tensors, got ()")
        for index, tensor in enumerate(tensors):
            label = f"{name}[{index}]" if self.is_tuple else name
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{label} must be a torch.Tensor, got {type(tensor).__name__}")
            if not tensor.is_floating_point():
                raise TypeError(f"{label} must be a floating-point tensor, got {tensor.dtype}")
            if tensor.dim() < 1 or tensor.shape[0] < 1:
                raise ValueError(f"{label} must be [batch, ...] with batch >= 1, got {tuple(tensor.shape)}")
        first = tensors[0]
        for index, tensor in enumerate(tensors[1:], start=1):
            if tensor.shape[0] != first.shape[0]:
                raise ValueError(
                    f"{name}[{index}] has batch size {tensor.shape[0]}, {name}[0] has {first.shape[0]}: "
                    "every input must have the same number of examples"
                )
            if tensor.dtype != first.dtype or tensor.device != first.device:
                raise TypeError(
                    f"{name}[{index}] is {tensor.dtype} on {tensor.device}, {name}[0] is {first.dtype} on "
                    f"{first.device}: every input must share dtype and device"
                )
        self.name = name
        self.batch = first.shape[0]
        self.shapes = [tuple(tensor.shape[1:]) for tensor in tensors]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.dtype, self.device = first.dtype, first.device
        self.flat = (
            first.detach().reshape(self.batch, -1)
            if len(tensors) == 1
            else torch.cat([tensor.detach().reshape(self.batch, -1) for tensor in tensors], dim=1)
        )

    @property
    def features(self) -> int:
        return sum(self.sizes)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Where each input lies in a flat row: columns ``[start, stop)`` per input."""
        return list(itertools.pairwise(itertools.accumulate([0, *self.sizes])))

    def unpack(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``[N, sum n_k]`` -> ``([N, *F_1], [N, *F_2], ...)`` (views)."""
        rows = flat.shape[0]
        if len(self.sizes) == 1:
            return (flat.view(rows, *self.shapes[0]),)
        parts = torch.split(flat, self.sizes, dim=1)
        return tuple(part.reshape(rows, *shape) for part, shape in zip(parts, self.shapes, strict=True))

    def format(self, flat: torch.Tensor) -> Any:
        """Attributions ``[B, sum n_k]`` back in the user's form: a tensor, or a tuple for a tuple."""
        parts = self.unpack(flat)
        return parts if self.is_tuple else parts[0]

    def pack(self, values: Any, *, name: str, allow_scalar: bool = True) -> torch.Tensor:
        """Pack a companion of the inputs (baselines, a distribution of baselines) into ``[M, sum n_k]``.

        ``values`` is a tensor or tuple shaped like the inputs: per input a number (when
        ``allow_scalar``), a tensor ``[*F_k]`` (one row) or ``[M, *F_k]``; every tensor in the
        tuple must agree on ``M``. Numbers and one-row tensors are repeated to ``M`` rows.
        """
        parts = as_tuple(values)
        if self.is_tuple != isinstance(values, tuple) and not (len(self.sizes) == 1 and len(parts) == 1):
            raise TypeError(f"{name} must be shaped like inputs (a tuple of {len(self.sizes)})")
        if len(parts) != len(self.sizes):
            raise ValueError(f"{name} must have {len(self.sizes)} entries like inputs, got {len(parts)}")
        rows: set[int] = set()
        tensors: list[torch.Tensor | float] = []
        for index, (part, shape) in enumerate(zip(parts, self.shapes, strict=True)):
            label = f"{name}[{index}]" if self.is_tuple else name
            if isinstance(part, (int, float)) and not isinstance(part, bool) and allow_scalar:
                if not math.isfinite(float(part)):
                    raise ValueError(f"{label} must be finite, got {part}")
                tensors.append(float(part))
                continue
            if not isinstance(part, torch.Tensor):
                expected = "a number or a tensor" if allow_scalar else "a tensor"
                raise TypeError(f"{label} must be {expected}, got {type(part).__name__}")
            if not part.is_floating_point():
                raise TypeError(f"{label} must be a floating-point tensor, got {part.dtype}")
            if tuple(part.shape) == shape:
                part = part.unsqueeze(0)
            if part.dim() != len(shape) + 1 or tuple(part.shape[1:]) != shape:
                raise ValueError(
                    f"{label} must have shape {shape} or (M, *{shape}) like one input, "
                    f"got {tuple(part.shape)}"
                )
            if not bool(torch.isfinite(part).all()):
                raise ValueError(f"{label} contains NaN or infinity")
            rows.add(part.shape[0])
            tensors.append(part)
        many = rows - {1}
        if len(many) > 1:
            raise ValueError(f"{name}: every tensor must have the same number of rows, got {sorted(rows)}")
        count = many.pop() if many else 1
        flat_parts = []
        for part, size in zip(tensors, self.sizes, strict=True):
            if isinstance(part, float):
                flat_parts.append(torch.full((count, size), part, dtype=self.dtype, device=self.device))
            else:
                part = part.to(device=self.device, dtype=self.dtype).reshape(part.shape[0], size)
                flat_parts.append(part.expand(count, size))
        return torch.cat(flat_parts, dim=1).contiguous()

    def forward(self, forward_func: Forward, additional_forward_args: Any = None) -> PackedForward:
        """The forward function on flat inputs ``[N, sum n_k]``: see ``PackedForward``."""
        return PackedForward(self, forward_func, additional_forward_args)


class PackedForward:
    """``forward(flat)`` = ``forward_func(*unpack(flat), *additional_forward_args)``, the
    per-example tensors among the extra arguments repeated to the rows of ``flat``."""

    def __init__(self, packed: PackedInputs, forward_func: Forward, additional_forward_args: Any) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.packed = packed
        self.forward_func = forward_func
        extra = additional_forward_args
        self.args: tuple[Any, ...] = () if extra is None else as_tuple(extra)
        self.per_example = [
            index
            for index, arg in enumerate(self.args)
            if isinstance(arg, torch.Tensor) and arg.dim() >= 1 and arg.shape[0] == packed.batch
        ]
        self.calls = 0

    @property
    def has_per_example_args(self) -> bool:
        return bool(self.per_example) and self.packed.batch > 1

    def arguments(self, rows: int) -> tuple[Any, ...]:
        """The extra arguments for a model batch of ``rows`` rows."""
        first_call = self.calls == 0
        self.calls += 1
        batch = self.packed.batch
        if not self.per_example or rows == batch:
            return self.args
        args = list(self.args)
        for index in self.per_example:
            arg = args[index]
            if rows % batch == 0:
                args[index] = arg.repeat(rows // batch, *([1] * (arg.dim() - 1)))
            elif rows == 1 and first_call:
                args[index] = arg[:1]
            else:
                raise NotImplementedError(
                    f"additional_forward_args[{index}] has one row per example ({batch}), but the model "
                    f"was called on {rows} rows that are not whole copies of the batch; use an "
                    f"internal_batch_size that is a multiple of {batch}"
                )
        return tuple(args)

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        output = self.forward_func(*self.packed.unpack(flat), *self.arguments(flat.shape[0]))
        if isinstance(output, torch.Tensor) and output.dim() > 2 and output[0].numel() == 1:
            output = output.reshape(output.shape[0], 1)  # one score per example, [N, 1, ..., 1]
        return output


def chunk_rows(
    internal_batch_size: object, flat: torch.Tensor, *, whole_batches: bool, forward_only: bool = False
) -> int | None:
    """fastxai's ``chunk_size`` for Captum's ``internal_batch_size`` (examples per forward pass).

    Like Captum, a pass holds whole copies of the batch when ``whole_batches`` (at least one,
    ``internal_batch_size // batch`` copies otherwise); None keeps fastxai's automatic size
    (for ``forward_only`` passes, the larger one of small inputs), rounded down to whole copies
    when needed.
    """
    batch = flat.shape[0]
    if internal_batch_size is None:
        if not whole_batches:
            return None
        return batch * max(1, _scheduling.auto_chunk_size(None, flat, forward_only=forward_only) // batch)
    if isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int):
        raise TypeError(
            f"internal_batch_size must be an int or None, got {type(internal_batch_size).__name__}"
        )
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    if not whole_batches:
        return internal_batch_size
    return batch * max(1, internal_batch_size // batch)


__all__ = ["PackedForward", "PackedInputs", "as_tuple", "chunk_rows"]
