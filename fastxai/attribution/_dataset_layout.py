"""What the first batch of a data set fixes for ``dataset_feature_ablation``: which elements of a
batch are attributed, their feature shapes, one flat row of features for all of them (packed
``[B, N]``), the feature groups over that row and the baselines.

A batch is a tensor (one element) or a tuple / list of elements. Each element has a role:
0 attributed (a tensor ``[B, *F_k]``, passed to the model), 1 passed to the model as is, 2
not passed (a label; ``reduce`` still sees it). Groups may span several attributed elements:
ablating a group replaces all its elements, in every element, at once. An element reaches the
model in the dtype Captum's blend ``x * keep + baseline * (1 - keep)`` gives it: its own
(floating) dtype, promoted with a floating baseline tensor's; integers and bools become the
default float dtype.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

ATTRIBUTED, FORWARD_ONLY, NOT_FORWARDED = 0, 1, 2
ROLES = (ATTRIBUTED, FORWARD_ONLY, NOT_FORWARDED)


def as_elements(batch: object, index: int) -> tuple[tuple[Any, ...], bool]:
    """A batch as a tuple of elements and whether it was a tuple or a list."""
    if isinstance(batch, (tuple, list)):
        return tuple(batch), True
    if isinstance(batch, torch.Tensor):
        return (batch,), False
    raise TypeError(
        f"data: batch {index} is a {type(batch).__name__}; a batch must be a tensor or a tuple / list "
        "of elements (what a DataLoader over a TensorDataset yields)"
    )


def check_roles(input_roles: object) -> tuple[int, ...] | None:
    """Captum's ``input_roles``: None, or a tuple / list of 0, 1, 2 with at least one 0."""
    if input_roles is None:
        return None
    if not isinstance(input_roles, (tuple, list)):
        raise TypeError(f"input_roles must be a tuple of ints (0, 1, 2), got {type(input_roles).__name__}")
    for index, role in enumerate(input_roles):
        if isinstance(role, bool) or not isinstance(role, int) or role not in ROLES:
            raise ValueError(
                f"input_roles[{index}] must be 0 (attributed), 1 (passed to the model) or 2 (not "
                f"passed), got {role!r}"
            )
    if ATTRIBUTED not in input_roles:
        raise ValueError(
            f"input_roles must hold at least one 0 (an attributed element), got {tuple(input_roles)}"
        )
    return tuple(input_roles)


def _per_element(name: str, value: object, count: int, single: type | tuple[type, ...]) -> list[Any]:
    """``value`` as one entry per attributed element: a tuple / list of ``count``, or one value
    (of a ``single`` type) for a lone element, or a number for all."""
    if isinstance(value, (tuple, list)):
        if len(value) != count:
            raise ValueError(f"{name} must have one entry per attributed element ({count}), got {len(value)}")
        return list(value)
    if count == 1 or (isinstance(value, (int, float)) and not isinstance(value, torch.Tensor)):
        return [value] * count
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return [value] * count
    if isinstance(value, single):
        raise ValueError(f"{name} must be a tuple with one entry per attributed element ({count})")
    raise TypeError(f"{name} must be a tensor or a tuple of tensors, got {type(value).__name__}")


def _broadcast(name: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``tensor`` broadcast to ``(1, *shape)`` (size-1 dims, fewer dims), flattened to [N_k]."""
    target = (1, *shape)
    try:
        if torch.broadcast_shapes(tensor.shape, target) != target:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(tensor.shape)}; it must broadcast to {target} (one for every "
            "batch: a first dim of 1, size-1 dims broadcasting)"
        ) from None
    return torch.broadcast_to(tensor, target).reshape(-1)


def _model_dtype(element: torch.Tensor, baseline: object) -> torch.dtype:
    dtype = element.dtype if element.is_floating_point() else torch.get_default_dtype()
    if isinstance(baseline, torch.Tensor) and baseline.is_floating_point():
        dtype = torch.promote_types(dtype, baseline.dtype)
    return dtype


@dataclass(frozen=True)
class Layout:
    """The packed feature row of a data set's batches (see the module docstring).

    ``mask`` [N]: group ids as given (gaps allowed, ``n_ids = max + 1``); ``dense`` [N]: the
    same groups numbered 0..G-1 in order of id (``ids`` [G]: each one's id); ``touches[g]``:
    the attributed elements group g has elements in; ``baseline`` [1, N].
    """

    is_tuple: bool
    roles: tuple[int, ...]
    attributed: tuple[int, ...]
    shapes: tuple[torch.Size, ...]
    spans: tuple[tuple[int, int], ...]
    dtypes: tuple[torch.dtype, ...]
    pack_dtype: torch.dtype
    mask: torch.Tensor
    dense: torch.Tensor
    ids: torch.Tensor
    n_ids: int
    touches: tuple[frozenset[int], ...]
    baseline: torch.Tensor

    @property
    def groups(self) -> int:
        return int(self.ids.numel())

    def pack(self, batch: object, index: int) -> tuple[tuple[Any, ...], torch.Tensor]:
        """A batch's elements and its attributed features as one row per example [B, N]."""
        elements, _ = as_elements(batch, index)
        if len(elements) != len(self.roles):
            raise ValueError(
                f"data: batch {index} has {len(elements)} elements, the first batch {len(self.roles)}"
            )
        rows = None
        parts = []
        for k, position in enumerate(self.attributed):
            element = elements[position]
            if not isinstance(element, torch.Tensor) or element.dim() == 0:
                kind = "a 0-d tensor" if isinstance(element, torch.Tensor) else type(element).__name__
                raise TypeError(
                    f"data: batch {index}, element {position} is attributed (role 0) and must be a "
                    f"tensor [B, *F], got {kind}"
                )
            if element.shape[1:] != self.shapes[k] or (rows is not None and element.shape[0] != rows):
                raise ValueError(
                    f"data: batch {index}, element {position} has shape {tuple(element.shape)}; every "
                    f"batch's must be (B, *{tuple(self.shapes[k])}) with one B for all elements"
                )
            rows = element.shape[0]
            parts.append(element.reshape(rows, -1))
        packed = (
            parts[0].to(self.pack_dtype)
            if len(parts) == 1
            else torch.cat([part.to(self.pack_dtype) for part in parts], dim=1)
        )
        return elements, packed.contiguous()

    def unpack(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Packed rows [R, N] as each attributed element's [R, *F_k] in its model dtype."""
        if len(self.spans) == 1:
            return [flat.view(flat.shape[0], *self.shapes[0]).to(self.dtypes[0])]
        return [
            flat[:, start:stop].reshape(flat.shape[0], *shape).to(dtype)
            for (start, stop), shape, dtype in zip(self.spans, self.shapes, self.dtypes, strict=True)
        ]

    def to_input_shapes(self, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-group values [K, n_ids] as each attributed element's [K, *F_k]: every feature
        gets its group's value."""
        return tuple(
            values[:, self.mask[start:stop]].reshape(values.shape[0], *shape)
            for (start, stop), shape in zip(self.spans, self.shapes, strict=True)
        )


def layout(
    first: object, input_roles: tuple[int, ...] | None, feature_mask: object, baselines: object
) -> Layout:
    """The ``Layout`` of a data set whose first batch is ``first``; every argument checked."""
    elements, is_tuple = as_elements(first, 0)
    roles = input_roles if input_roles is not None else (ATTRIBUTED,) * len(elements)
    if len(roles) != len(elements):
        raise ValueError(
            f"input_roles has {len(roles)} entries but a batch of data has {len(elements)} elements"
        )
    attributed = tuple(i for i, role in enumerate(roles) if role == ATTRIBUTED)
    tensors = []
    for position in attributed:
        element = elements[position]
        if not isinstance(element, torch.Tensor) or element.dim() == 0 or element.is_complex():
            raise TypeError(
                f"data: element {position} of a batch is attributed (role 0) and must be a real "
                f"tensor [B, *F], got {type(element).__name__}"
            )
        tensors.append(element)
    shapes = tuple(t.shape[1:] for t in tensors)
    sizes = [math.prod(shape) for shape in shapes]
    spans = tuple((sum(sizes[:k]), sum(sizes[: k + 1])) for k in range(len(sizes)))
    device = tensors[0].device

    base_list = _per_element("baselines", 0.0 if baselines is None else baselines, len(tensors), torch.Tensor)
    for k, value in enumerate(base_list):
        if isinstance(value, torch.Tensor):
            if value.is_complex():
                raise TypeError(f"baselines[{k}] must be a real tensor or a number, got {value.dtype}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"baselines[{k}] must be a number or a tensor, got {type(value).__name__}")
    dtypes = tuple(_model_dtype(t, b) for t, b in zip(tensors, base_list, strict=True))
    pack_dtype = functools.reduce(torch.promote_types, dtypes)
    baseline = torch.empty(1, spans[-1][1], dtype=pack_dtype, device=device)
    for k, value in enumerate(base_list):
        start, stop = spans[k]
        if isinstance(value, torch.Tensor):
            label = f"baselines[{k}]" if len(tensors) > 1 else "baselines"
            baseline[0, start:stop] = _broadcast(label, value.to(device=device, dtype=pack_dtype), shapes[k])
        else:
            baseline[0, start:stop] = value

    if feature_mask is None:
        mask = torch.arange(spans[-1][1], device=device)
    else:
        mask_list = _per_element("feature_mask", feature_mask, len(tensors), torch.Tensor)
        flat = []
        for k, part in enumerate(mask_list):
            label = f"feature_mask[{k}]" if len(tensors) > 1 else "feature_mask"
            if not isinstance(part, torch.Tensor):
                raise TypeError(f"{label} must be an integer tensor, got {type(part).__name__}")
            if part.is_floating_point() or part.is_complex() or part.dtype == torch.bool:
                raise TypeError(f"{label} must hold integer group ids, got {part.dtype}")
            flat.append(_broadcast(label, part.to(device=device, dtype=torch.int64), shapes[k]))
        mask = torch.cat(flat)
    if mask.numel() == 0:
        raise ValueError("data: the attributed elements have no features")
    if int(mask.min()) < 0:
        raise ValueError(f"feature_mask ids must be >= 0, got {int(mask.min())}")
    ids, dense = torch.unique(mask, return_inverse=True)
    hits = torch.zeros(ids.numel(), len(spans), dtype=torch.bool, device=device)
    for k, (start, stop) in enumerate(spans):
        hits[dense[start:stop], k] = True
    shared: dict[tuple[bool, ...], frozenset[int]] = {}  # one set per pattern, not per group
    touches = tuple(
        shared.setdefault(tuple(row), frozenset(k for k, hit in enumerate(row) if hit))
        for row in hits.tolist()
    )
    return Layout(
        is_tuple, tuple(roles), attributed, shapes, spans, dtypes, pack_dtype, mask, dense, ids,
        int(ids[-1]) + 1, touches, baseline,
    )  # fmt: skip
