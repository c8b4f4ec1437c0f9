"""``LayerLRP``: captum.attr.LayerLRP's shape on ``fastxai.lrp``.

    from fastxai.compat._captum_layer_lrp import LayerLRP
    relevance = LayerLRP(model, model.conv1).attribute(x, target=y)  # [B, *A], conv1's output

The relevance pass of ``LRP`` (Captum's default rules, ``module.rule``, relevance through torch
functions as a gradient) starts from ``R = onehot(target) * f(x)`` at the output and stops being
read at the layer: the result is the relevance held at the layer's output node, ``R_out`` with
the layer's output shape, or with ``attribute_to_layer_input=True`` the relevance its rule hands
to its input, ``R_in = a * L^T(R_out / (z + eps sign0(z)))`` for epsilon (what reaches the input
node: Captum's input hook also holds the gradient summed over every consumer of that tensor).
One traced relevance pass, ``fastxai.lrp.lrp(..., return_layer_relevances=True)``, serves every
layer of a list. ``return_convergence_delta``: per sample ``f_target(x) - sum(R_layer)`` (Captum's
sign; zero where the rules conserve relevance down to the layer), a list of them for a list of
layers. Paper: Bach et al. 2015, https://doi.org/10.1371/journal.pone.0130140.

As Captum: a layer list gives a list of relevances; a model input the layer reads directly gives
its relevance at the input; a rule on a layer forward calls twice raises RuntimeError. Unlike
Captum: the model is never modified (see ``fastxai.compat._captum_lrp``); a layer without a rule
(ReLU, Tanh, Dropout, Flatten) also gives its relevance, where Captum raises AttributeError; a
layer that forward does not reach, or calls more than once, raises ValueError naming it; a layer
with several tensor inputs and ``attribute_to_layer_input`` raises NotImplementedError.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from fastxai.compat._captum_lrp import LRP, _Bound
from fastxai.lrp import _graph


class LayerLRP(LRP):
    """Layer-wise relevance propagation to a layer's output (or input), Captum's constructor
    ``LayerLRP(model, layer)`` (a module of ``model`` or a list of them) and ``attribute``."""

    def __init__(
        self, model: nn.Module, layer: nn.Module | list[nn.Module], functional: str = "gradient"
    ) -> None:
        super().__init__(model, functional)
        layers = layer if isinstance(layer, list) else [layer]
        if not layers:
            raise ValueError("layer must be a module of model or a non-empty list of them")
        names = {id(module): name for name, module in model.named_modules()}
        for item in layers:
            if not isinstance(item, nn.Module):
                raise TypeError(f"layer must be an nn.Module (or a list of them), got {type(item).__name__}")
            if id(item) not in names or item is model:
                raise ValueError(f"layer {type(item).__name__} is not a submodule of model")
        self.layer = layer
        self._names = [names[id(item)] for item in layers]

    def attribute(  # type: ignore[override]  # Captum's LayerLRP adds attribute_to_layer_input
        self,
        inputs: torch.Tensor | tuple[torch.Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        verbose: bool = False,
    ) -> Any:
        """The relevance at each layer's output ([B, *A]) or input, a list for a list of layers;
        with ``return_convergence_delta`` also ``f_target(x) - sum(R_layer)`` per sample, [B]."""
        for flag, value in (
            ("return_convergence_delta", return_convergence_delta),
            ("attribute_to_layer_input", attribute_to_layer_input),
            ("verbose", verbose),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
        _, layers, _, wrapper = self._relevances(inputs, target, additional_forward_args, True, verbose)
        keys = _layer_keys(wrapper, self._names, attribute_to_layer_input)
        dtype = _dtype(inputs)
        results = [_held(layers, key, name).to(dtype) for key, name in zip(keys, self._names, strict=True)]
        result: Any = results if isinstance(self.layer, list) else results[0]
        if not return_convergence_delta:
            return result
        output = next(reversed(layers.values())).flatten(1).sum(1).to(dtype)  # the target outputs, [B]
        deltas = [self.compute_convergence_delta(relevance, output) for relevance in results]
        return result, deltas if isinstance(self.layer, list) else deltas[0]


def _dtype(inputs: Any) -> torch.dtype:
    first = inputs[0] if isinstance(inputs, tuple) else inputs
    return first.dtype if isinstance(first, torch.Tensor) and first.is_floating_point() else torch.float32


def _held(layers: dict[str, torch.Tensor], key: str, name: str) -> torch.Tensor:
    if key not in layers:
        raise ValueError(f"no relevance reaches layer {name!r}: the target output does not depend on it")
    return layers[key]


def _layer_keys(wrapper: _Bound, names: list[str], to_input: bool) -> list[str]:
    """The node whose relevance is each layer's: its module call (output) or the one tensor it
    reads (input), named as ``fastxai.lrp`` names them (a module called once by its dotted name,
    every other node by its fx name)."""
    graph = _graph.trace(wrapper)
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(str(node.target), []).append(node)
    keys = []
    for name in names:
        found = calls.get(f"model.{name}", [])
        if len(found) != 1:
            raise ValueError(
                f"layer {name!r} is called {len(found)} times by forward; LayerLRP needs one call "
                "(a layer forward does not reach has no relevance, one called twice has two)"
            )
        node = found[0]
        if not to_input:
            keys.append(f"model.{name}")
            continue
        sources = [arg for arg in node.all_input_nodes if arg.op != "get_attr"]
        if len(sources) != 1:
            raise NotImplementedError(
                f"attribute_to_layer_input on layer {name!r}, which reads {len(sources)} tensors: "
                "not implemented (relevance at a layer's single input only)"
            )
        source = sources[0]
        once = source.op == "call_module" and len(calls[str(source.target)]) == 1
        keys.append(str(source.target) if once else source.name)
    return keys
