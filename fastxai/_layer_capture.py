"""A chosen layer of a model: finding it, capturing its activation, upsampling maps of it.

``LayerCapture`` keeps one layer's map for the class activation methods; ``Slots`` captures,
takes gradients at or replaces the outputs (or inputs) of one or several layers for the
attribution sites of ``fastxai._layer``."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastxai._compile import original
from fastxai._model import Model

Reshape = Callable[[torch.Tensor], torch.Tensor]

INTERPOLATE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")
_SMOOTH_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resolve_layer(model: Model, layer: object) -> nn.Module:
    """``layer`` as a module of ``model``: a submodule or the dotted name of one (names of a
    compiled model are its original module's: ``"layer4"``, not ``"_orig_mod.layer4"``)."""
    model = original(model)
    if isinstance(layer, str):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"layer given by name ({layer!r}) needs an nn.Module model, got {type(model).__name__}"
            )
        modules = dict(model.named_modules())
        if layer not in modules or layer == "":
            names = [name for name in modules if name]
            shown = ", ".join(repr(name) for name in names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"layer {layer!r} is not a submodule of the model; valid names include {shown}")
        return modules[layer]
    if not isinstance(layer, nn.Module):
        raise TypeError(
            f"layer must be an nn.Module of the model or its dotted name, got {type(layer).__name__}"
        )
    if isinstance(model, nn.Module) and not any(module is layer for module in model.modules()):
        raise ValueError(f"layer ({type(layer).__name__}) is not a submodule of the model")
    return layer


def check_reshape(reshape: object) -> Reshape | None:
    if reshape is not None and not callable(reshape):
        raise TypeError(
            f"reshape must be None or a callable [B, T, D] -> [B, D, H, W], got {type(reshape).__name__}"
        )
    return reshape


def check_upsample(upsample: object, inputs: torch.Tensor) -> str | None:
    """``False`` -> None; ``True`` -> the smooth mode for the inputs' spatial rank; or a mode name."""
    if upsample is False or upsample is None:
        return None
    spatial = inputs.dim() - 2
    if spatial < 1:
        raise ValueError(
            f"upsample needs inputs [B, C, *spatial] to take the size from, got shape {tuple(inputs.shape)}"
        )
    if upsample is True:
        if spatial not in _SMOOTH_MODE:
            raise ValueError(
                f"upsample=True supports 1 to 3 spatial dims, inputs have {spatial}; pass a mode name"
            )
        return _SMOOTH_MODE[spatial]
    if not isinstance(upsample, str) or upsample not in INTERPOLATE_MODES:
        raise ValueError(f"upsample must be a bool or one of {INTERPOLATE_MODES}, got {upsample!r}")
    return upsample


def interpolate(maps: torch.Tensor, size: tuple[int, ...], mode: str) -> torch.Tensor:
    """Maps [N, C, *S] to [N, C, *size], as Captum's ``LayerAttribution.interpolate``."""
    if maps.dim() - 2 != len(size):
        raise ValueError(
            f"cannot upsample a layer map with {maps.dim() - 2} spatial dims to the inputs' spatial "
            f"size {size}; pass upsample=False or a reshape that gives matching dims"
        )
    return F.interpolate(maps, size=size, mode=mode)


class LayerCapture:
    """A forward hook that keeps the layer's output of the current forward.

    The kept activation is handed on as a copy, so in-place operations after the layer
    (``ReLU(inplace=True)``) cannot change it. When nothing before the layer needs a gradient,
    the activation is made a leaf, so the backward stops at the layer.
    """

    def __init__(self, layer: nn.Module, reshape: Reshape | None) -> None:
        self.layer, self.reshape = layer, reshape
        self.activation: torch.Tensor | None = None
        self.expected_rows = 0
        self.handle: Any = None

    def __enter__(self) -> LayerCapture:
        self.handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def start(self, rows: int) -> None:
        self.activation, self.expected_rows = None, rows

    def _hook(self, module: nn.Module, args: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer must output one tensor, got {type(output).__name__}")
        if self.activation is not None:
            raise ValueError("layer ran more than once in one forward pass; choose a layer that runs once")
        shape = tuple(self.reshape(output).shape) if self.reshape is not None else tuple(output.shape)
        if len(shape) < 3 or shape[0] != self.expected_rows:
            hint = "reshape's result" if self.reshape is not None else "the output (pass reshape= for tokens)"
            raise ValueError(
                f"layer output must be [batch={self.expected_rows}, channels, *spatial]; "
                f"{hint} has shape {shape}"
            )
        activation = output if output.requires_grad else output.detach().requires_grad_(True)
        self.activation = activation
        return activation.clone()

    def maps(self, tensor: torch.Tensor) -> torch.Tensor:
        """An activation-shaped tensor as [N, K, *S] float (reshape applied)."""
        tensor = self.reshape(tensor) if self.reshape is not None else tensor
        return tensor.float() if tensor.dtype != torch.float64 else tensor

    def taken(self) -> torch.Tensor:
        if self.activation is None:
            raise ValueError("layer did not run in the model's forward pass")
        return self.activation


class _Stop(Exception):
    """Raised by a capturing hook once every layer's tensors are taken: the rest of the forward
    pass is not needed."""


class Slots:
    """Forward hooks on layers that capture or replace their outputs (or, with ``to_input``,
    their tensor arguments) during one forward pass.

    Modes: ``capture`` keeps detached copies; ``grad`` keeps each tensor to take gradients at
    (a leaf the backward stops at when nothing before it needs a gradient); ``replace`` swaps in
    given leaves (the path or noisy points). The model
    downstream gets a clone of each leaf, so in-place operations after the layer
    (``ReLU(inplace=True)``) cannot change it.
    """

    def __init__(self, layers: Sequence[nn.Module], to_input: bool = False) -> None:
        self.layers, self.to_input = list(layers), to_input
        self.structure: list[int] = []  # tensors per layer, known after the first capture
        self.shapes: list[tuple[int, ...]] = []  # feature shape of each tensor
        self.taken: dict[int, list[torch.Tensor]] = {}
        self._mode, self._stop = "capture", False
        self._values: list[torch.Tensor] = []

    def _name(self, index: int) -> str:
        layer = self.layers[index]
        return (
            f"layer {index} ({type(layer).__name__})"
            if len(self.layers) > 1
            else f"layer ({type(layer).__name__})"
        )

    @contextlib.contextmanager
    def hooked(self, mode: str, values: Sequence[torch.Tensor] = (), stop: bool = False) -> Iterator[None]:
        self._mode, self._values, self._stop, self.taken = mode, list(values), stop, {}
        handles = []
        try:
            for index, layer in enumerate(self.layers):
                if self.to_input:
                    handles.append(layer.register_forward_pre_hook(functools.partial(self._pre_hook, index)))
                else:
                    handles.append(layer.register_forward_hook(functools.partial(self._hook, index)))
            try:
                yield
            except _Stop:
                pass
        finally:
            for handle in handles:
                handle.remove()

    def _exchange(self, index: int, tensors: list[torch.Tensor]) -> list[torch.Tensor] | None:
        if index in self.taken:
            raise ValueError(
                f"{self._name(index)} ran more than once in one forward pass; choose a layer that runs once"
            )
        if self._mode == "capture":
            self.taken[index] = [tensor.detach().clone() for tensor in tensors]
            if self._stop and len(self.taken) == len(self.layers):
                raise _Stop
            return None
        for tensor in tensors:
            if not tensor.is_floating_point():
                raise TypeError(
                    f"{self._name(index)} gives a {tensor.dtype} tensor; gradients need floating point"
                )
        if self._mode == "grad":
            # A tensor that already needs a gradient stays in the graph, so the gradient at an
            # earlier layer of the list still flows through a later one.
            leaves = [
                tensor if tensor.requires_grad else tensor.detach().requires_grad_(True) for tensor in tensors
            ]
        else:
            start = sum(self.structure[:index])
            leaves = self._values[start : start + len(tensors)]
            for leaf, tensor in zip(leaves, tensors, strict=True):
                if leaf.shape != tensor.shape:
                    raise ValueError(
                        f"{self._name(index)} output has shape {tuple(tensor.shape)} in this pass, "
                        f"expected {tuple(leaf.shape)}: its shape must not depend on its values"
                    )
        self.taken[index] = leaves
        return [leaf.clone() for leaf in leaves]

    def _tensors(self, index: int, value: Any, what: str) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
            return list(value)
        raise TypeError(
            f"{self._name(index)} {what} must be a tensor or a tuple of tensors, got {type(value).__name__}"
        )

    def _hook(self, index: int, module: nn.Module, args: Any, output: Any) -> Any:
        new = self._exchange(index, self._tensors(index, output, "output"))
        if new is None:
            return None
        return (
            new[0]
            if isinstance(output, torch.Tensor)
            else type(output)(new)
            if type(output) in (tuple, list)
            else tuple(new)
        )

    def _pre_hook(self, index: int, module: nn.Module, args: tuple[Any, ...]) -> Any:
        positions = [i for i, arg in enumerate(args) if isinstance(arg, torch.Tensor)]
        if not positions:
            raise TypeError(f"{self._name(index)} has no positional tensor input to attribute")
        new = self._exchange(index, [args[i] for i in positions])
        if new is None:
            return None
        replaced = list(args)
        for position, tensor in zip(positions, new, strict=True):
            replaced[position] = tensor
        return tuple(replaced)

    def collected(self) -> list[torch.Tensor]:
        """The tensors taken in the last pass, layer by layer; fixes the structure on first use."""
        missing = [index for index in range(len(self.layers)) if index not in self.taken]
        if missing:
            raise ValueError(f"{self._name(missing[0])} did not run in the model's forward pass")
        tensors = [tensor for index in range(len(self.layers)) for tensor in self.taken[index]]
        if not self.structure:
            self.structure = [len(self.taken[index]) for index in range(len(self.layers))]
            self.shapes = [tuple(tensor.shape[1:]) for tensor in tensors]
        return tensors

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """One tensor as it is; several as one row per example ``[N, sum_k n_k]``."""
        if len(tensors) == 1:
            return tensors[0]
        return torch.cat([tensor.reshape(tensor.shape[0], -1) for tensor in tensors], dim=1)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        if len(self.shapes) == 1:
            return [flat]
        parts = torch.split(flat, [math.prod(shape) for shape in self.shapes], dim=1)
        return [part.view(flat.shape[0], *shape) for part, shape in zip(parts, self.shapes, strict=True)]

    def per_layer(self, flat: torch.Tensor) -> list[torch.Tensor | tuple[torch.Tensor, ...]]:
        """Per layer, its tensor, or a tuple when the layer has several."""
        tensors, result, start = self.unflatten(flat), [], 0
        for count in self.structure:
            part = tensors[start : start + count]
            result.append(part[0] if count == 1 else tuple(part))
            start += count
        return result
