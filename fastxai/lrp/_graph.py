"""The model as a graph: torch.fx tracing, one ``Step`` per node that carries relevance.

Modules from ``torch.nn`` are leaves of the trace; user modules are traced through, so models
written with ``x + y``, ``torch.cat``, ``torch.flatten``, ``F.relu`` or ``q @ k.transpose(-2, -1)``
are seen op by op; ``nn.MultiheadAttention`` and ``nn.TransformerEncoder(Layer)`` are traced
through plain-op stand-ins (``fastxai.lrp._attention``). A BatchNorm right after a Linear/Conv
whose output it alone reads is merged into that layer for the relevance pass (canonisation
without touching the model); any other BatchNorm passes relevance on. The trace runs a few
input samples alongside (``fastxai.lrp._trace``): nodes computed only from shapes, dtypes and
constants are metadata, never steps. Anything the relevance pass has no rule for raises
``UnsupportedLayerError`` naming it.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import operator
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastxai.lrp import _attention, _trace
from fastxai.lrp._errors import UnsupportedLayerError, model_line
from fastxai.lrp._linear import BATCHNORM_TYPES, LINEAR_TYPES, LinearLayer
from fastxai.lrp._trace import DATA, Tracer
from fastxai.lrp.composites import Composite
from fastxai.lrp.rules import Epsilon, Pass, Rule

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softsign,
    nn.Tanhshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
AVGPOOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
ADAPTIVE_AVGPOOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
ADAPTIVE_MAXPOOL_MODULES = (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softmax, nn.Hardsigmoid)

ACTIVATION_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, torch.tanh,
    F.tanh, torch.sigmoid, F.sigmoid, F.softplus, F.hardtanh, F.hardswish, F.hardsigmoid, F.softsign,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, operator.neg, torch.neg,
    torch.negative,
}  # fmt: skip
ACTIVATION_METHODS = {
    "relu", "tanh", "sigmoid", "contiguous", "float", "double", "clone", "to", "type_as", "neg", "negative",
}  # fmt: skip
NONNEGATIVE_FUNCTIONS = {torch.relu, F.relu, F.relu6, torch.sigmoid, F.sigmoid, F.softmax, torch.softmax}
NONNEGATIVE_METHODS = {"relu", "sigmoid", "softmax"}
RESHAPE_FUNCTIONS = {torch.flatten, torch.unflatten, torch.reshape, torch.squeeze, torch.unsqueeze}
RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
META_METHODS = _trace.METADATA_METHODS
META_FUNCTIONS = {*_trace.METADATA_FUNCTIONS, torch._assert}
STRUCTURE_FUNCTIONS: dict[Any, str] = {
    torch.chunk: "split", torch.split: "split", torch.tensor_split: "split", torch.unbind: "split",
    torch.roll: "roll", F.pad: "pad", torch.broadcast_to: "expand", torch.masked_fill: "masked_fill",
    torch.select: "select", torch.narrow: "select", torch.clone: "pass", torch.permute: "permute",
    F.batch_norm: "functional_batchnorm", F.group_norm: "group_norm",
    # x / ||x|| with the norm a constant (as AttnLRP treats LayerNorm's 1/std): an element-wise
    # scaling, whose epsilon rule hands each element its own relevance (Swin V2's cosine attention)
    F.normalize: "pass",
}  # fmt: skip
STRUCTURE_METHODS = {
    "chunk": "split", "split": "split", "tensor_split": "split", "unbind": "split", "roll": "roll",
    "expand": "expand", "expand_as": "expand", "broadcast_to": "expand", "masked_fill": "masked_fill",
    "select": "select", "narrow": "select",
}  # fmt: skip
FUNCTION_KINDS: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
    operator.matmul: "matmul", torch.matmul: "matmul", torch.bmm: "matmul", torch.mm: "matmul",
    torch.cat: "cat", torch.concat: "cat", torch.stack: "stack",
    torch.transpose: "transpose", torch.permute: "permute", operator.getitem: "getitem",
    torch.mean: "mean", torch.sum: "sum", F.softmax: "softmax", torch.softmax: "softmax",
    F.layer_norm: "layer_norm", F.local_response_norm: "lrn", F.linear: "functional_linear",
    F.avg_pool1d: "avgpool", F.avg_pool2d: "avgpool", F.avg_pool3d: "avgpool",
    F.max_pool1d: "maxpool", F.max_pool2d: "maxpool", F.max_pool3d: "maxpool",
    F.adaptive_avg_pool1d: "adaptive_avgpool", F.adaptive_avg_pool2d: "adaptive_avgpool",
    F.adaptive_avg_pool3d: "adaptive_avgpool", F.adaptive_max_pool1d: "adaptive_maxpool",
    F.adaptive_max_pool2d: "adaptive_maxpool", F.adaptive_max_pool3d: "adaptive_maxpool",
}  # fmt: skip
# ops whose relevance moves back through their own backward (``fastxai.lrp._maps``): copies and
# selections (``move``; ``extremum``: max / min, which with a dim return values and indices),
# maps affine in the input-dependent arguments (``affine``: the epsilon
# rule), powers with a constant exponent (``power``: element-wise, as an activation)
_CONVOLUTIONS = {
    F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
    torch.conv1d, torch.conv2d, torch.conv3d,
}  # fmt: skip
MAP_FUNCTIONS: dict[Any, str] = {
    torch.repeat_interleave: "move", torch.tile: "move", torch.flip: "move", F.unfold: "move",
    torch.amax: "move", torch.amin: "move", torch.max: "extremum", torch.min: "extremum",
    torch.maximum: "extremum", torch.minimum: "extremum", _trace.assign: "move",
    F.interpolate: "affine", F.upsample: "affine", F.upsample_nearest: "affine",
    F.upsample_bilinear: "affine", torch.addcmul: "affine", torch.einsum: "affine", F.fold: "affine",
    operator.pow: "power", torch.pow: "power", torch.square: "power",
    **{convolution: "affine" for convolution in _CONVOLUTIONS},
}  # fmt: skip
MAP_METHODS = {
    "repeat_interleave": "move", "repeat": "move", "tile": "move", "flip": "move", "unfold": "move",
    "amax": "move", "amin": "move", "max": "extremum", "min": "extremum", "maximum": "extremum",
    "minimum": "extremum", "addcmul": "affine", "pow": "power", "square": "power",
}  # fmt: skip
MAP_MODULES: tuple[tuple[type, str], ...] = (
    (nn.Unfold, "move"), (nn.Upsample, "affine"), (nn.Fold, "affine"),
)  # fmt: skip
# Statistics of an activation (norms, standard deviations, variances) are constants of the
# relevance pass, as LayerNorm's 1/std is in AttnLRP: what is computed from them (ConvNeXt V2's
# global response norm x_n = ||x|| / mean ||x||) scales the activations it multiplies without
# taking relevance itself. An output computed from statistics alone is refused.
STATISTIC_FUNCTIONS = {torch.norm, torch.linalg.vector_norm, torch.linalg.norm, torch.std, torch.var}
STATISTIC_METHODS = {"norm", "std", "var"}
METHOD_KINDS = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "matmul": "matmul", "bmm": "matmul",
    "add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div",  # see _functionalize_updates
    "transpose": "transpose", "permute": "permute", "mean": "mean", "sum": "sum", "softmax": "softmax",
}  # fmt: skip


@dataclass
class Step:
    """One node of the relevance pass. ``kind`` selects the handler in ``fastxai.lrp._nodes``."""

    node: fx.Node
    kind: str
    name: str
    module: Any = None
    rule: Rule | None = None
    layer: LinearLayer | None = None
    source: fx.Node | None = None  # merged Linear/Conv + BatchNorm: the linear layer's input
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    graph: fx.Graph
    model: Any  # an nn.Module is held weakly: the plan cache must not keep the model alive
    steps: dict[fx.Node, Step]
    placeholder: fx.Node
    output: fx.Node
    nonnegative: dict[bool, set[fx.Node]] = field(default_factory=dict)
    composite: Composite | None = None  # keeps the rules whose ids key the plan cache alive
    release: dict[fx.Node, list[fx.Node]] = field(default_factory=dict)  # see fastxai.lrp._plans
    channels_last: bool = False  # run 4-d CPU inputs channels-last: see fastxai.lrp._plans

    def __post_init__(self) -> None:
        if isinstance(self.model, nn.Module):
            self.model = weakref.ref(self.model)

    @property
    def root(self) -> Any:
        return self.model() if isinstance(self.model, weakref.ref) else self.model

    def current(self) -> bool:
        """Whether every module of the plan is still the model's module of that name."""
        return all(
            fetch_attr(self.root, str(step.node.target)) is step.module
            for step in self.steps.values()
            if step.node.op == "call_module"
        )


_TRACES: weakref.WeakKeyDictionary[nn.Module, dict[Any, fx.Graph]] = weakref.WeakKeyDictionary()


def trace(model: Any, example: torch.Tensor | None = None) -> fx.Graph:
    """The torch.fx graph of ``model`` (traced in eval mode; see ``fastxai.lrp._trace``). With an
    ``example`` input the trace runs it alongside, so Python decisions on shapes take its values:
    such a graph is cached per model, per-sample shape ``example.shape[1:]`` and dtype (a model
    that reads ``x.dtype`` to cast back, as EfficientViT's attention does, bakes it in)."""
    key = None if example is None else (tuple(example.shape[1:]), example.dtype)
    cached = _TRACES.get(model) if isinstance(model, nn.Module) else None
    if cached is not None and key in cached:
        return cached[key]
    defaults = {
        name: value
        for name, value in _trace.optional_defaults(model).items()
        if value is None or isinstance(value, (bool, int, float, str))
    }
    try:
        with _untouched(model):
            graph = Tracer(example).trace(model, concrete_args=defaults or None)
        _attention.drop_unread_weights(graph)
        _functionalize_updates(graph)
        _functionalize_assignments(graph)
    except UnsupportedLayerError:
        raise
    except Exception as error:  # torch.fx raises many types for untraceable code
        raise UnsupportedLayerError(
            f"model could not be traced with torch.fx ({type(error).__name__}: {error}) at "
            f"{model_line(error)}; the traced engine needs a model without data-dependent control "
            "flow: use engine='gradient', which runs the model's own forward (no tracing)"
        ) from error
    if isinstance(model, nn.Module):
        _TRACES.setdefault(model, {})[key] = graph
    return graph


_CONTAINERS = (dict, list, set)
_REGISTRIES = {"_parameters", "_buffers", "_modules"}  # the model's structure: the trace keeps them


@contextlib.contextmanager
def _untouched(model: Any) -> Iterator[None]:
    """Put back every module's plain attributes after the trace, also on error: code that caches
    a value on the module the first time it runs (timm's LeViT and EfficientFormerV2 keep their
    attention biases in ``attention_bias_cache``) would otherwise keep a trace proxy there, and
    the model's own forward would return proxies from then on. Containers are restored in place
    (the module holds the same object), other attributes rebound, new ones deleted but tensors
    (torch.fx stores the graph's tensor constants on the root module as ``_tensor_constant<i>``)."""
    if not isinstance(model, nn.Module):
        yield
        return
    saved = []
    for module in model.modules():
        state = module.__dict__
        contents = {
            name: (copy.copy(value) if isinstance(value, _CONTAINERS) and name not in _REGISTRIES else None)
            for name, value in state.items()
        }
        saved.append((module, dict(state), contents))
    try:
        yield
    finally:
        for module, before, contents in saved:
            state = module.__dict__
            for name in [name for name in state if name not in before]:
                if not isinstance(state[name], torch.Tensor):  # torch.fx keeps constants as tensors
                    del state[name]
            for name, value in before.items():
                if state.get(name) is not value:
                    state[name] = value
                kept = contents[name]
                if isinstance(kept, list):
                    value[:] = kept
                elif isinstance(kept, (dict, set)):
                    value.clear()
                    value.update(kept)


IN_PLACE_ARITHMETIC = {name for name in METHOD_KINDS if name.endswith("_")}  # add_, sub_, mul_, div_


def _functionalize_updates(graph: fx.Graph) -> None:
    """``x.mul_(c)`` as a statement (DM-NFNet's ``x.mul_(gain)``): the code goes on reading ``x``,
    whose trace node is the value before the update. Every later reader of ``x`` reads the
    update's node instead, which the relevance pass computes out of place (``_forward``), so the
    update is a step of its own (``mul``, ``add``, ...). An update of a view of ``x`` would still
    change ``x`` itself unseen: the check that the trace reproduces the model's output refuses it."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op != "call_method" or str(node.target) not in IN_PLACE_ARITHMETIC or not node.args:
            continue
        updated = node.args[0]
        if not isinstance(updated, fx.Node):
            continue
        for user in list(updated.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(updated, node)


def _functionalize_assignments(graph: fx.Graph) -> None:
    """``x[index] = value`` on input-dependent data (MViTv2 adds its relative position bias into a
    slice of the attention scores): the statement becomes ``_trace.assign(x, index, value)``, the
    updated copy, and every later reader of ``x`` reads it, as for ``_functionalize_updates``; the
    relevance pass then moves back through it (``_maps.move``): the written elements' relevance
    to ``value``, the others' to ``x``. Assignments of constants (a mask filled in place) stay."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not operator.setitem or not node.meta.get(DATA, True):
            continue
        updated = node.args[0]
        if not isinstance(updated, fx.Node):
            continue
        node.target = _trace.assign
        for user in list(updated.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(updated, node)
    for node in graph.nodes:  # readers of data written into a constant (a zero tensor) read data
        inputs = node.all_input_nodes
        if node.meta.get(DATA) is False and any(arg.meta.get(DATA) for arg in inputs):
            node.meta[DATA] = not _trace._is_metadata_query(node.op, node.target, node.args)


def fetch_attr(root: Any, target: str) -> Any:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _describe(node: fx.Node) -> str:
    target = (
        node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
    )
    return f"{node.op} {target!r} (node {node.name!r})"


def build_plan(
    model: Any,
    composite: Composite,
    *,
    maxpool: str = "winner",
    merge_batchnorm: bool = True,
    example: torch.Tensor | None = None,
) -> Plan:
    """Trace ``model`` (with ``example`` inputs run alongside, see ``trace``) and assign every node
    a kind and, for linear layers, a rule. Nodes computed from metadata only (shapes, dtypes,
    constants made like the input) are no steps: relevance never flows through them."""
    graph = trace(model, example)
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(
            f"LRP supports models with exactly one input tensor, this one takes {len(placeholders)}"
        )
    output = next(node for node in graph.nodes if node.op == "output")
    variable: set[fx.Node] = set()
    meta: set[fx.Node] = set()
    steps: dict[fx.Node, Step] = {}
    module_calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            module_calls[str(node.target)] = module_calls.get(str(node.target), 0) + 1
    first_linear_seen = False
    statistics: set[fx.Node] = set()  # constants computed from the input's statistics
    for node in graph.nodes:
        if node.op == "placeholder":
            variable.add(node)
            steps[node] = Step(node, "input", node.name)
            continue
        if node.op == "output":
            _check_output(node, statistics)
            continue
        sources = [arg for arg in node.all_input_nodes if arg in variable]
        if not sources:
            if any(arg in statistics for arg in node.all_input_nodes):
                statistics.add(node)
            continue  # a constant: computed, carries no relevance
        if _is_statistic(node) and not all(arg in meta for arg in sources):
            statistics.add(node)
            continue
        variable.add(node)
        if node.meta.get(DATA) is False or all(arg in meta for arg in sources):
            meta.add(node)  # shape arithmetic, shape checks, tensors made from shapes: metadata
            continue
        kind, module = _classify(node, model)
        if kind == "meta":
            meta.add(node)
            continue
        name = (
            str(node.target)
            if node.op == "call_module" and module_calls[str(node.target)] == 1
            else node.name
        )
        step = Step(node, kind, name, module)
        if kind == "linear":
            assert module is not None
            step.layer = LinearLayer(module)
            step.rule = composite.rule(name, module, not first_linear_seen) or Epsilon(1e-6)
            first_linear_seen = True
            if isinstance(step.rule, Pass):  # identity (Captum's IdentityRule): R_in = R
                step.kind, step.layer = "pass", None  # fastxai.lrp.core checks the shapes agree
        elif kind in ("batchnorm", "pass", "avgpool", "adaptive_avgpool", "maxpool"):
            rule = composite.rule(name, module, False) if module is not None else None
            step.rule = _check_simple_rule(name, kind, rule, composite, merge_batchnorm)
        if kind == "maxpool":
            step.extra["mode"] = maxpool
        steps[node] = step
    if merge_batchnorm:
        _merge_batchnorms(steps)
    return Plan(graph, model, steps, placeholders[0], output)


def _is_statistic(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in STATISTIC_FUNCTIONS
    return node.op == "call_method" and str(node.target) in STATISTIC_METHODS


def _check_output(node: fx.Node, statistics: set[fx.Node]) -> None:
    returned = node.args[0]
    first = next(iter(returned.values())) if isinstance(returned, dict) and returned else returned
    if isinstance(first, (tuple, list)) and first:
        first = first[0]
    if isinstance(first, fx.Node) and first in statistics:
        raise UnsupportedLayerError(
            f"the model's output (node {first.name!r}) is computed from norms or standard deviations "
            "of activations only, which LRP takes as constants (as LayerNorm's 1/std): no relevance "
            "would reach the input"
        )


def _check_simple_rule(
    name: str, kind: str, rule: Rule | None, composite: Composite, merge_batchnorm: bool = True
) -> Rule:
    if rule is None:
        # A BatchNorm that no Linear/Conv output feeds alone (after a concatenation, a sum, the
        # input) is an element-wise affine map: with merging on it passes relevance on, which
        # conserves it; epsilon would give each element s x / (s x + t) of its relevance, which
        # blows up where s x + t is near 0 (DenseNet's norms after a concatenation).
        if kind == "pass" or (kind == "batchnorm" and merge_batchnorm):
            return Pass()
        return Epsilon(composite.stabilizer)
    allowed: tuple[type, ...] = (Pass,) if kind == "pass" else (Epsilon,)
    if kind == "batchnorm":
        allowed = (Epsilon, Pass)
    if type(rule) not in allowed:
        names = " or ".join(t.__name__ for t in allowed)
        raise ValueError(f"rule {rule!r} does not apply to {name!r} ({kind}): use {names}")
    return rule


def _merge_batchnorms(steps: dict[fx.Node, Step]) -> None:
    for node, step in steps.items():
        if step.kind != "batchnorm":
            continue
        producer = node.args[0]
        if not isinstance(producer, fx.Node):
            continue
        producer_step = steps.get(producer)
        if producer_step is None or producer_step.kind != "linear" or len(producer.users) != 1:
            continue
        assert producer_step.layer is not None and isinstance(producer, fx.Node)
        step.kind = "linear"
        step.layer = LinearLayer(producer_step.layer.module, step.module)
        step.rule = producer_step.rule
        step.source = producer.args[0] if isinstance(producer.args[0], fx.Node) else None
        step.extra["merged_into"] = producer_step.name
        producer_step.kind = "merged"


def _classify(node: fx.Node, root: Any) -> tuple[str, nn.Module | None]:
    if node.op == "call_module":
        module = fetch_attr(root, str(node.target))
        return _classify_module(node, module), module
    if node.op == "call_function":
        if node.target is builtins.getattr:
            attribute = node.args[1]
            if attribute in _trace.METADATA_ATTRIBUTES:
                return "meta", None
            if attribute in ("T", "mT"):
                return "transpose", None
            if attribute in ("values", "indices"):  # of what max / min with a dim return
                return "getitem", None
        if node.target in META_FUNCTIONS:
            return "meta", None
        if node.target in ACTIVATION_FUNCTIONS or _identity_in_eval(node):
            return "pass", None
        if node.target in STRUCTURE_FUNCTIONS:
            kind = STRUCTURE_FUNCTIONS[node.target]
            if kind == "functional_batchnorm":
                return "batchnorm", _batchnorm_module(node, root)
            return kind, None
        if node.target in RESHAPE_FUNCTIONS:
            return "reshape", None
        if node.target in FUNCTION_KINDS:
            return FUNCTION_KINDS[node.target], None
        if node.target in MAP_FUNCTIONS:
            return MAP_FUNCTIONS[node.target], None
    if node.op == "call_method":
        target = str(node.target)
        if target in META_METHODS:
            return "meta", None
        if target in ACTIVATION_METHODS:
            return "pass", None
        if target in RESHAPE_METHODS:
            return "reshape", None
        if target in METHOD_KINDS:
            return METHOD_KINDS[target], None
        if target in STRUCTURE_METHODS:
            return STRUCTURE_METHODS[target], None
        if target in MAP_METHODS:
            return MAP_METHODS[target], None
    raise UnsupportedLayerError(f"LRP has no rule for {_describe(node)}")


def _identity_in_eval(node: fx.Node) -> bool:
    """``torchvision.ops.stochastic_depth`` (a node of its own: torchvision wraps it for torch.fx)
    is the identity in eval mode (``training=False``), like dropout."""
    target = node.target
    if getattr(target, "__name__", None) != "stochastic_depth":
        return False
    if not str(getattr(target, "__module__", "")).startswith("torchvision."):
        return False
    probability = node.args[1] if len(node.args) > 1 else node.kwargs.get("p")
    training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
    if training is True and probability != 0.0:
        raise UnsupportedLayerError(
            f"stochastic_depth in training mode (node {node.name!r}): call model.eval()"
        )
    return True


def _batchnorm_module(node: fx.Node, root: Any) -> nn.Module:
    """The BatchNorm module whose buffers a functional ``F.batch_norm`` reads (e.g. timm's
    ``BatchNormAct2d``, a BatchNorm2d subclass that calls it): treated like that module."""
    mean = node.args[1] if len(node.args) > 1 else node.kwargs.get("running_mean")
    training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
    if training is not False:
        raise UnsupportedLayerError(
            f"F.batch_norm with batch statistics (node {node.name!r}): call model.eval()"
        )
    if isinstance(mean, fx.Node) and mean.op == "get_attr" and "." in str(mean.target):
        owner = fetch_attr(root, str(mean.target).rsplit(".", 1)[0])
        if isinstance(owner, nn.modules.batchnorm._BatchNorm):
            return owner
    raise UnsupportedLayerError(
        f"F.batch_norm outside a BatchNorm module (node {node.name!r}): use an nn.BatchNorm module"
    )


def _classify_module(node: fx.Node, module: nn.Module) -> str:
    if isinstance(module, LINEAR_TYPES):
        LinearLayer(module)  # checks the convolution's padding
        return "linear"
    if isinstance(module, BATCHNORM_TYPES):
        return "batchnorm"
    if isinstance(module, ACTIVATION_MODULES):
        return "pass"
    if isinstance(module, (nn.Flatten, nn.Unflatten)):
        return "reshape"
    if isinstance(module, AVGPOOL_MODULES):
        return "avgpool"
    if isinstance(module, ADAPTIVE_AVGPOOL_MODULES):
        return "adaptive_avgpool"
    if isinstance(module, MAXPOOL_MODULES):
        return "maxpool"
    if isinstance(module, ADAPTIVE_MAXPOOL_MODULES):
        return "adaptive_maxpool"
    if isinstance(module, nn.Softmax):
        return "softmax"
    if isinstance(module, nn.LayerNorm):
        return "layer_norm"
    if isinstance(module, nn.GroupNorm):
        return "group_norm"
    if isinstance(module, nn.LocalResponseNorm):
        return "lrn"
    if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        return "recurrent"
    for module_type, kind in MAP_MODULES:
        if isinstance(module, module_type):
            return kind
    raise UnsupportedLayerError(
        f"LRP has no rule for module {node.target!r} ({type(module).__name__}); "
        "supported: Linear, Conv1d/2d/3d, BatchNorm, pooling, Flatten, Dropout, element-wise "
        "activations, Softmax, LayerNorm, GroupNorm, LocalResponseNorm, Upsample, Unfold, LSTM, GRU, RNN"
    )


PRESERVING_KINDS = {"reshape", "avgpool", "adaptive_avgpool", "maxpool", "adaptive_maxpool", "cat", "stack",
                    "add", "getitem", "transpose", "permute", "move"}  # fmt: skip
IDENTITY_LIKE = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def _preserves_sign(node: fx.Node, step: Step) -> bool:
    if step.kind == "add":
        return all(isinstance(arg, fx.Node) for arg in node.args)
    if step.kind == "pass":
        return (
            isinstance(step.module, IDENTITY_LIKE)
            or node.target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)
            or node.target in ("contiguous", "float", "double", "clone", "to", "type_as")
        )
    return step.kind in PRESERVING_KINDS


def nonnegative_nodes(plan: Plan, input_nonnegative: bool) -> set[fx.Node]:
    """Nodes whose values are >= 0 by construction (ReLU, sigmoid, softmax, and what only
    pools, reshapes, concatenates or adds such values): their ``a-`` rule terms are zero."""
    if input_nonnegative not in plan.nonnegative:
        plan.nonnegative[input_nonnegative] = _nonnegative_nodes(plan, input_nonnegative)
    return plan.nonnegative[input_nonnegative]


def _nonnegative_nodes(plan: Plan, input_nonnegative: bool) -> set[fx.Node]:
    known: set[fx.Node] = {plan.placeholder} if input_nonnegative else set()
    for node in plan.graph.nodes:
        step = plan.steps.get(node)
        if step is None or step.kind == "input":
            continue
        if (
            isinstance(step.module, NONNEGATIVE_MODULES)
            or (node.op == "call_function" and node.target in NONNEGATIVE_FUNCTIONS)
            or (node.op == "call_method" and node.target in NONNEGATIVE_METHODS)
        ):
            known.add(node)
        elif _preserves_sign(node, step) and all(arg in known for arg in node.all_input_nodes):
            known.add(node)
    return known
