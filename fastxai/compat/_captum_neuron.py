"""Captum's neuron attribution classes: attributions of one unit of a layer to the inputs.

    from fastxai.compat import captum as fc
    ng = fc.NeuronIntegratedGradients(model, model.layer2)
    attr = ng.attribute(x, neuron_selector=(3, 0, 1), n_steps=32)   # channel 3, position (0, 1)

``neuron_selector`` (Captum's semantics): an int or a tuple of ints and slices indexing the
layer's output without the batch dimension (``h[:, 3]``, ``h[:, 3, 0, 1]``; a selection of
several units is summed per example), or a callable on the layer's output (a tuple of tensors
for a layer with several) returning one value per example [B]. ``attribute_to_neuron_input``
selects from the layer's positional tensor arguments instead.

Construction: a *neuron forward* (``NeuronForward``, an ``nn.Module`` holding the model) runs
the model with a forward hook (pre-hook for the input) on the layer that takes its value and
ends the pass there, and returns the selected neuron ``n(x)`` [N, 1]. Every class is then the
drop-in class of its method on that forward with ``target=0``: ``NeuronGradient`` is
``Saliency(abs=False)``, ``NeuronIntegratedGradients`` ``IntegratedGradients``,
``NeuronGradientShap`` ``GradientShap``, ``NeuronDeepLift`` / ``NeuronDeepLiftShap``
``DeepLift`` / ``DeepLiftShap`` (the baselines' and the inputs' passes both end at the layer,
so the nonlinearities they pair are those before it), ``NeuronFeatureAblation``
``FeatureAblation``: their batching, argument checks and per-example
``additional_forward_args`` are those classes'. The hooks are removed and the model's state
is restored also on error.

A callable that returns one number for the whole batch (``lambda h: torch.sum(h[:, 2:])``, as
Captum's tests write) is applied to each example alone (``torch.func.vmap``): for a sum over the
examples that gives Captum's gradients; ``NeuronFeatureAblation`` then sums its rows into one, as
Captum's ablation of all examples at once does. ``NeuronConductance`` lives in
``_captum_neuron_conductance``, ``NeuronGuidedBackprop`` / ``NeuronDeconvolution`` in
``_captum_neuron_guided``.

Differences from Captum, on purpose: those of the classes underneath (``target=None`` never
arises: the neuron is the output); ``NeuronGradientShap``'s draws come from ``seed=``
(keyword), so they equal Captum's in expectation, not draw for draw; ``NeuronDeepLift`` rescales
functional nonlinearities too and its max-pool rule is exact (``_captum_deeplift``); a
selection that does not fit the layer raises ``NeuronSelectorError`` (a ``ValueError`` that is
also the ``AssertionError`` Captum raises).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastxai._layer_capture import resolve_layer
from fastxai.compat._captum_attribution import GradientAttribution, NeuronAttribution
from fastxai.compat._captum_deeplift import DeepLift, DeepLiftShap
from fastxai.compat._captum_games import PerturbationAttribution
from fastxai.compat._captum_inputs import as_tuple
from fastxai.compat._captum_perturbation import FeatureAblation
from fastxai.compat.captum import (
    Forward,
    GradientShap,
    IntegratedGradients,
    Saliency,
    check_device_ids,
    module_of,
)

Selector = int | tuple[Any, ...] | Callable[..., torch.Tensor]


class NeuronSelectorError(ValueError, AssertionError):
    """``neuron_selector`` does not fit the layer's output. Also an ``AssertionError``, which is
    what Captum raises there (code written against Captum catches it unchanged)."""


class _Stop(Exception):
    """Raised by the neuron hook once the layer's value is taken: the rest of the pass is not needed."""


def check_selector(selector: object) -> Selector:
    """An int, a tuple of ints and slices, or a callable; a TypeError naming the argument otherwise."""
    if callable(selector):
        return selector
    if isinstance(selector, int) and not isinstance(selector, bool):
        return selector
    if (
        isinstance(selector, tuple)
        and selector
        and all((isinstance(i, int) and not isinstance(i, bool)) or isinstance(i, slice) for i in selector)
    ):
        return selector
    raise TypeError(
        "neuron_selector must be an int, a non-empty tuple of ints and slices, or a callable on the "
        f"layer's output returning [batch], got {selector!r}"
    )


def select(values: list[torch.Tensor], selector: Selector, scalar: list[bool] | None = None) -> torch.Tensor:
    """The selected neuron of each example [N]: a unit (or the sum of a selection) of the
    layer's one tensor, or the callable's value on it (on the tuple for several tensors)."""
    if callable(selector):
        chosen = selector(values[0] if len(values) == 1 else tuple(values))
        if not isinstance(chosen, torch.Tensor):
            raise TypeError(f"neuron_selector returned {type(chosen).__name__}, expected a tensor [batch]")
        if chosen.dim() == 0 and scalar is not None:
            scalar.append(True)
        if chosen.dim() == 0 and values[0].shape[0] > 1:
            # One number for the batch (``torch.sum(h)``): the selector on each example alone,
            # which for a sum over examples gives the per-example share of Captum's gradients.
            chosen = torch.func.vmap(lambda *row: selector(_one(row)))(*values)
        elif chosen.dim() == 0:
            chosen = chosen.reshape(1)
    else:
        if len(values) != 1:
            raise NeuronSelectorError(
                f"the layer gives {len(values)} tensors: an index neuron_selector needs one; pass a "
                "callable on the tuple instead"
            )
        index = (selector,) if isinstance(selector, int) else selector
        value = values[0]
        if len(index) > value.dim() - 1:
            raise NeuronSelectorError(
                f"neuron_selector {selector!r} has {len(index)} indices; the layer's output has shape "
                f"{tuple(value.shape[1:])} per example"
            )
        for i, (position, size) in enumerate(zip(index, value.shape[1:], strict=False)):
            if isinstance(position, int) and not -size <= position < size:
                raise NeuronSelectorError(
                    f"neuron_selector index {position} (dimension {i}) is out of range for the layer's "
                    f"output of shape {tuple(value.shape[1:])} per example"
                )
        chosen = value[(slice(None), *index)]
    if chosen.dim() == 0 or chosen.shape[0] != values[0].shape[0]:
        raise NeuronSelectorError(
            f"neuron_selector must give one value per example [{values[0].shape[0]}], got shape "
            f"{tuple(chosen.shape)}"
        )
    return chosen.reshape(chosen.shape[0], -1).sum(1)


def _one(row: tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """One example's layer values with a batch dimension of 1, as the selector takes them."""
    batched = tuple(tensor.unsqueeze(0) for tensor in row)
    return batched[0] if len(batched) == 1 else batched


class LayerTap:
    """A hook on a layer for one forward pass: keeps its output (or positional tensor inputs)
    in the graph; with ``stop`` ends the pass there, else hands the rest of the model clones
    (in-place operations after the layer cannot change the kept values)."""

    def __init__(self, layer: nn.Module, to_input: bool, stop: bool) -> None:
        self.layer, self.to_input, self.stop = layer, to_input, stop
        self.values: list[torch.Tensor] | None = None

    def __enter__(self) -> LayerTap:
        self.values = None
        if self.to_input:
            self.handle = self.layer.register_forward_pre_hook(self._pre_hook)
        else:
            self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _keep(self, tensors: list[torch.Tensor]) -> None:
        if self.values is not None:
            raise ValueError(
                f"layer ({type(self.layer).__name__}) ran more than once in one forward pass; choose a "
                "layer that runs once"
            )
        self.values = tensors
        if self.stop:
            raise _Stop

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        tensors = [output] if isinstance(output, torch.Tensor) else list(output)
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(
                f"layer output must be a tensor or a tuple of tensors, got {type(output).__name__}"
            )
        self._keep(tensors)
        clones = [t.clone() for t in tensors]
        return clones[0] if isinstance(output, torch.Tensor) else type(output)(clones)

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        positions = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        if not positions:
            raise TypeError(f"layer ({type(self.layer).__name__}) has no positional tensor input")
        self._keep([args[i] for i in positions])
        replaced = list(args)
        for i in positions:
            replaced[i] = args[i].clone()
        return tuple(replaced)

    def taken(self) -> list[torch.Tensor]:
        if self.values is None:
            raise ValueError(f"layer ({type(self.layer).__name__}) did not run in the model's forward pass")
        return self.values


class NeuronForward(nn.Module):
    """``forward_func(*args)`` up to the layer, returning the selected neuron [N, 1]."""

    def __init__(self, forward_func: Forward, layer: nn.Module, selector: Selector, to_input: bool) -> None:
        super().__init__()
        self.model = module_of(forward_func)  # a child: the state guard covers it
        self.__dict__["call"] = forward_func
        self.layer, self.selector, self.to_input = layer, selector, to_input
        self.scalar: list[bool] = []  # the callable selector gave one number for the batch

    def forward(self, *args: Any) -> torch.Tensor:
        with LayerTap(self.layer, self.to_input, stop=True) as tap:
            try:
                self.__dict__["call"](*args)
            except _Stop:
                pass
        return select(tap.taken(), self.selector, self.scalar).unsqueeze(1)


class _NeuronMethod(NeuronAttribution):
    """A forward function and a layer of it; ``_neuron`` builds the neuron forward."""

    def __init__(self, forward_func: Forward, layer: nn.Module, device_ids: Any = None) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        check_device_ids(device_ids)
        if isinstance(layer, list):
            raise TypeError("layer must be one nn.Module for a neuron method, got a list")
        model = module_of(forward_func)
        resolved = resolve_layer(model if model is not None else forward_func, layer)
        NeuronAttribution.__init__(self, forward_func, resolved, device_ids)

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def _neuron(self, neuron_selector: object, attribute_to_neuron_input: object) -> NeuronForward:
        if not isinstance(attribute_to_neuron_input, bool):
            raise TypeError(
                f"attribute_to_neuron_input must be a bool, got {type(attribute_to_neuron_input).__name__}"
            )
        selector = check_selector(neuron_selector)
        return NeuronForward(self.forward_func, self.layer, selector, attribute_to_neuron_input)


class NeuronGradient(_NeuronMethod, GradientAttribution):
    """Captum's ``NeuronGradient``: ``d n / d x`` of the selected neuron ``n``."""

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> Any:
        neuron = self._neuron(neuron_selector, attribute_to_neuron_input)
        return Saliency(neuron).attribute(
            inputs, 0, abs=False, additional_forward_args=additional_forward_args
        )


class _MultiplyingNeuronMethod(_NeuronMethod, GradientAttribution):
    def __init__(
        self, forward_func: Forward, layer: nn.Module, device_ids: Any = None, multiply_by_inputs: bool = True
    ) -> None:
        super().__init__(forward_func, layer, device_ids)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class NeuronIntegratedGradients(_MultiplyingNeuronMethod):
    """Captum's ``NeuronIntegratedGradients``: Integrated Gradients of the selected neuron."""

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
    ) -> Any:
        neuron = self._neuron(neuron_selector, attribute_to_neuron_input)
        ig = IntegratedGradients(neuron, multiply_by_inputs=self._multiply_by_inputs)
        return ig.attribute(
            inputs, baselines, 0, additional_forward_args, n_steps=n_steps, method=method,
            internal_batch_size=internal_batch_size,
        )  # fmt: skip


class NeuronGradientShap(_MultiplyingNeuronMethod):
    """Captum's ``NeuronGradientShap``: GradientSHAP of the selected neuron (draws from ``seed``)."""

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        *,
        seed: int | None = None,
    ) -> Any:
        neuron = self._neuron(neuron_selector, attribute_to_neuron_input)
        gs = GradientShap(neuron, multiply_by_inputs=self._multiply_by_inputs)
        return gs.attribute(
            inputs, baselines, n_samples=n_samples, stdevs=stdevs, target=0,
            additional_forward_args=additional_forward_args, seed=seed,
        )  # fmt: skip


class NeuronDeepLift(_MultiplyingNeuronMethod):
    """Captum's ``NeuronDeepLift(model, layer)``: DeepLIFT (Rescale) of the selected neuron."""

    shap = False

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__(model, layer, None, multiply_by_inputs)
        self.model = model

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        neuron = self._neuron(neuron_selector, attribute_to_neuron_input)
        if self.shap:
            if baselines is None:
                raise ValueError("baselines must be given to NeuronDeepLiftShap (a distribution [K, *F])")
            return DeepLiftShap(neuron, multiply_by_inputs=self._multiply_by_inputs).attribute(
                inputs, baselines, 0, additional_forward_args, custom_attribution_func=custom_attribution_func
            )
        return DeepLift(neuron, multiply_by_inputs=self._multiply_by_inputs).attribute(
            inputs, baselines, 0, additional_forward_args, custom_attribution_func=custom_attribution_func
        )


class NeuronDeepLiftShap(NeuronDeepLift):
    """Captum's ``NeuronDeepLiftShap``: DeepLIFT of the neuron averaged over a baseline distribution."""

    shap = True


class NeuronFeatureAblation(_NeuronMethod, PerturbationAttribution):
    """Captum's ``NeuronFeatureAblation``: the neuron's change when each feature (group) is set
    to its baseline."""

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        attribute_to_neuron_input: bool = False,
        perturbations_per_eval: int = 1,
    ) -> Any:
        neuron = self._neuron(neuron_selector, attribute_to_neuron_input)
        result = FeatureAblation(neuron).attribute(
            inputs, baselines, 0, additional_forward_args, feature_mask, perturbations_per_eval
        )
        if not neuron.scalar:
            return result
        # A selector that sums over the batch (one number): Captum ablates each feature in all
        # examples at once, one row of attributions; with independent rows that is the sum.
        parts = tuple(part.sum(0, keepdim=True) for part in as_tuple(result))
        return parts if isinstance(result, tuple) else parts[0]


__all__ = [
    "NeuronDeepLift",
    "NeuronDeepLiftShap",
    "NeuronFeatureAblation",
    "NeuronGradient",
    "NeuronGradientShap",
    "NeuronIntegratedGradients",
]
