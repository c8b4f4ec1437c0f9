"""torch.fx tracing that runs a concrete forward alongside, so shape arithmetic stays metadata.

``torch.fx.symbolic_trace`` records ``x.shape``, ``x.size(1) // heads`` or ``h == image_size`` as
graph nodes, and fails on any Python decision that reads them (``if H % window:``,
``math.ceil(H / patch)``, ``range(x.dim())``), although such code only reads metadata. ``Tracer``
traces the same graph, but each node also carries the value it takes on an example input
(``node.meta["fastxai_value"]``, computed as the trace goes: one forward of the example), and
each node is marked as depending on the input's *data* or only on metadata (shapes, dtypes,
``new_zeros``-style constructors, constants). Then:

- ``x.dim()``, ``x.ndim``, ``x.dtype``, ``x.device`` are plain Python values (no node);
- ``x.shape`` / ``x.size()`` stay nodes, so reshapes built from them follow the batch size;
- a Python decision on metadata (``bool``, ``int``, ``len``, ``math.ceil``, iteration) takes
  the example's value: the graph is specialised to the example's per-sample shape, which is
  why ``fastxai.lrp`` caches one trace per input shape (less the batch dimension);
- a Python decision on tensor *data* is real data-dependent control flow: ``UnsupportedLayerError``
  names the source line and what to do.

Optional ``forward`` parameters left at their defaults are traced as those defaults
(``concrete_args``), so ``forward(x, mask=None)`` is a one-input model. Functions a library wraps
with ``torch.fx.wrap`` stay single nodes, except those in ``TRACE_THROUGH`` (torchvision's Swin
window attention and patch merging), traced op by op so relevance follows their rolls, pads
and views. ``F.scaled_dot_product_attention`` is traced as its plain ops
(``fastxai.lrp._attention.scaled_dot_product_attention``).

>>> graph = Tracer(example=x[:2]).trace(model, concrete_args=optional_defaults(model))
"""

from __future__ import annotations

import inspect
import math
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx import _symbolic_trace

from fastxai.lrp import _attention
from fastxai.lrp._errors import UnsupportedLayerError

VALUE = "fastxai_value"  # node.meta key: the node's value on the example input
DATA = "fastxai_data"  # node.meta key: True when the value depends on the input's data

METADATA_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}
METADATA_METHODS = {
    "size", "dim", "numel", "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor",
    "get_device", "is_floating_point", "is_complex", "is_contiguous", "element_size", "stride",
}  # fmt: skip
METADATA_FUNCTIONS = {
    torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like, torch.randn_like,
    torch.numel, torch.is_floating_point, torch.is_complex,
}  # fmt: skip
TRACE_THROUGH = {
    ("torchvision.models.swin_transformer", "shifted_window_attention"),
    ("torchvision.models.swin_transformer", "_patch_merging_pad"),
}
_MISSING = object()


def optional_defaults(model: Any) -> dict[str, Any]:
    """``{name: default}`` for the parameters of ``model``'s forward after the first one that have
    a default: traced as that constant instead of as extra inputs."""
    function = model.forward if isinstance(model, nn.Module) else model
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {
        parameter.name: parameter.default
        for parameter in parameters[1:]
        if parameter.default is not inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def _source_line() -> str:
    """``file:line (code)`` of the innermost frame outside torch and fastxai.lrp: the model's code."""
    frame = inspect.currentframe()
    while frame is not None and (
        "/fastxai/lrp/" in frame.f_code.co_filename or "/torch/" in frame.f_code.co_filename
    ):
        frame = frame.f_back
    if frame is None:
        return "the model's code"
    try:
        line = inspect.getframeinfo(frame).code_context or [""]
    except (OSError, IndexError):
        line = [""]
    return f"{frame.f_code.co_filename}:{frame.f_lineno} ({line[0].strip()!r})"


class ValueProxy(fx.Proxy):
    """A proxy whose metadata queries answer with the example's values (see the module docstring)."""

    tracer: Tracer

    def _value(self) -> Any:
        return self.node.meta.get(VALUE, _MISSING)

    def _query(self, method: str, *args: Any) -> Any:
        value = self._value()
        if value is _MISSING:
            return self.tracer.create_proxy("call_method", method, (self, *args), {})
        return getattr(value, method)(*args)

    def dim(self) -> Any:
        return self._query("dim")

    def is_floating_point(self) -> Any:
        return self._query("is_floating_point")

    def __getattr__(self, name: str) -> Any:
        if name in ("ndim", "dtype", "device", "is_cuda", "layout"):
            value = self._value()
            if value is not _MISSING and hasattr(value, name):
                return getattr(value, name)
        return ValueAttribute(self, name)

    def __setitem__(self, index: Any, value: Any) -> None:
        # in place (e.g. filling a mask made with new_zeros): a node, run in order at every call
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    def __len__(self) -> int:
        return self.tracer.length(self, "len()")

    def __index__(self) -> int:
        return operator.index(self.tracer.concrete(self, "an integer conversion"))

    def __int__(self) -> int:
        return int(self.tracer.concrete(self, "int()"))

    def __float__(self) -> float:
        return float(self.tracer.concrete(self, "float()"))

    def __ceil__(self) -> int:
        return math.ceil(self.tracer.concrete(self, "math.ceil"))

    def __floor__(self) -> int:
        return math.floor(self.tracer.concrete(self, "math.floor"))


class ValueAttribute(fx.proxy.Attribute, ValueProxy):
    """``proxy.shape`` and other attributes: a node made when used, answering like ``ValueProxy``."""


class Tracer(fx.Tracer):
    """torch.fx's tracer with example values (``example``: a few samples of the input, or None
    for a plain symbolic trace). ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and
    ``nn.TransformerEncoder`` are not leaves: a call runs their plain-op stand-in from
    ``fastxai.lrp._attention`` on the proxies instead of their opaque forward."""

    def __init__(self, example: torch.Tensor | None = None) -> None:
        super().__init__()
        self.example = example
        self._placeholders = 0
        self._evaluating = False  # computing an example value: modules and attributes run plainly

    # -- leaves and stand-ins ---------------------------------------------------------------

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _attention.decomposition(m) is not None:
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._evaluating:  # the bare forward: the model's hooks see the LRP pass, not the trace
            return m.forward(*args, **kwargs)
        function = _attention.decomposition(m)
        if function is None:
            return super().call_module(m, forward, args, kwargs)
        name = self.path_of_module(m)

        def decomposed(*call_args: Any, **call_kwargs: Any) -> Any:
            return function(m, *call_args, name=name, **call_kwargs)

        return super().call_module(m, decomposed, args, kwargs)  # not a leaf: runs ``decomposed``

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        hidden = {
            key: frame
            for key, frame in _symbolic_trace._wrapped_fns_to_patch.items()
            if (frame.get("__name__"), key[1]) in TRACE_THROUGH
        }
        for key in hidden:
            del _symbolic_trace._wrapped_fns_to_patch[key]
        try:
            graph = super().trace(root, concrete_args)
        finally:
            _symbolic_trace._wrapped_fns_to_patch.update(hidden)
        _drop_default_placeholders(graph)
        return graph

    # -- values alongside the trace ---------------------------------------------------------

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ValueProxy(node, self)

    def create_proxy(
        self,
        kind: str,
        target: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None = None,
        type_expr: Any | None = None,
        proxy_factory_fn: Any = None,
    ) -> fx.Proxy:
        if kind == "call_function" and target is F.scaled_dot_product_attention:
            return _attention.scaled_dot_product_attention(*args, **kwargs)
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if self.example is not None:
            self._evaluate(proxy.node, kind, target, args, kwargs)
        return proxy

    def _evaluate(self, node: fx.Node, kind: str, target: Any, args: Any, kwargs: Any) -> None:
        if kind == "placeholder":
            self._placeholders += 1
            if self._placeholders == 1:
                node.meta[VALUE], node.meta[DATA] = self.example.clone(), True  # type: ignore[union-attr]
            elif args:
                node.meta[VALUE], node.meta[DATA] = args[0], False
            return
        data = False
        missing = False

        def value_of(item: Any) -> Any:
            nonlocal data, missing
            if isinstance(item, fx.Proxy):  # an Attribute makes its getattr node (evaluated) here
                data = data or item.node.meta.get(DATA, True)
                value = item.node.meta.get(VALUE, _MISSING)
                missing = missing or value is _MISSING
                return value
            return item

        call_args = fx.node.map_aggregate(args, value_of)
        call_kwargs = fx.node.map_aggregate(kwargs, value_of)
        if kind == "get_attr":
            self._evaluating = True  # module attributes read plainly, not as new get_attr nodes
            try:
                value: Any = _fetch(self.root, str(target))
            finally:
                self._evaluating = False
        elif missing:
            return
        else:
            self._evaluating = True
            try:
                if kind == "call_function":
                    value = target(*call_args, **call_kwargs)
                elif kind == "call_method":
                    value = getattr(call_args[0], target)(*call_args[1:], **call_kwargs)
                elif kind == "call_module":
                    value = self.root.get_submodule(target).forward(*call_args, **call_kwargs)
                else:
                    return
            except Exception:  # the graph is still right; only later metadata queries go symbolic
                return
            finally:
                self._evaluating = False
        node.meta[VALUE] = value
        node.meta[DATA] = data and not _is_metadata_query(kind, target, args)

    def concrete(self, proxy: fx.Proxy, use: str) -> Any:
        """The example's value of ``proxy`` for a Python decision: allowed on metadata only."""
        value = proxy.node.meta.get(VALUE, _MISSING)
        if value is _MISSING or proxy.node.meta.get(DATA, True):
            raise _control_flow_error(self, use, value is _MISSING)
        return value

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.concrete(obj, "an if/while/and/or"))

    def length(self, obj: fx.Proxy, use: str) -> int:
        """The number of items: of a tuple (``chunk``, ``unbind``: its length is metadata), or of
        metadata (a shape)."""
        value = obj.node.meta.get(VALUE, _MISSING)
        if isinstance(value, (tuple, list)):
            return len(value)
        return len(self.concrete(obj, use))

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        length = self.length(obj, "a for loop or *unpacking")
        return (obj[index] for index in range(length))  # type: ignore[index]


def _control_flow_error(tracer: fx.Tracer, use: str, unknown: bool) -> UnsupportedLayerError:
    where = _source_line()
    what = (
        "a value torch.fx cannot evaluate while tracing"
        if unknown
        else "the values of a tensor computed from the input"
    )
    return UnsupportedLayerError(
        f"LRP traces the model with torch.fx, and {where} uses {what} in {use}: data-dependent "
        "control flow, which one traced graph cannot hold. Rewrite it with tensor ops "
        "(torch.where, masks), move the decision out of forward, or wrap the function with "
        "torch.fx.wrap so it stays one node (LRP then needs a rule for that node); or pass "
        "engine='gradient', which runs the model's own forward and needs no trace"
    )


def _is_metadata_query(kind: str, target: Any, args: Any) -> bool:
    if kind == "call_method":
        return target in METADATA_METHODS
    if kind == "call_function":
        if target is getattr:
            return args[1] in METADATA_ATTRIBUTES
        return target in METADATA_FUNCTIONS
    return False


def _fetch(root: Any, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _drop_default_placeholders(graph: fx.Graph) -> None:
    """Erase the placeholders ``concrete_args`` leaves behind and the guards torch.fx reads them
    with (``_assert_is_none``, ``_assert(p == default)``): the traced code itself received the
    default, never the placeholder, so the trace keeps one input."""
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    doomed: set[fx.Node] = set(placeholders[1:])
    for node in graph.nodes:
        if any(arg in doomed for arg in node.all_input_nodes):
            doomed.add(node)
    for node in reversed(list(graph.nodes)):
        if node in doomed:
            graph.erase_node(node)


def assign(target: torch.Tensor, index: Any, value: Any) -> torch.Tensor:
    """``target[index] = value`` out of place: what the graph runs for an assignment into
    input-dependent data (see ``fastxai.lrp._graph._functionalize_assignments``)."""
    result = target.clone()
    result[index] = value
    return result


__all__ = ["DATA", "VALUE", "Tracer", "ValueProxy", "assign", "optional_defaults"]
