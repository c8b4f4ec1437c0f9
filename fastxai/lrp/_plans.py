"""What the forward pass of ``lrp`` keeps, and the cache of plans.

- ``cached_plan``: the traced graph with its rules (``fastxai.lrp._graph.Plan``), built once per
  model and composite and reused while the model's submodules stay the same objects (parameters,
  BatchNorm statistics and rule attributes are read at every call);
- ``Plan.release``: values the forward pass drops as soon as no later node reads them, when no
  relevance step reads them either (a z+ layer's output: z+ is recomputed from its input; the
  input of winner-take-all max pooling: only its shape is needed);
- ``Step.extra["inplace"]``: a ReLU whose input is such a value, fresh from a Linear, Conv or
  BatchNorm, overwrites it instead of allocating another activation.

Fewer live activations also mean fewer fresh pages for the allocator to fault in on the CPU.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from fastxai.lrp._graph import _TRACES, Plan, Step, build_plan
from fastxai.lrp._linear import BATCHNORM_TYPES, reads_output
from fastxai.lrp.composites import Composite

_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Plan]] = weakref.WeakKeyDictionary()


def _composite_key(composite: Composite) -> tuple[Any, ...]:
    """What a plan depends on in a composite: which rule object each entry maps to, and the
    stabilizer (the default rule of pooling steps)."""
    return (
        composite.stabilizer,
        tuple((types, id(rule)) for types, rule in composite.layer_map),
        tuple((types, id(rule)) for types, rule in composite.first_map),
        tuple((name, id(rule)) for name, rule in composite.name_map.items()),
    )


def cached_plan(
    model: Any,
    composite: Composite,
    *,
    maxpool: str = "winner",
    merge_batchnorm: bool = True,
    example: torch.Tensor | None = None,
    retrace: bool = False,
) -> Plan:
    """``build_plan``, cached per module, composite (the same rule objects in the same places)
    and per-sample input shape and dtype (``example``: a few input samples, traced alongside; see
    ``fastxai.lrp._trace``) while the model's submodules stay the same objects; parameters are
    read at every call. ``retrace``: drop the model's plans and traces first (``lrp`` found the
    plan's output is not the model's: its forward took another Python branch than traced)."""
    options: dict[str, Any] = {"maxpool": maxpool, "merge_batchnorm": merge_batchnorm, "example": example}
    if not isinstance(model, nn.Module):
        return annotate(build_plan(model, composite, **options))
    shape = None if example is None else (tuple(example.shape[1:]), example.dtype)
    key = (_composite_key(composite), maxpool, merge_batchnorm, shape)
    if retrace:
        _PLANS.pop(model, None)
        _TRACES.pop(model, None)
    plans = _PLANS.setdefault(model, {})
    plan = plans.get(key)
    if plan is not None and plan.current():
        return plan
    if plan is not None:  # a submodule was replaced: trace again
        plans.clear()
        _TRACES.pop(model, None)
    plan = annotate(build_plan(model, composite, **options))
    plan.composite = composite
    if len(plans) >= 16:  # composites built per call (mappings) would otherwise pile up
        plans.clear()
    plans[key] = plan
    return plan


def annotate(plan: Plan) -> Plan:
    """Set ``plan.release`` and mark the in-place ReLUs (see the module docstring)."""
    plan.release = _releases(plan)
    _mark_inplace_relus(plan)
    plan.channels_last = any(
        step.kind == "linear" and step.layer is not None and step.layer.is_conv and step.layer.dims == 2
        for step in plan.steps.values()
    )
    return plan


def _mark_inplace_relus(plan: Plan) -> None:
    """A ReLU whose input is a fresh Linear/Conv/BatchNorm output that nothing else reads runs in
    place on it (``extra["inplace"]``): one activation-sized allocation less per layer."""
    for node, released in plan.release.items():
        step = plan.steps.get(node)
        if step is None or step.kind != "pass" or len(node.all_input_nodes) != 1:
            continue
        is_relu = type(step.module) is nn.ReLU or (
            node.op == "call_function" and node.target in (torch.relu, F.relu) and len(node.args) == 1
        )
        source = node.all_input_nodes[0]
        producer = plan.steps.get(source)
        fresh = producer is not None and (
            producer.kind in ("linear", "merged") or isinstance(producer.module, BATCHNORM_TYPES)
        )
        if is_relu and fresh and source in released and len(source.users) == 1 and not node.kwargs:
            step.extra["inplace"] = True


def _backward_reads(step: Step) -> tuple[bool, list[fx.Node]]:
    """Whether the relevance handler of ``step`` reads the node's own value, and which input
    nodes' values it reads (every one, unless the kind is known to read fewer)."""
    if step.kind in ("input", "pass", "merged"):
        return False, []
    if step.kind in ("maxpool", "adaptive_maxpool") and step.extra.get("mode") != "average":
        return False, []  # winner-take-all needs the argmax indices and the input's shape only
    if step.kind == "linear":
        assert step.rule is not None
        source = step.source if step.source is not None else step.node.args[0]
        return reads_output(step.rule), [source] if isinstance(source, fx.Node) else []
    return True, list(step.node.all_input_nodes)


def _releases(plan: Plan) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the values the forward pass can drop once it has run: values no later node
    and no relevance handler reads (e.g. a z+ layer's output: z+ is recomputed from its input).
    Fewer live activations, fewer fresh pages for the allocator to fault in."""
    needed: set[fx.Node] = {arg for arg in plan.output.all_input_nodes}
    for step in plan.steps.values():
        own, inputs = _backward_reads(step)
        if own:
            needed.add(step.node)
        needed.update(inputs)
    last_user: dict[fx.Node, fx.Node] = {}
    for node in plan.graph.nodes:
        for arg in node.all_input_nodes:
            last_user[arg] = node
    release: dict[fx.Node, list[fx.Node]] = {}
    for value, user in last_user.items():
        if value in plan.steps and value not in needed and user.op != "output":
            release.setdefault(user, []).append(value)
    return release
