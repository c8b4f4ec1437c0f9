"""Relevance handlers of the structural ops that ``fastxai.lrp._nodes`` does not hold: they move
elements (or drop constant ones) and never mix values, so relevance moves back with the data
exactly and its total is conserved:

- ``chunk`` / ``split`` / ``tensor_split`` / ``unbind`` (kind ``split``): the op returns a tuple
  and ``getitem`` picks a piece; the relevance of the tuple node is held as one tensor shaped
  like the op's input, each piece's relevance written into its place (``tuple_item``), so the
  op itself passes it on unchanged;
- ``torch.roll``: rolled back by the negated shifts;
- ``F.pad`` (constant mode): cropped back (``F.pad`` with the negated widths); padded
  elements are constants and carry none; in the other modes the padding copies input elements,
  whose relevance returns to them (``_maps.move``);
- ``expand`` / ``expand_as`` / ``broadcast_to``: summed over the copies;
- ``masked_fill`` with a constant mask: filled positions hold a constant, they carry none;
- ``select`` / ``narrow``: written back into a zero tensor of the input's shape;
- ``getitem`` on what ``max`` / ``min`` with a dim return: the values' relevance goes to the
  winning elements, held (as a split's) in a tensor shaped like the input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fastxai.lrp import _maps, _recurrent
from fastxai.lrp._errors import UnsupportedLayerError
from fastxai.lrp._graph import Step

Contributions = list[tuple[Any, torch.Tensor]]


def _argument(node: Any, position: int, name: str, default: Any = None) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def tuple_item(step: Step, ctx: Any, relevance: torch.Tensor, pieces: Any) -> Contributions:
    """``getitem`` on the tuple of a ``split`` step: the piece's relevance, placed in a zero
    tensor of the split input's shape (the tuple's relevance, see the module docstring)."""
    node = step.node
    source: Any = node.args[0]
    index = ctx.value(node.args[1])
    producer = ctx.steps.get(source)
    if producer is not None and producer.kind == "extremum":
        index = {"values": 0, "indices": 1}.get(index, index)
        if isinstance(index, int):
            return _selected_values(producer, ctx, relevance, pieces, index)
    if producer is not None and producer.kind == "recurrent" and isinstance(index, int):
        return _recurrent.recurrent_item(step, ctx, relevance, index, pieces)
    if producer is not None and producer.kind == "getitem" and isinstance(index, int):
        outer = ctx.steps.get(producer.node.args[0])
        if outer is not None and outer.kind == "recurrent":  # (h_n, c_n) of an LSTM
            return _recurrent.state_item(step, ctx, relevance, index, pieces)
    if producer is None or producer.kind != "split" or not isinstance(index, int):
        raise UnsupportedLayerError(
            f"LRP has no rule for indexing the tuple that node {source.name!r} returns (node {node.name!r})"
        )
    split = producer.node
    inputs = ctx.value(split.args[0])
    dim = _argument(split, 1 if str(split.target) == "unbind" else 2, "dim", 0)
    dim = dim % inputs.dim()
    result = relevance.new_zeros(inputs.shape)
    index = index % len(pieces)
    if str(getattr(split.target, "__name__", split.target)) == "unbind":
        result.select(dim, index).copy_(relevance)
    else:
        offset = sum(piece.shape[dim] for piece in pieces[:index])
        result.narrow(dim, offset, pieces[index].shape[dim]).copy_(relevance)
    return [(source, result)]


def _selected_values(
    producer: Step, ctx: Any, relevance: torch.Tensor, pieces: Any, index: int
) -> Contributions:
    """``max`` / ``min`` with a dim return (values, indices): the values' relevance, written onto
    the elements that won (winner-take-all, as for max pooling), is the tuple's."""
    node = producer.node
    if index % len(pieces) != 0:
        raise UnsupportedLayerError(
            f"relevance reached the indices that node {node.name!r} returns: integer positions carry none"
        )
    inputs = ctx.value(node.args[0])
    dim = _argument(node, 1, "dim") % inputs.dim()
    indices = pieces[1]
    if not _argument(node, 2, "keepdim", False):
        indices, relevance = indices.unsqueeze(dim), relevance.unsqueeze(dim)
    result = relevance.new_zeros(inputs.shape).scatter_(dim, indices, relevance)
    return [(node, result)]


def split(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    return [(step.node.args[0], relevance)]


def roll(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    node = step.node
    shifts, dims = ctx.value(_argument(node, 1, "shifts")), ctx.value(_argument(node, 2, "dims"))
    if isinstance(shifts, (tuple, list)):
        back = [-int(shift) for shift in shifts]
    else:
        back = -int(shifts)  # type: ignore[assignment]
    if dims is None or (isinstance(dims, (tuple, list)) and not dims):
        source_shape = ctx.value(node.args[0]).shape
        return [(node.args[0], relevance.flatten().roll(back).reshape(source_shape))]
    return [(node.args[0], relevance.roll(back, dims))]


def pad(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    node = step.node
    widths = ctx.value(_argument(node, 1, "pad"))
    mode = _argument(node, 2, "mode", "constant")
    if mode != "constant":  # reflect / replicate / circular: the padding copies input elements
        return _maps.move(step, ctx, relevance)
    return [(node.args[0], F.pad(relevance, [-int(width) for width in widths]))]


def expand(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    from fastxai.lrp._nodes import unbroadcast

    source = step.node.args[0]
    return [(source, unbroadcast(relevance, ctx.value(source).shape))]


def masked_fill(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    node = step.node
    mask = _argument(node, 1, "mask")
    if ctx.variable(mask):
        raise UnsupportedLayerError(f"masked_fill with an input-dependent mask (node {node.name!r})")
    return [(node.args[0], relevance.masked_fill(ctx.value(mask), 0))]


def select(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    node = step.node
    source = node.args[0]
    inputs = ctx.value(source)
    result = relevance.new_zeros(inputs.shape)
    dim = ctx.value(_argument(node, 1, "dim"))
    if str(getattr(node.target, "__name__", node.target)) == "select":
        result.select(dim, ctx.value(_argument(node, 2, "index"))).copy_(relevance)
    else:
        start, length = ctx.value(_argument(node, 2, "start")), ctx.value(_argument(node, 3, "length"))
        result.narrow(dim, start, length).copy_(relevance)
    return [(source, result)]


HANDLERS = {
    "split": split, "roll": roll, "pad": pad, "expand": expand, "masked_fill": masked_fill,
    "select": select,
}  # fmt: skip

__all__ = ["HANDLERS", "tuple_item"]
