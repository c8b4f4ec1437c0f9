"""Which layer a class activation map explains when none is named: ``cam_layer``.

The rule: the last layer, in the order layers finish their forward, whose output still holds the
inputs' spatial grid and whose grid positions reach the score. Read off one forward and one
backward of the first input with a hook on every submodule:

- a layer's output is a grid if it is [B, K, *s] (channels first), [B, *s, K] (channels last,
  timm's Swin and other NHWC models: the map is transposed) or, for images, tokens [B, p + h*w, D]
  (ViT-like; ``p`` leading class/register tokens are dropped), with every grid side > 1 and the
  sides in the inputs' aspect ratio (within a factor 1.5: strided convolutions round). When both
  channel orders fit one output (about as many channels as grid sides), the order of the
  nearest grid output that only one order fits decides; with none, the output is not taken
  (and if nothing else is, ``cam_layer`` raises rather than guess);
- "reaches the score": the gradient of the predicted score is non-zero somewhere on the grid
  (on the patch tokens for tokens). This is what rules out the last blocks of a ViT that
  classifies from its class token, whose patch tokens no longer affect the output;
- among token outputs, a normalisation layer is preferred (the input of the last attention,
  ``blocks[-1].norm1`` in timm, ``ln_1`` in torchvision, ``layernorm_before`` in Hugging Face:
  the usual choice for ViT Grad-CAM) over projections inside the attention;
- a layer must run once per forward and return a tensor; layers that return their input object
  (``nn.Identity``, in-place activations, dropout in eval mode) are skipped, their neighbour
  holds the same values.

So: torchvision ResNet -> ``layer4``, DenseNet -> ``features``, ViT -> the last block's ``ln_1``,
timm Swin -> ``norm`` (channels last), timm ConvNeXt -> ``stages``. On inputs so small that the
last stage is 1x1 (a ResNet at 32x32), the last stage with a 2x2 or larger grid is chosen.

Why a function and not a ``return_layer=`` flag: the choice can be inspected, logged or reused
(``layer=found.module, reshape=found.reshape``) without a second return type on every CAM
method. ``fastxai.cam(..., layer=None)`` calls it, which costs one forward and backward of one
input more.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastxai import _compile, _model
from fastxai._layer_capture import Reshape, resolve_layer
from fastxai._model import Model

LAYOUTS = ("channels_first", "channels_last", "tokens")
_ASPECT_SLACK = 1.5
_MAX_PREFIX_TOKENS = 8


@dataclass(frozen=True)
class CamLayer:
    """The layer ``cam_layer`` chose: its dotted ``name`` and ``module``; ``layout`` (one of
    ``LAYOUTS``); ``grid``, the map's spatial size; ``prefix_tokens``, tokens before the grid
    (layout ``tokens``); ``reshape``, None for channels first, else the function that turns the
    layer's output into [B, K, *grid] (what the CAM methods take as ``reshape``)."""

    name: str
    module: nn.Module
    layout: str
    grid: tuple[int, ...]
    prefix_tokens: int = 0

    @property
    def reshape(self) -> Reshape | None:
        if self.layout == "channels_first":
            return None
        if self.layout == "channels_last":
            return _channels_last_to_first
        return _TokensToGrid(self.prefix_tokens, self.grid)


def _channels_last_to_first(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.movedim(-1, 1)


class _TokensToGrid:
    """[B, p + h*w, D] -> [B, D, h, w], the ``p`` leading tokens dropped."""

    def __init__(self, prefix: int, grid: tuple[int, ...]) -> None:
        self.prefix, self.grid = prefix, grid

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, self.prefix :].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)

    def __repr__(self) -> str:
        return f"tokens_to_grid(prefix={self.prefix}, grid={self.grid})"


def _fits(grid: tuple[int, ...], spatial: tuple[int, ...]) -> bool:
    """A grid of the inputs' spatial shape: every side > 1, at most the input's, one stride."""
    if len(grid) != len(spatial):
        return False
    sides = list(zip(grid, spatial, strict=True))
    if any(side < 2 or side > full for side, full in sides):
        return False
    strides = [full / side for side, full in sides]
    return max(strides) <= _ASPECT_SLACK * min(strides)


def declared_prefix_tokens(model: object) -> int | None:
    """The class, distillation and register tokens ahead of the patch tokens as the model
    declares them (timm's ``num_prefix_tokens``), or None."""
    prefix = getattr(model, "num_prefix_tokens", None)
    return prefix if isinstance(prefix, int) and not isinstance(prefix, bool) and prefix >= 0 else None


def token_grid(
    count: int, spatial: tuple[int, ...], prefix_tokens: int | None = None
) -> tuple[int, tuple[int, int]] | None:
    """(prefix tokens, (h, w)) with ``count = prefix + h*w`` a grid of the image, fewest prefix
    tokens first, the grid closest to the image's aspect ratio. ``prefix_tokens``: the count the
    model declares, tried first (a ViT with 4 registers on 16 patches has 21 tokens, which
    1 + 5x4 would also read; a layer before the prefix tokens are added has none)."""
    height, width = spatial
    counts = list(range(min(_MAX_PREFIX_TOKENS, count - 4) + 1))
    if prefix_tokens is not None:
        counts.insert(0, prefix_tokens)
    for prefix in counts:
        positions = count - prefix
        shapes = [(h, positions // h) for h in range(2, positions // 2 + 1) if positions % h == 0]
        shapes = [shape for shape in shapes if _fits(shape, spatial)]
        if shapes:
            return prefix, min(shapes, key=lambda hw: abs(math.log(height * hw[1] / (width * hw[0]))))
    return None


@dataclass
class _Record:
    name: str
    module: nn.Module
    output: torch.Tensor
    layouts: list[tuple[str, tuple[int, ...], int]]  # candidate readings (layout, grid, prefix)


def _readings(
    output: torch.Tensor, spatial: tuple[int, ...], prefix_tokens: int | None
) -> list[tuple[str, tuple[int, ...], int]]:
    shape = tuple(output.shape)
    readings: list[tuple[str, tuple[int, ...], int]] = []
    if len(shape) == len(spatial) + 2:
        if _fits(shape[2:], spatial):
            readings.append(("channels_first", shape[2:], 0))
        if _fits(shape[1:-1], spatial):
            readings.append(("channels_last", shape[1:-1], 0))
    elif len(shape) == 3 and len(spatial) == 2:
        tokens = token_grid(shape[1], spatial, prefix_tokens)
        if tokens is not None:
            readings.append(("tokens", tokens[1], tokens[0]))
    return readings


def _trace(model: nn.Module, x: torch.Tensor, spatial: tuple[int, ...]) -> list[_Record]:
    """Every submodule's output that could be a grid, in the order the modules finished, each
    module that ran once; and the gradients of the predicted score on them."""
    calls: Counter[int] = Counter()
    finished: list[_Record] = []
    prefix_tokens = declared_prefix_tokens(model)

    def hook(name: str, module: nn.Module, args: Any, output: Any) -> None:
        calls[id(module)] += 1
        if (
            not isinstance(output, torch.Tensor)
            or not output.requires_grad
            or output.dim() < 3
            or output.shape[0] != 1
            or any(output is arg for arg in args)
        ):
            return
        readings = _readings(output, spatial, prefix_tokens)
        if readings:
            finished.append(_Record(name, module, output, readings))

    handles = [
        module.register_forward_hook(lambda m, a, o, name=name: hook(name, m, a, o))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with torch.enable_grad():
            scores = _model.flat_outputs(model, x.detach().requires_grad_(True))
            records = [record for record in finished if calls[id(record.module)] == 1]
            if not records:
                return []
            grads = torch.autograd.grad(
                scores.amax(1).sum(), [record.output for record in records], allow_unused=True
            )
    finally:
        for handle in handles:
            handle.remove()
    reached = []
    for record, grad in zip(records, grads, strict=True):
        prefix = record.layouts[0][2]
        if grad is not None and bool(grad[:, prefix:].ne(0).any()):
            record.output = record.output.detach()
            reached.append(record)
    return reached


def _settle_channel_order(records: list[_Record]) -> None:
    """An output that both channel orders fit takes the order of the nearest output before it
    (after it, if none) that only one fits; with no such output it is dropped."""
    settled = [
        (index, record.layouts[0][0])
        for index, record in enumerate(records)
        if len(record.layouts) == 1 and record.layouts[0][0] != "tokens"
    ]
    for index, record in enumerate(records):
        if len(record.layouts) > 1:
            before = [layout for at, layout in settled if at < index]
            after = [layout for at, layout in settled if at > index]
            layout = before[-1] if before else after[0] if after else None
            record.layouts = [reading for reading in record.layouts if reading[0] == layout]


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def cam_layer(model: Model, inputs: torch.Tensor) -> CamLayer:
    """The layer a class activation map of ``model`` at ``inputs`` [B, C, *S] explains when
    ``layer=None``: the last one whose output keeps the inputs' grid and reaches the score (rules
    in the module docstring). Runs the first input forward and backward once; the model is left
    as found.

    >>> found = fastxai.cam_layer(model, x)  # CamLayer(name='layer4', layout='channels_first', ...)
    >>> heat = fastxai.grad_cam(model, x, layer=found.module, reshape=found.reshape)
    """
    model = _compile.original(model)  # hooks go on the layers of a compiled model's module
    if not isinstance(model, nn.Module):
        raise TypeError(f"choosing a layer needs an nn.Module model, got {type(model).__name__}; pass layer=")
    inputs = _model.check_inputs(inputs)
    if inputs.dim() < 3:
        raise ValueError(
            f"inputs must be [B, C, *spatial] to find a grid layer, got shape {tuple(inputs.shape)}"
        )
    spatial = tuple(inputs.shape[2:])
    with _model.preserved_state(model):
        records = _trace(model, inputs[:1], spatial)
    _settle_channel_order(records)
    records = [record for record in records if record.layouts]
    if not records:
        raise ValueError(
            f"no layer of the model outputs a grid of the inputs' spatial shape {spatial} that reaches "
            "its score (channels first or last with sides > 1, or image tokens; a score that does "
            "not depend on the inputs, as with a zero-initialised head, reaches none); pass layer= "
            "(and reshape=)"
        )
    chosen = records[-1]
    if chosen.layouts[0][0] == "tokens":
        norms = [r for r in records if r.layouts[0][0] == "tokens" and _is_norm(r.module)]
        chosen = norms[-1] if norms else chosen
    layout, grid, prefix = chosen.layouts[0]
    return CamLayer(chosen.name, chosen.module, layout, grid, prefix)


def chosen_layer(
    model: Model, inputs: torch.Tensor, layer: object, reshape: Reshape | None
) -> tuple[torch.nn.Module, Reshape | None]:
    """``layer`` as a module with its ``reshape``; ``layer=None``: what ``cam_layer`` finds."""
    if layer is not None:
        return resolve_layer(model, layer), reshape
    if reshape is not None:
        raise ValueError("reshape needs a named layer; with layer=None it is inferred with the layer")
    found = cam_layer(model, inputs)
    return found.module, found.reshape
