"""Captum's layer attribution classes on fastxai's layer sites (``fastxai._layer``).

    from fastxai.compat import captum as fc
    lig = fc.LayerIntegratedGradients(model, model.bert.embeddings)
    attr, delta = lig.attribute(ids, baselines=pad_ids, target=1,
                                additional_forward_args=(mask,), return_convergence_delta=True)

``LayerIntegratedGradients``, ``LayerConductance``, ``LayerActivation`` and
``LayerGradientXActivation`` take Captum 0.9's constructors and ``attribute`` arguments: a
layer or a list of layers, ``attribute_to_layer_input`` (the layer's positional tensor
arguments), layers that return a tuple of tensors (a tuple of attributions), inputs of any
dtype (token ids) except for conductance, whose path runs in input space. Results per layer:
a tensor, or a tuple for several tensors; a list for a list of layers, as Captum.

Differences from Captum, on purpose:

- The model runs on the inputs with the layer's values replaced, in model batches of the
  rows' inputs repeated copy-major (``internal_batch_size`` rows at most; any size works,
  also with per-example ``additional_forward_args``).
- Gradients of a layer the output does not use are zeros (Captum needs
  ``grad_kwargs={"materialize_grads": True}`` for that); other ``grad_kwargs`` are refused.
- ``LayerIntegratedGradients``'s delta is completeness at the layer,
  ``sum(attr) - (f(h) - f(h'))``, with the layer's values set to ``h`` and ``h'``; Captum's
  runs the model on the inputs and the baselines, which is the same whenever the output
  depends on the inputs only through the layers.
- ``device_ids`` (DataParallel) is refused with ``NotImplementedError``.
- A sequence-first layer (``[T, B, D]``: ``nn.TransformerEncoder`` without ``batch_first``,
  XLNet) is attributed in its batch-first view: results are ``[B, T, D]`` (Captum's
  ``LayerActivation`` returns the layer's own layout; its path methods expand the batch along
  dim 0, which such a layer does not have), and layer-space baselines are batch-first too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastxai import _layer, _model, _scheduling
from fastxai._layer_capture import resolve_layer
from fastxai.attribution import quadrature
from fastxai.attribution.integrated_gradients import fixed_path
from fastxai.attribution.layer_conductance import check_path, conductance_at, end_scores
from fastxai.compat._captum_attribution import GradientAttribution
from fastxai.compat._captum_inputs import PackedInputs, as_tuple
from fastxai.compat.captum import Attribution, Forward, check_device_ids, check_target, module_of, unsupported

Layers = nn.Module | list[nn.Module]


def _check_inputs(inputs: Any) -> tuple[torch.Tensor, ...]:
    tensors = as_tuple(inputs)
    if not tensors:
        raise ValueError("inputs must be a tensor or a non-empty tuple of tensors, got ()")
    for index, tensor in enumerate(tensors):
        label = f"inputs[{index}]" if isinstance(inputs, tuple) else "inputs"
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() < 1 or tensor.shape[0] != tensors[0].shape[0] or tensor.shape[0] < 1:
            raise ValueError(
                f"{label} must be [batch, ...] with the batch size of inputs[0] ({tensors[0].shape[0]}), "
                f"got shape {tuple(tensor.shape)}"
            )
    return tuple(tensor.detach() for tensor in tensors)


def _input_baselines(baselines: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Captum's baselines in input space (None, a number, [*F], [1, *F] or [B, *F] per input) as [B, *F]."""
    parts = (None,) * len(inputs) if baselines is None else as_tuple(baselines)
    if len(parts) != len(inputs):
        raise ValueError(f"baselines must have {len(inputs)} entries like inputs, got {len(parts)}")
    result = []
    for index, (part, tensor) in enumerate(zip(parts, inputs, strict=True)):
        label = f"baselines[{index}]" if len(inputs) > 1 else "baselines"
        if part is None:
            result.append(torch.zeros_like(tensor))
        elif isinstance(part, (int, float)) and not isinstance(part, bool):
            result.append(torch.full_like(tensor, part))
        elif isinstance(part, torch.Tensor):
            part = part.unsqueeze(0) if part.shape == tensor.shape[1:] else part
            if part.shape[1:] != tensor.shape[1:] or part.shape[0] not in (1, tensor.shape[0]):
                raise ValueError(
                    f"{label} must have shape {tuple(tensor.shape[1:])}, (1, ...) or {tuple(tensor.shape)}, "
                    f"got {tuple(part.shape)}"
                )
            result.append(part.detach().to(device=tensor.device, dtype=tensor.dtype).expand(tensor.shape))
        else:
            raise TypeError(f"{label} must be None, a number or a tensor, got {type(part).__name__}")
    return tuple(result)


def _check_grad_kwargs(grad_kwargs: Any) -> None:
    # Gradients of unused layers are always materialised as zeros; nothing else is honoured.
    if grad_kwargs and set(grad_kwargs) - {"materialize_grads"}:
        raise unsupported(f"grad_kwargs {sorted(set(grad_kwargs) - {'materialize_grads'})}")


def _chunk(internal_batch_size: object, inputs: tuple[torch.Tensor, ...]) -> int:
    if internal_batch_size is not None and (
        isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int)
    ):
        raise TypeError(
            f"internal_batch_size must be an int or None, got {type(internal_batch_size).__name__}"
        )
    if isinstance(internal_batch_size, int) and internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    return _scheduling.auto_chunk_size(internal_batch_size, inputs[0])


class _LayerMethod(Attribution):
    """A forward function and a layer (or a list of layers) of it."""

    def __init__(self, forward_func: Forward, layer: Layers, device_ids: Any = None) -> None:
        super().__init__(forward_func)
        check_device_ids(device_ids)
        layers = layer if isinstance(layer, list) else [layer]
        if not layers:
            raise ValueError("layer must be an nn.Module or a non-empty list of them")
        model = module_of(forward_func)
        self._layers = [resolve_layer(model if model is not None else forward_func, item) for item in layers]
        self.layer = layer

    def _site(
        self, inputs: tuple[torch.Tensor, ...], additional_forward_args: Any, attribute_to_layer_input: bool
    ) -> _layer.LayerSite:
        args = () if additional_forward_args is None else as_tuple(additional_forward_args)
        forward = _layer.RowForward(self.forward_func, inputs, args)
        return _layer.LayerSite(forward, self._layers, to_input=attribute_to_layer_input)

    def _format(self, site: _layer.LayerSite, flat: torch.Tensor) -> Any:
        per_layer = site.slots.per_layer(flat)
        return per_layer if isinstance(self.layer, list) else per_layer[0]

    def _target(self, target: Any, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
        return _model.check_target(check_target(target), inputs[0].shape[0], inputs[0].device)


class LayerActivation(_LayerMethod):
    """Captum's ``LayerActivation``: the layer's output (or inputs) for the inputs."""

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self, inputs: Any, additional_forward_args: Any = None, attribute_to_layer_input: bool = False
    ) -> Any:
        tensors = _check_inputs(inputs)
        site = self._site(tensors, additional_forward_args, attribute_to_layer_input)
        self._run(lambda: site.prepare(_chunk(None, tensors)), leaves_state=True)  # the tap's hook goes
        return self._format(site, site.origin)


class LayerGradientXActivation(_LayerMethod, GradientAttribution):
    """Captum's ``LayerGradientXActivation``: ``h * dF_target/dh`` (the gradient alone with
    ``multiply_by_inputs=False``), one forward and backward."""

    def __init__(
        self, forward_func: Forward, layer: Layers, device_ids: Any = None, multiply_by_inputs: bool = True
    ) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        _check_grad_kwargs(grad_kwargs)
        tensors = _check_inputs(inputs)
        site = self._site(tensors, additional_forward_args, attribute_to_layer_input)
        target_t = self._target(target, tensors)
        chunk = _chunk(None, tensors)

        def run() -> torch.Tensor:
            resolved = site.forward.resolve_target(target_t, chunk)
            parts = []
            for start in range(0, tensors[0].shape[0], chunk):
                rows = slice(start, start + chunk)
                grads, values, _ = site.gradients_and_activations(rows, 1, resolved[rows])
                parts.append(values * grads if self._multiply else grads)
            return torch.cat(parts)

        return self._format(site, self._run(run, leaves_state=True))  # activation gradients only


class LayerIntegratedGradients(_LayerMethod, GradientAttribution):
    """Captum's ``LayerIntegratedGradients``: IG in the layer's space, ``(h - h') * integral
    dF/dh(h' + a (h - h')) da`` with ``h'`` the layer's values at the baselines (Captum's
    points and weights; the path integral alone with ``multiply_by_inputs=False``)."""

    def __init__(
        self, forward_func: Forward, layer: Layers, device_ids: Any = None, multiply_by_inputs: bool = True
    ) -> None:
        super().__init__(forward_func, layer, device_ids)
        self._multiply = multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        _check_grad_kwargs(grad_kwargs)
        quadrature.check_method(method)
        quadrature.check_steps(method, n_steps)
        tensors = _check_inputs(inputs)
        starts = _input_baselines(baselines, tensors)
        site = self._site(tensors, additional_forward_args, attribute_to_layer_input)
        target_t = self._target(target, tensors)
        chunk = _chunk(internal_batch_size, tensors)

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            site.prepare(chunk)
            baseline = site.activations(starts, chunk)
            resolved = site.forward.resolve_target(target_t, chunk)
            return fixed_path(
                site,
                baseline,
                resolved,
                method,
                n_steps,
                chunk,
                None,
                return_convergence_delta,
                captum_trapezoid=True,
                multiply_by_inputs=self._multiply,
            )

        attributions, delta = self._run(run)
        result = self._format(site, attributions.to(site.origin.dtype))
        return (result, delta) if return_convergence_delta else result


class LayerConductance(_LayerMethod, GradientAttribution):
    """Captum's ``LayerConductance`` (``fastxai.attribution.layer_conductance``): the share of
    IG flowing through each unit, ``sum_k dF/dh(x_k) (h(x_{k+1}) - h(x_k))`` along the
    input-space path (``n_steps + 1`` points)."""

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        _check_grad_kwargs(grad_kwargs)
        check_path(method, n_steps)
        packed = PackedInputs(inputs)  # the path runs in input space: floating-point inputs only
        tensors = _check_inputs(inputs)
        base = _input_baselines(baselines, tensors)
        starts = packed.pack(base if packed.is_tuple else base[0], name="baselines")
        site = self._site(tensors, additional_forward_args, attribute_to_layer_input)
        target_t = self._target(target, tensors)
        chunk = _chunk(internal_batch_size, tensors)
        alphas, _ = quadrature.points_and_weights(method, n_steps + 1)

        def run() -> tuple[torch.Tensor, torch.Tensor | None]:
            site.prepare(chunk)
            resolved = site.forward.resolve_target(target_t, chunk)
            result = conductance_at(
                site, packed.flat, starts, packed.unpack, resolved, alphas.tolist(), chunk
            )
            if not return_convergence_delta:
                return result, None
            difference = end_scores(site, starts, packed.unpack, resolved, chunk)
            return result, result.flatten(1).sum(1) - difference.to(result.dtype)

        attributions, delta = self._run(run)
        result = self._format(site, attributions.to(site.origin.dtype))
        return (result, delta) if return_convergence_delta else result


__all__ = ["LayerActivation", "LayerConductance", "LayerGradientXActivation", "LayerIntegratedGradients"]
