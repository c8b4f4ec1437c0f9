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


def _moved_copy(tensor: torch.Tensor, source: int, destination: int) -> torch.Tensor:
    """A copy of ``tensor`` with axis ``source`` moved to ``destination`` (contiguous when it
    moved): a layer tensor's batch-first view (``axis, 0``), or the layer's own layout for a
    batch-first leaf (``0, axis``)."""
    if source == destination:
        return tensor.clone()
    return tensor.movedim(source, destination).clone(memory_format=torch.contiguous_format)


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

    Batch-first views: a layer tensor whose batch is not dim 0 (sequence-first layers
    ``[T, B, D]``: XLNet, ``nn.TransformerEncoder`` and ``nn.LSTM`` without ``batch_first``)
    is kept, differentiated and replaced as ``tensor.movedim(b, 0)``; the model is fed
    ``leaf.movedim(0, b)``. So everything above sees ``[B, ...]``. Each tensor's batch axis
    ``b`` is found in the first pass (``batch_axis``) and held for the slots' life.
    """

    def __init__(
        self, layers: Sequence[nn.Module], to_input: bool = False, witness: nn.Module | None = None
    ) -> None:
        self.layers, self.to_input = list(layers), to_input
        self.structure: list[int] = []  # tensors per layer, known after the first capture
        self.shapes: list[tuple[int, ...]] = []  # feature shape of each tensor (batch-first view)
        self.axes: dict[int, list[int]] = {}  # batch axis of each tensor of each layer
        self.taken: dict[int, list[torch.Tensor]] = {}
        # ``witness``: the model's input embedding, watched in a first pass over token ids to learn
        # whether the model is sequence-first (``batch_axis``: a layer with T == B is then refused).
        self.witness = witness if witness is not None and all(witness is not m for m in self.layers) else None
        self._ids_axis: int | None = None  # the witness's batch axis (None: not watched)
        self._ids_ambiguous = False  # the witness's ids read alike along several axes
        self._mode, self._stop = "capture", False
        self._values: list[torch.Tensor] = []
        self._batch: int | None = None
        self._ids: torch.Tensor | None = None

    def _name(self, index: int) -> str:
        layer = self.layers[index]
        return (
            f"layer {index} ({type(layer).__name__})"
            if len(self.layers) > 1
            else f"layer ({type(layer).__name__})"
        )

    @contextlib.contextmanager
    def hooked(
        self,
        mode: str,
        values: Sequence[torch.Tensor] = (),
        stop: bool = False,
        *,
        batch: int | None = None,
        ids: torch.Tensor | None = None,
    ) -> Iterator[None]:
        """Hooks for one forward pass of ``batch`` examples (in ``replace`` mode the values' rows);
        ``ids``: the model's token ids of the pass, [batch, ...], when its input is ids."""
        self._mode, self._values, self._stop, self.taken = mode, list(values), stop, {}
        self._batch = values[0].shape[0] if batch is None and values else batch
        self._ids = ids if ids is not None and not ids.is_floating_point() else None
        handles = []
        try:
            for index, layer in enumerate(self.layers):
                if self.to_input:
                    handles.append(layer.register_forward_pre_hook(functools.partial(self._pre_hook, index)))
                else:
                    handles.append(layer.register_forward_hook(functools.partial(self._hook, index)))
            if self.witness is not None and self._ids is not None and len(self.axes) < len(self.layers):
                handles.insert(0, self.witness.register_forward_hook(self._watch))
            try:
                yield
            except _Stop:
                pass
        finally:
            for handle in handles:
                handle.remove()
            self._values, self._ids = [], None

    def _id_axes(self, args: Sequence[Any], tensor: torch.Tensor) -> list[int] | None:
        """The axes ``b`` for which a token-id argument of the layer equals the pass's ids moved to
        ``b`` (``tensor`` starting with its shape); None when no argument is the ids."""
        if self._ids is None:
            return None
        for arg in args:
            if not isinstance(arg, torch.Tensor) or arg.is_floating_point() or arg.dim() != self._ids.dim():
                continue
            if tuple(tensor.shape[: arg.dim()]) != tuple(arg.shape):
                continue
            axes = [
                axis
                for axis in range(arg.dim())
                if arg.shape == self._ids.movedim(0, axis).shape
                and torch.equal(arg, self._ids.movedim(0, axis).to(arg.device))
            ]
            if axes:
                return axes
        return None

    def _watch(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            axes = self._id_axes(args, output)
            if axes is not None and len(axes) == 1:
                self._ids_axis = axes[0]
            elif axes is not None:
                self._ids_ambiguous = True

    def batch_axis(self, index: int, tensor: torch.Tensor, args: Sequence[Any]) -> int:
        """The batch axis of a tensor of layer ``index`` in a first pass of ``batch`` examples.

        Exact where the layer takes the model's token ids (moved to one axis ``b``: its output
        ``[*ids.movedim(0, b).shape, D]``); else dim 0 if its size is the batch, else the one
        axis of that size. Where several axes have the batch's size (T == B), dim 0 stands
        only while nothing shows the model may be sequence-first (its input embedding, the
        ``witness``, seen batch-first, or not watched: float inputs); otherwise the layer is
        refused."""
        shape = tuple(tensor.shape)
        id_axes = self._id_axes(args, tensor)
        if id_axes is not None and len(id_axes) == 1:
            return id_axes[0]
        if self._batch is None:
            raise RuntimeError("Slots.hooked needs batch= in the first pass over a layer")
        candidates = [axis for axis, size in enumerate(shape) if size == self._batch]
        if not candidates:
            raise ValueError(
                f"{self._name(index)} gives a tensor of shape {shape}: no axis has the batch size "
                f"{self._batch}; attributions need a layer with one value per example on one axis"
            )
        if len(candidates) == 1 or self._batch == 1:  # moving an axis of size 1 moves no value
            return candidates[0]
        if candidates[0] == 0 and id_axes is None and self._ids_axis in (None, 0) and not self._ids_ambiguous:
            return 0
        raise ValueError(
            f"{self._name(index)} gives a tensor of shape {shape} whose axes {tuple(candidates)} all "
            f"have the batch size {self._batch}, and the model is (or may be) sequence-first: the "
            "batch axis cannot be told; use a batch size (or chunk_size, the examples per model pass) "
            "that differs from the sequence length"
        )

    def _exchange(
        self, index: int, tensors: list[torch.Tensor], args: Sequence[Any]
    ) -> list[torch.Tensor] | None:
        if index in self.taken:
            raise ValueError(
                f"{self._name(index)} ran more than once in one forward pass; choose a layer that runs once"
            )
        if index not in self.axes:
            self.axes[index] = [self.batch_axis(index, tensor, args) for tensor in tensors]
        axes = self.axes[index]
        if len(axes) != len(tensors):
            raise ValueError(
                f"{self._name(index)} gives {len(tensors)} tensors in this pass, {len(axes)} in the first"
            )
        if self._mode != "replace" and self._batch is not None:
            for axis, tensor in zip(axes, tensors, strict=True):
                if tensor.dim() <= axis or tensor.shape[axis] != self._batch:
                    raise ValueError(
                        f"{self._name(index)} gives a tensor of shape {tuple(tensor.shape)} in this pass: "
                        f"its batch axis {axis} should have size {self._batch}"
                    )
        if self._mode == "capture":
            self.taken[index] = [
                _moved_copy(tensor.detach(), axis, 0) for tensor, axis in zip(tensors, axes, strict=True)
            ]
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
                tensor.movedim(axis, 0)
                if tensor.requires_grad
                else _moved_copy(tensor.detach(), axis, 0).requires_grad_(True)
                for tensor, axis in zip(tensors, axes, strict=True)
            ]
        else:
            start = sum(self.structure[:index])
            leaves = self._values[start : start + len(tensors)]
            for leaf, tensor, axis in zip(leaves, tensors, axes, strict=True):
                if leaf.shape != tensor.movedim(axis, 0).shape:
                    raise ValueError(
                        f"{self._name(index)} output has shape {tuple(tensor.shape)} in this pass, "
                        f"expected {tuple(leaf.movedim(0, axis).shape)}: its shape must not depend on "
                        "its values"
                    )
        self.taken[index] = leaves
        return [_moved_copy(leaf, 0, axis) for leaf, axis in zip(leaves, axes, strict=True)]

    def _tensors(self, index: int, value: Any, what: str) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
            return list(value)
        raise TypeError(
            f"{self._name(index)} {what} must be a tensor or a tuple of tensors, got {type(value).__name__}"
        )

    def _hook(self, index: int, module: nn.Module, args: Any, output: Any) -> Any:
        new = self._exchange(index, self._tensors(index, output, "output"), args)
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
        new = self._exchange(index, [args[i] for i in positions], args)
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
