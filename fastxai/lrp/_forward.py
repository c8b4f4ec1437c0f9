"""The forward pass of ``lrp``, node by node: ``run_node`` evaluates one node of the traced graph
and keeps what the relevance pass reads besides the values (the argmax indices of max pooling).

An op of the model that writes into its input (``inplace=True`` activations, ``x += y``,
``x.mul_(c)``) runs on a copy: the relevance pass reads the value it would overwrite (the
epsilon rule divides by a layer's stored output; a ReLU6 clipping it in place made MobileNetV2's
relevance 20 times its logit). A ReLU is the exception (see ``_overwrites``); the plan's own
in-place ReLUs (``fastxai.lrp._plans``) overwrite values no handler reads.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx

from fastxai.lrp import _linear
from fastxai.lrp._errors import UnsupportedLayerError

if TYPE_CHECKING:
    from fastxai.lrp._graph import Step
    from fastxai.lrp._nodes import Context


def run_node(node: fx.Node, ctx: Context, root: Any, step: Step | None) -> Any:
    """Evaluate one node of the forward pass (max pooling also keeps its argmax indices; a ReLU
    marked ``inplace`` by the plan overwrites its input, a fresh value nothing else reads)."""
    if step is not None and "inplace" in step.extra:
        return torch.relu_(ctx.env[node.all_input_nodes[0]])
    args = fx.node.map_arg(node.args, ctx.env.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, ctx.env.__getitem__)
    if step is not None and args and isinstance(args[0], torch.Tensor) and _overwrites(node, root):
        args = (args[0].clone(), *args[1:])  # the relevance pass reads the value it would overwrite
    if node.op == "get_attr":
        from fastxai.lrp._graph import fetch_attr

        return fetch_attr(root, str(node.target))
    if node.op == "call_module":
        module = step.module if step is not None else None
        if module is None:
            from fastxai.lrp._graph import fetch_attr

            module = fetch_attr(root, str(node.target))
        if step is not None and step.kind in ("maxpool", "adaptive_maxpool"):
            return _max_with_indices(node, ctx, module, args[0])
        return module(*args, **kwargs)
    if node.op == "call_function":
        if step is not None and step.kind in ("maxpool", "adaptive_maxpool"):
            position = 6 if step.kind == "maxpool" else 2  # of return_indices
            if kwargs.get("return_indices") or (len(args) > position and args[position]):
                raise UnsupportedLayerError(f"max pooling that returns indices (node {node.name!r})")
            target: Any = node.target
            output, indices = target(*args, **{**kwargs, "return_indices": True})
            inputs: Any = args[0] if args else kwargs["input"]
            ctx.indices[node] = indices, inputs.shape
            return output
        function: Any = node.target
        return function(*args, **kwargs)
    if node.op == "call_method":
        subject = args[0]
        if node.target == "view" and isinstance(subject, torch.Tensor) and _linear.is_channels_last(subject):
            subject = subject.contiguous()  # the pass's layout (see ``lrp``), not the model's
        return getattr(subject, str(node.target))(*args[1:], **kwargs)
    raise AssertionError(node.op)


_INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


def _overwrites(node: fx.Node, root: Any) -> bool:
    """Whether the node's op writes into its first argument (``inplace=True``, ``x += y``,
    ``x.mul_(c)``), except a ReLU: the values it zeroes carry no relevance (their relevance is
    a_j * (...) = 0 wherever they are read), so the epsilon rule's denominators there never
    meet relevance, and cloning would cost a copy per layer of most convolutional networks."""
    if node.op == "call_module":
        from fastxai.lrp._graph import fetch_attr

        module = fetch_attr(root, str(node.target))
        return bool(getattr(module, "inplace", False)) and type(module) is not torch.nn.ReLU
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_):
            return False
        name = getattr(node.target, "__name__", "")
        return (
            bool(node.kwargs.get("inplace"))
            or node.target in _INPLACE_OPERATORS
            or (name.endswith("_") and not name.startswith("_"))
        )
    if node.op == "call_method":
        target = str(node.target)
        return target.endswith("_") and not target.startswith("_") and target != "relu_"
    return False


def _max_with_indices(node: fx.Node, ctx: Context, module: Any, inputs: Any) -> torch.Tensor:
    dims = inputs.dim() - 2
    function: Any
    if hasattr(module, "output_size"):
        function = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[dims - 1]
        output, indices = function(inputs, module.output_size, return_indices=True)
    else:
        if module.return_indices:
            raise UnsupportedLayerError(f"max pooling that returns indices (module {node.target!r})")
        function = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
        output, indices = function(
            inputs, module.kernel_size, module.stride, module.padding, module.dilation,
            ceil_mode=module.ceil_mode, return_indices=True,
        )  # fmt: skip
    ctx.indices[node] = indices, inputs.shape
    return output


__all__ = ["run_node"]
