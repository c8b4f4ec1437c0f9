"""A chosen layer of a model: finding it, capturing its activation, upsampling maps of it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastxai._model import Model

Reshape = Callable[[torch.Tensor], torch.Tensor]

INTERPOLATE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")
_SMOOTH_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resolve_layer(model: Model, layer: object) -> nn.Module:
    """``layer`` as a module of ``model``: a submodule or the dotted name of one."""
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
