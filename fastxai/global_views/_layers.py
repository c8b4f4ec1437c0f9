"""Reaching inside a model: naming a layer, reading its activations, and the gradient of the
output with respect to them, with hooks that are always removed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fastxai._compile import original
from fastxai._model import Model

_NAMES_SHOWN = 8


def resolve_layer(model: Model, layer: object) -> tuple[nn.Module, str]:
    """The submodule ``layer`` (a module of ``model`` or its dotted name) and its name; a
    compiled model's layers are named as in its original module."""
    model = original(model)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"layer needs model to be an nn.Module (to find the layer in), got {type(model).__name__}"
        )
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer), layer
        except AttributeError:
            shown = ", ".join(repr(name) for name in names[:_NAMES_SHOWN])
            more = f", ... ({len(names)} in all)" if len(names) > _NAMES_SHOWN else ""
            raise ValueError(
                f"layer {layer!r} is not a submodule of the model; valid names: {shown}{more}"
            ) from None
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer:
                return module, name or "<model>"
        raise ValueError(f"layer must be a submodule of the model, got a {type(layer).__name__} outside it")
    raise TypeError(f"layer must be an nn.Module or a dotted module name, got {type(layer).__name__}")


def unit_activations(activation: torch.Tensor) -> torch.Tensor:
    """Per-unit activations [N, U]: a neuron of a [N, F] output, a channel's mean over the
    positions of a [N, C, *spatial] output."""
    if activation.dim() < 2:
        raise ValueError(
            f"the layer's output must be [batch, units, ...], got shape {tuple(activation.shape)}"
        )
    return activation if activation.dim() == 2 else activation.flatten(2).mean(dim=2)


class _StopForward(Exception):
    """Raised by a hook once the layer has run, so the rest of the model is not evaluated."""


def _tensor_output(output: object, name: str) -> torch.Tensor:
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"layer {name!r} must return a tensor, got {type(output).__name__}")
    return output


@contextlib.contextmanager
def _hooked(layer: nn.Module, hook: Callable[..., object]) -> Iterator[None]:
    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def layer_output(model: Model, layer: nn.Module, name: str, inputs: torch.Tensor) -> torch.Tensor:
    """``layer``'s output for ``inputs``, without running the rest of the model (a hook stops the
    forward pass once the layer has run). Under grad mode the output keeps its graph to the inputs."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: object, output: object) -> None:
        captured.append(_tensor_output(output, name))
        raise _StopForward

    with _hooked(layer, hook):
        try:
            model(inputs)
        except _StopForward:
            pass
    if not captured:
        raise ValueError(f"layer {name!r} did not run in the model's forward pass")
    return captured[0]


def output_and_layer_gradient(
    model: Model, layer: nn.Module, name: str, inputs: torch.Tensor, objective: Callable[..., torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward+backward: ``objective(outputs)`` [N], the layer's activation [N, *A] and the
    gradient of ``objective(...).sum()`` with respect to it [N, *A].

    The hook swaps the layer's output for a leaf copy, so the backward pass stops at the layer
    (nothing before it is differentiated) and in-place operations after it cannot touch the
    activation that is returned.
    """
    leaves: list[torch.Tensor] = []

    def hook(_module: nn.Module, _args: object, output: object) -> torch.Tensor:
        if leaves:
            raise ValueError(f"layer {name!r} ran more than once in one forward pass; pick a layer used once")
        leaf = _tensor_output(output, name).detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf.clone()

    with torch.enable_grad(), _hooked(layer, hook):
        outputs = model(inputs)
        if not leaves:
            raise ValueError(f"layer {name!r} did not run in the model's forward pass")
        values = objective(outputs)
        if not values.requires_grad:
            raise ValueError(f"the model's output does not depend on layer {name!r}")
        (gradient,) = torch.autograd.grad(values.sum(), leaves[0])
    return values.detach(), leaves[0].detach(), gradient
