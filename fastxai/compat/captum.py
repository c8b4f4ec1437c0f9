"""Captum-shaped classes on fastxai's methods: change the import, keep the code.

    from fastxai.compat import captum as fc        # was: from captum import attr as fc
    ig = fc.IntegratedGradients(model)
    attr, delta = ig.attribute(x, target=y, n_steps=32, return_convergence_delta=True)

Constructors and ``attribute`` take Captum 0.9's arguments: tuple inputs,
``additional_forward_args`` (per-example tensors are matched to their rows, see
``fastxai.compat._captum_inputs``), ``internal_batch_size`` / ``nt_samples_batch_size`` (the
chunking), ``return_convergence_delta`` for ``IntegratedGradients`` (Captum's sign:
``sum(attr) - (f(x) - f(baseline))``). Deterministic classes give Captum's numbers to float
tolerance. Gradient classes: ``IntegratedGradients``, ``Saliency``, ``InputXGradient``,
``GuidedBackprop``, ``Deconvolution``, ``GradientShap``, ``NoiseTunnel``; layer classes:
``LayerGradCam``, ``GuidedGradCam`` (and ``LayerAttribution.interpolate``); re-exported:
``Occlusion``, ``FeatureAblation``, ``KernelShap``, ``Lime``, ``ShapleyValueSampling``, ``LRP``
(and ``NoiseTunnel`` from ``_captum_noise_tunnel``), loaded on first use.

Differences from Captum, on purpose:

- ``target=None`` on a [B, C] output means the predicted class (Captum raises).
- ``GuidedBackprop``, ``Deconvolution``, ``GuidedGradCam`` modify every ReLU, also functional
  ones (``torch.relu``, ``F.relu``); Captum only ``nn.ReLU`` modules. A model without any
  ReLU raises ``ValueError``.
- Random methods (``GradientShap``, ``NoiseTunnel``) draw from a counter-based generator keyed
  by ``seed`` (an extra keyword of ``attribute``; None draws one from torch's global
  generator): same distribution as Captum, not the same samples.
- The model runs in the mode it is in (like Captum); hooks and ``requires_grad`` are put back.
- Accepted but not honoured is refused with ``NotImplementedError``: ``multiply_by_inputs=False``,
  ``device_ids``, ``grad_kwargs``, ``attribute_to_layer_input=True``,
  ``attr_dim_summation=False``, ``return_convergence_delta`` for ``GradientShap`` and inside
  ``NoiseTunnel``, target tuples (outputs with more than two dimensions).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastxai import _model
from fastxai.attribution import quadrature
from fastxai.attribution._layer_capture import INTERPOLATE_MODES, interpolate
from fastxai.attribution.class_activation import grad_cam
from fastxai.attribution.gradient import input_x_gradient, saliency
from fastxai.attribution.gradient_shap import gradient_shap
from fastxai.attribution.guided import modified_relu_gradient
from fastxai.attribution.integrated_gradients import integrated_gradients
from fastxai.compat._captum_inputs import PackedForward, PackedInputs, chunk_rows

Forward = Callable[..., torch.Tensor]

_LAZY = {
    "Occlusion": "fastxai.compat._captum_perturbation",
    "FeatureAblation": "fastxai.compat._captum_perturbation",
    "KernelShap": "fastxai.compat._captum_perturbation",
    "Lime": "fastxai.compat._captum_perturbation",
    "ShapleyValueSampling": "fastxai.compat._captum_perturbation",
    "LRP": "fastxai.compat._captum_lrp",
    "NoiseTunnel": "fastxai.compat._captum_noise_tunnel",
}


def __getattr__(name: str) -> Any:
    # Lazy: the perturbation and LRP faces live in their own modules and load on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(f"fastxai.compat.captum: {what} is not implemented; use Captum itself for it")


def check_target(target: object) -> object:
    """Captum's target forms, all of which fastxai takes: int, [B] tensor, list of ints, None, and
    for outputs with more than two dimensions a tuple (one element of every example's output)
    or a list of tuples (one per example). Checked by ``fastxai._model.check_target``."""
    return target


def module_of(forward_func: object) -> nn.Module | None:
    """The nn.Module behind a forward function (the module itself or a bound method of one)."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


class Attribution:
    """Base class: the forward function, and running it on packed inputs."""

    def __init__(self, forward_func: Forward) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute_future(self, *args: Any, **kwargs: Any) -> torch.futures.Future:
        """Captum's ``attribute_future``: ``attribute(*args, **kwargs)`` as a completed
        ``torch.futures.Future`` (its value, or the exception ``attribute`` raised)."""
        future: torch.futures.Future = torch.futures.Future()
        try:
            future.set_result(self.attribute(*args, **kwargs))  # type: ignore[attr-defined]
        except Exception as error:
            future.set_exception(error)
        return future

    def _prepare(
        self, inputs: Any, additional_forward_args: Any, internal_batch_size: object = None
    ) -> tuple[PackedInputs, PackedForward, int | None]:
        packed = PackedInputs(inputs)
        forward = packed.forward(self.forward_func, additional_forward_args)
        chunk = chunk_rows(internal_batch_size, packed.flat, whole_batches=forward.has_per_example_args)
        return packed, forward, chunk

    def _run(self, function: Callable[[], Any]) -> Any:
        module = module_of(self.forward_func)
        if module is None:
            return function()
        with _model.preserved_state(module, eval_mode=False):
            return function()


class Saliency(Attribution):
    """Captum's ``Saliency``: ``|d f_target / d x|`` (signed with ``abs=False``)."""

    def attribute(
        self, inputs: Any, target: Any = None, abs: bool = True, additional_forward_args: Any = None
    ) -> Any:
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        grads = self._run(lambda: saliency(forward, packed.flat, target, abs=abs, chunk_size=chunk))
        return packed.format(grads)


class InputXGradient(Attribution):
    """Captum's ``InputXGradient``: ``x * d f_target / d x``."""

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        result = self._run(lambda: input_x_gradient(forward, packed.flat, target, chunk_size=chunk))
        return packed.format(result)


class _ModifiedReluAttribution(Attribution):
    rule = "guided"

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__(model)
        self.model = model

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        grads = self._run(
            lambda: modified_relu_gradient(forward, packed.flat, target, self.rule, chunk)
        )
        return packed.format(grads)


class GuidedBackprop(_ModifiedReluAttribution):
    """Captum's ``GuidedBackprop`` (every ReLU, also functional ones: see the module docstring)."""

    rule = "guided"


class Deconvolution(_ModifiedReluAttribution):
    """Captum's ``Deconvolution`` (DeconvNet rule on every ReLU)."""

    rule = "deconvnet"


class _PathAttribution(Attribution):
    """IntegratedGradients and GradientShap: attributions times (inputs - baselines), with a
    convergence delta; ``multiply_by_inputs=False`` is refused."""

    def __init__(self, forward_func: Forward, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        if not multiply_by_inputs:
            raise unsupported("multiply_by_inputs=False")

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


class IntegratedGradients(_PathAttribution):
    """Captum's ``IntegratedGradients``: the five fixed rules with Captum's points and weights
    (also Captum's ``riemann_trapezoid``, whose weights sum to (n-1)/n)."""

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
    ) -> Any:
        if method not in quadrature.FIXED_METHODS:
            raise ValueError(f"method must be one of {quadrature.FIXED_METHODS}, got {method!r}")
        packed, forward, chunk = self._prepare(inputs, additional_forward_args, internal_batch_size)
        target = check_target(target)
        baseline = 0.0 if baselines is None else packed.pack(baselines, name="baselines")
        if isinstance(baseline, torch.Tensor) and baseline.shape[0] not in (1, packed.batch):
            raise ValueError(f"baselines must have 1 or {packed.batch} rows, got {baseline.shape[0]}")

        def run() -> Any:
            return integrated_gradients(
                forward, packed.flat, baseline, target, n_steps=n_steps, method=method,
                return_convergence_delta=True, chunk_size=chunk,
            )

        attributions, delta = self._run(run)
        if method == "riemann_trapezoid":
            # Captum's trapezoid weights are (n-1)/n times the true rule's: same points, scaled.
            scale = (n_steps - 1) / n_steps
            total = attributions.flatten(1).sum(1).to(delta.dtype)
            attributions = attributions * scale
            delta = delta + (scale - 1) * total
        result = packed.format(attributions)
        return (result, delta) if return_convergence_delta else result


def baseline_distribution(baselines: Any, inputs: Any) -> Any:
    """Captum's callable baselines: called with no argument or with the inputs."""
    if callable(baselines) and not isinstance(baselines, torch.Tensor):
        return baselines() if len(inspect.signature(baselines).parameters) == 0 else baselines(inputs)
    return baselines


class GradientShap(_PathAttribution):
    """Captum's ``GradientShap`` on ``fastxai.gradient_shap``."""

    def attribute(
        self,
        inputs: Any,
        baselines: Any,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        *,
        seed: int | None = None,
    ) -> Any:
        if return_convergence_delta:
            raise unsupported("GradientShap's return_convergence_delta")
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        drawn_from = baseline_distribution(baselines, inputs)
        distribution = packed.pack(drawn_from, name="baselines", allow_scalar=False)
        sigma = _single_stdev(stdevs, packed)
        result = self._run(
            lambda: gradient_shap(
                forward, packed.flat, target, baselines=distribution, n_samples=n_samples, stdevs=sigma,
                seed=seed, chunk_size=chunk,
            )
        )
        return packed.format(result)


def _single_stdev(stdevs: object, packed: PackedInputs) -> float:
    """One noise level for all inputs: a float, or a tuple of equal floats (one per input)."""
    if isinstance(stdevs, tuple):
        if len(stdevs) != len(packed.sizes):
            raise ValueError(f"stdevs must have one value per input ({len(packed.sizes)}), got {len(stdevs)}")
        if len(set(stdevs)) != 1:
            raise unsupported("different stdevs per input for GradientShap")
        stdevs = stdevs[0]
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)):
        raise TypeError(f"stdevs must be a float or a tuple of floats, got {type(stdevs).__name__}")
    return float(stdevs)


class LayerAttribution:
    """Captum's ``LayerAttribution.interpolate`` (the only part of the class kept here)."""

    @staticmethod
    def interpolate(
        layer_attribution: torch.Tensor,
        interpolate_dims: int | tuple[int, ...],
        interpolate_mode: str = "nearest",
    ) -> torch.Tensor:
        size = (interpolate_dims,) if isinstance(interpolate_dims, int) else tuple(interpolate_dims)
        return interpolate(layer_attribution, size, interpolate_mode)


def _check_layer_options(
    device_ids: object = None, attribute_to_layer_input: bool = False, grad_kwargs: object = None
) -> None:
    if device_ids is not None:
        raise unsupported("device_ids (DataParallel)")
    if attribute_to_layer_input:
        raise unsupported("attribute_to_layer_input=True")
    if grad_kwargs:
        raise unsupported("grad_kwargs")


class LayerGradCam(Attribution):
    """Captum's ``LayerGradCam``: ``sum_k mean_s(dF/dA_k) A_k`` -> [B, 1, *S]."""

    def __init__(self, forward_func: Forward, layer: nn.Module, device_ids: Any = None) -> None:
        super().__init__(forward_func)
        _check_layer_options(device_ids)
        self.layer = layer

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: Any = None,
    ) -> torch.Tensor:
        _check_layer_options(None, attribute_to_layer_input, grad_kwargs)
        if not attr_dim_summation:
            raise unsupported("attr_dim_summation=False")
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        return self._run(
            lambda: grad_cam(
                forward, packed.flat, target, layer=self.layer, relu=relu_attributions, chunk_size=chunk
            )
        )


class GuidedGradCam(Attribution):
    """Captum's ``GuidedGradCam``: guided backprop times ReLU'd Grad-CAM interpolated to each input."""

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__(model)
        _check_layer_options(device_ids)
        self.model, self.layer = model, layer

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "nearest",
        attribute_to_layer_input: bool = False,
    ) -> Any:
        _check_layer_options(None, attribute_to_layer_input)
        packed = PackedInputs(inputs)
        for index, shape in enumerate(packed.shapes):
            if len(shape) < 2:
                raise ValueError(f"inputs[{index}] must be [B, C, *spatial] to take Grad-CAM's map")
            if interpolate_mode not in INTERPOLATE_MODES:
                raise ValueError(
                    f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}"
                )
        target = check_target(target)
        whole = packed.forward(self.model, additional_forward_args).has_per_example_args
        chunk = chunk_rows(None, packed.flat, whole_batches=whole)

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            heat = grad_cam(
                packed.forward(self.model, additional_forward_args), packed.flat, target, layer=self.layer,
                chunk_size=chunk,
            )
            grads = modified_relu_gradient(
                packed.forward(self.model, additional_forward_args), packed.flat, target, "guided", chunk
            )
            return heat, grads

        heat, grads = self._run(run)
        parts = tuple(
            part * interpolate(heat, tuple(part.shape[2:]), interpolate_mode) for part in packed.unpack(grads)
        )
        return parts if packed.is_tuple else parts[0]


__all__ = [
    "Attribution",
    "Deconvolution",
    "GradientShap",
    "GuidedBackprop",
    "GuidedGradCam",
    "InputXGradient",
    "IntegratedGradients",
    "LayerAttribution",
    "LayerGradCam",
    "Saliency",
    *_LAZY,
]
