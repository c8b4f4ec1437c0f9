"""DeepLIFT at a layer: the Rescale multipliers of a target score w.r.t. a layer's values.

The two passes of ``fastxai.deeplift`` (``fastxai.attribution._rescale``) with the layer's
output (or, ``to_input``, its positional tensor arguments) captured in both: ``h'`` in the
baselines' pass (no autograd, the nonlinearities' arguments recorded), ``h`` in the inputs'
pass (each nonlinearity paired with its baseline call, the Rescale rule on its backward). One
backward of the target scores to ``h`` gives the layer multipliers

    m_h = d~ f_target / d h      (the modified chain rule, downstream of the layer only)

and DeepLIFT's attribution at the layer is ``m_h * (h - h')``; it sums to
``f_target(x) - f_target(x')`` for networks of linear maps and the supported nonlinearities
(Shrikumar et al. 2017; Captum's ``LayerDeepLift``). The baselines run with all their rows
(no one-row sharing as in ``deeplift``: the captured ``h'`` is needed row by row).

>>> grads, h, h_ref, difference = layer_multipliers(run, x, x0, Slots([model.fc1]), target)
>>> attribution = grads[0] * (h[0] - h_ref[0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fastxai import _model
from fastxai._layer_capture import Slots
from fastxai.attribution._rescale import PairedMode, RecordMode

Tensor = torch.Tensor
Run = Callable[[Sequence[Tensor]], Tensor]


def _flat(run: Run, tensors: Sequence[Tensor]) -> Tensor:
    output = run(tensors)
    rows = tensors[0].shape[0]
    if not isinstance(output, torch.Tensor) and output is not None:
        output = _model.output_tensor(output)  # transformers' ModelOutput, tuples: the logits
    if not isinstance(output, torch.Tensor) or output.dim() < 1 or output.shape[0] != rows:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ValueError(f"the model must return a tensor [batch ({rows}), ...], got {shape}")
    return output.unsqueeze(1) if output.dim() == 1 else output


def layer_multipliers(
    run: Run,
    inputs: Sequence[Tensor],
    baselines: Sequence[Tensor],
    slots: Slots,
    target: Tensor | None,
    eps: float = 1e-10,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], Tensor]:
    """For inputs and baselines (tuples of [N, ...] tensors, row ``i`` paired with row ``i``)
    and ``target`` from ``_model.check_target`` ([N], [N, k] or None: the predicted class):
    the layer multipliers ``m_h``, the layer values ``h`` and ``h'`` (one tensor per tensor the
    layer gives) and the score differences ``f_target(x) - f_target(x')`` [N].

    ``run(tensors)`` calls the model on a tuple of input tensors; the caller holds the model's
    state guard (``_model.preserved_state``); ``Slots.hooked`` removes its hooks also on error."""
    rows, ids = inputs[0].shape[0], inputs[0]
    if len(slots.axes) < len(slots.layers) and not ids.is_floating_point():
        # The layers' batch axes are found on the inputs' token ids: baseline ids (all pad) can
        # read the same along every axis.
        with torch.no_grad(), slots.hooked("capture", stop=True, batch=rows, ids=ids):
            run(inputs)
        slots.collected()
    record = RecordMode()
    with torch.no_grad(), record, slots.hooked("capture", batch=baselines[0].shape[0], ids=baselines[0]):
        reference = _flat(run, baselines)
    reference_values = slots.collected()
    with torch.enable_grad():
        paired = PairedMode(record.calls, eps)
        with paired, slots.hooked("grad", batch=rows, ids=ids):
            output = _flat(run, [tensor.detach() for tensor in inputs])
        paired.finish()
        values = slots.collected()
        shape = tuple(output.shape[1:])
        index = _model.flat_target(target, shape)  # raises on a bad target, before the backward
        output = output.reshape(output.shape[0], -1)
        reference = reference.reshape(reference.shape[0], -1)
        if index is None:
            index = output.detach().argmax(1)
        scores = output.gather(1, index.view(-1, 1)).squeeze(1)
        if scores.requires_grad:
            grads = torch.autograd.grad(scores.sum(), values, allow_unused=True, materialize_grads=True)
        else:  # the output does not use the layer (nor anything else that needs a gradient)
            grads = tuple(torch.zeros_like(value) for value in values)
    difference = scores.detach() - reference.gather(1, index.view(-1, 1)).squeeze(1)
    return list(grads), [value.detach() for value in values], reference_values, difference


def layer_pairs(
    model: Callable[[Tensor], Tensor],
    layer: nn.Module,
    inputs: Tensor,
    baselines: Tensor,
    target: Tensor | None,
    eps: float,
    multiply_by_inputs: bool,
    chunk: int,
    upcast: bool = False,
    witness: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """``fastxai.deeplift(..., layer=)``: row ``i`` of ``inputs`` against row ``i`` of
    ``baselines`` (both [N, *F]) in chunks of at most ``chunk`` pairs: the attributions at the
    layer's output ``m_h * (h - h')`` (``m_h`` without ``multiply_by_inputs``) [N, *A] and the
    deltas ``sum - (f(x) - f(x'))`` [N] (float64 for float64 inputs, else float32). The caller
    holds the model's state guard. ``upcast`` (``dtype=``, the model under autocast): the layer's
    half-precision values and multipliers are multiplied and summed in float32. ``witness``: the
    model's input embedding for token-id inputs (``Slots``: tells a sequence-first model)."""
    slots = Slots([layer], witness=witness)
    parts, deltas = [], []
    accumulate = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    for start in range(0, inputs.shape[0], chunk):
        rows = slice(start, start + chunk)
        grads, values, references, difference = layer_multipliers(
            lambda tensors: model(tensors[0]),
            (inputs[rows],),
            (baselines[rows],),
            slots,
            None if target is None else target[rows],
            eps,
        )
        if len(values) != 1:
            raise ValueError(
                f"layer ({type(layer).__name__}) outputs {len(values)} tensors; layer= takes a layer "
                "with one output tensor (fastxai.compat.captum.LayerDeepLift takes tuple outputs)"
            )
        grad, value, reference = grads[0], values[0], references[0]
        if upcast:
            grad, value, reference = grad.to(accumulate), value.to(accumulate), reference.to(accumulate)
        part = grad * (value - reference) if multiply_by_inputs else grad
        parts.append(part)
        total = part.reshape(part.shape[0], -1).sum(1, dtype=accumulate)
        deltas.append(total - difference.to(accumulate))
    return torch.cat(parts), torch.cat(deltas)


__all__ = ["layer_multipliers", "layer_pairs"]
