"""Captum-shaped classes on fastxai's methods: change the import, keep the code.

    from fastxai.compat import captum as fc        # was: from captum import attr as fc
    ig = fc.IntegratedGradients(model)
    attr, delta = ig.attribute(x, target=y, n_steps=32, return_convergence_delta=True)

Constructors and ``attribute`` take Captum 0.9's arguments: tuple inputs,
``additional_forward_args`` (per-example tensors are matched to their rows, see
``fastxai.compat._captum_inputs``), every target form (``_captum_targets``),
``internal_batch_size`` / ``nt_samples_batch_size`` (the chunking), ``return_convergence_delta``
and ``compute_convergence_delta`` (Captum's sign: ``sum(attr) - (f(x) - f(baseline))``),
``multiply_by_inputs``. Deterministic classes give Captum's numbers to float tolerance. Every
class derives from the bases its Captum counterpart derives from, ``Attribution``,
``GradientAttribution``, ``NeuronAttribution`` (``_captum_attribution``) and
``PerturbationAttribution`` (``_captum_games``), which user code may subclass as with Captum.
Defined here: ``Saliency``, ``InputXGradient``, ``GuidedBackprop``, ``Deconvolution``,
``IntegratedGradients``, ``GradientShap``; one module per family, loaded on first use:
``NoiseTunnel`` (``_captum_noise_tunnel``), ``LayerGradCam``, ``GuidedGradCam``,
``LayerAttribution`` (``_captum_grad_cam``), ``LayerIntegratedGradients``, ``LayerConductance``,
``LayerActivation``, ``LayerGradientXActivation`` (``_captum_layer``), ``DeepLift``,
``DeepLiftShap`` (``_captum_deeplift``), ``Occlusion``, ``FeatureAblation``, ``KernelShap``,
``ShapleyValueSampling`` (``_captum_perturbation``), ``Lime`` (``_captum_lime``), ``LimeBase``
(``_captum_lime_base``),
``LayerFeatureAblation``, ``LayerFeaturePermutation`` (``_captum_layer_ablation``), ``LRP`` (``_captum_lrp``),
``LayerLRP`` (``_captum_layer_lrp``),
``LayerGradientShap``, ``InternalInfluence`` (``_captum_layer_paths``), ``NeuronGradient``,
``NeuronIntegratedGradients``, ``NeuronGradientShap``, ``NeuronDeepLift``,
``NeuronDeepLiftShap``, ``NeuronFeatureAblation`` (``_captum_neuron``), ``NeuronConductance``
(``_captum_neuron_conductance``), ``FeaturePermutation``, ``ShapleyValues``
(``_captum_permutation``), ``LayerDeepLift``, ``LayerDeepLiftShap`` (``_captum_layer_deeplift``),
``NeuronGuidedBackprop``, ``NeuronDeconvolution`` (``_captum_neuron_guided``); the baseline
helpers ``TokenReferenceBase``, ``ProductBaselines`` (``_captum_baselines``);
``DataLoaderAttribution``, ``InputRole`` (``_captum_dataloader``); for language
models ``LLMAttribution``, ``RemoteLLMAttribution`` (``_captum_llm``, scoring in
``_captum_llm_scoring``), ``LLMGradientAttribution`` (``_captum_llm_gradient``),
``LLMAttributionResult`` (``_captum_llm_result``) and the inputs ``InterpretableInput``,
``TextTemplateInput``, ``TextTokenInput`` (``_captum_text_inputs``); the streaming statistics
``Summarizer``, ``SummarizerSingleTensor``, ``ClassSummarizer`` (``_captum_summarizer``) over
``CommonStats()``, ``Count``, ``Mean``, ``MSE``, ``Var``, ``StdDev``, ``Min``, ``Max``, ``Sum``
(base ``Stat``, ``StatValue``: ``_captum_stats``); the interpretable embedding layer
``InterpretableEmbeddingBase``, ``configure_interpretable_embedding_layer``,
``remove_interpretable_embedding_layer`` (``_captum_embedding``). The submodule
``visualization`` is Captum's ``captum.attr.visualization`` (``from fastxai.compat.captum import
visualization as viz``).

Differences from Captum, on purpose:

- ``target=None`` on a [B, C] output means the predicted class (Captum raises).
- ``GuidedBackprop``, ``Deconvolution``, ``GuidedGradCam`` modify every ReLU, also functional
  ones (``torch.relu``, ``F.relu``); Captum only ``nn.ReLU`` modules. A model without any
  ReLU raises ``ValueError``.
- ``IntegratedGradients.attribute`` also takes ``method="adaptive"`` and ``method="exact"``
  (extensions, with keyword-only ``tolerance``, ``max_steps``, ``on_unconverged``,
  ``max_pieces``); Captum refuses them. ``GradientShap.attribute`` takes keyword-only
  ``method="adaptive"`` (with ``tolerance``, ``max_steps``, ``on_unconverged``).
- Random methods (``GradientShap``, ``NoiseTunnel``) draw from a counter-based generator keyed
  by ``seed`` (an extra keyword of ``attribute``; None draws one from torch's global
  generator): same distribution as Captum, not the same samples.
- The model runs in the mode it is in (like Captum); hooks and ``requires_grad`` are put back.
- Accepted but not honoured is refused with ``NotImplementedError`` naming it (``device_ids``).
- Where Captum checks an argument with ``assert``, the error raised is a ``ValueError`` or
  ``TypeError`` that is also an ``AssertionError`` (``fastxai.compat._captum_targets``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from fastxai.attribution import quadrature
from fastxai.attribution.gradient import input_x_gradient, saliency
from fastxai.attribution.gradient_shap import gradient_shap
from fastxai.attribution.guided import modified_relu_gradient
from fastxai.attribution.integrated_gradients import integrated_gradients
from fastxai.compat._captum_attribution import (  # noqa: F401  (the family modules' import)
    Attribution,
    CaptumMethod,
    Forward,
    GradientAttribution,
    NeuronAttribution,
    module_of,
)
from fastxai.compat._captum_inputs import PackedInputs
from fastxai.compat._captum_targets import CaptumTypeError

EXTRA_IG_METHODS = ("adaptive", "exact")
"""``IntegratedGradients.attribute``'s methods beyond Captum's five rules."""

_LAZY = {
    "LayerAttribution": "fastxai.compat._captum_grad_cam",
    "LayerGradCam": "fastxai.compat._captum_grad_cam",
    "GuidedGradCam": "fastxai.compat._captum_grad_cam",
    "Occlusion": "fastxai.compat._captum_perturbation",
    "FeatureAblation": "fastxai.compat._captum_perturbation",
    "FeaturePermutation": "fastxai.compat._captum_permutation",
    "KernelShap": "fastxai.compat._captum_perturbation",
    "Lime": "fastxai.compat._captum_lime",
    "LimeBase": "fastxai.compat._captum_lime_base",
    "PerturbationAttribution": "fastxai.compat._captum_games",
    "ShapleyValueSampling": "fastxai.compat._captum_perturbation",
    "ShapleyValues": "fastxai.compat._captum_permutation",
    "LayerFeatureAblation": "fastxai.compat._captum_layer_ablation",
    "LayerFeaturePermutation": "fastxai.compat._captum_layer_ablation",
    "LRP": "fastxai.compat._captum_lrp",
    "LayerLRP": "fastxai.compat._captum_layer_lrp",
    "NoiseTunnel": "fastxai.compat._captum_noise_tunnel",
    "DeepLift": "fastxai.compat._captum_deeplift",
    "DeepLiftShap": "fastxai.compat._captum_deeplift",
    "LayerIntegratedGradients": "fastxai.compat._captum_layer",
    "LayerConductance": "fastxai.compat._captum_layer",
    "LayerActivation": "fastxai.compat._captum_layer",
    "LayerGradientXActivation": "fastxai.compat._captum_layer",
    "LayerGradientShap": "fastxai.compat._captum_layer_paths",
    "InternalInfluence": "fastxai.compat._captum_layer_paths",
    "NeuronGradient": "fastxai.compat._captum_neuron",
    "NeuronIntegratedGradients": "fastxai.compat._captum_neuron",
    "NeuronGradientShap": "fastxai.compat._captum_neuron",
    "NeuronDeepLift": "fastxai.compat._captum_neuron",
    "NeuronDeepLiftShap": "fastxai.compat._captum_neuron",
    "NeuronFeatureAblation": "fastxai.compat._captum_neuron",
    "NeuronConductance": "fastxai.compat._captum_neuron_conductance",
    "LayerDeepLift": "fastxai.compat._captum_layer_deeplift",
    "LayerDeepLiftShap": "fastxai.compat._captum_layer_deeplift",
    "NeuronGuidedBackprop": "fastxai.compat._captum_neuron_guided",
    "NeuronDeconvolution": "fastxai.compat._captum_neuron_guided",
    "TokenReferenceBase": "fastxai.compat._captum_baselines",
    "ProductBaselines": "fastxai.compat._captum_baselines",
    "DataLoaderAttribution": "fastxai.compat._captum_dataloader",
    "InputRole": "fastxai.compat._captum_dataloader",
    "LLMAttribution": "fastxai.compat._captum_llm",
    "LLMGradientAttribution": "fastxai.compat._captum_llm_gradient",
    "RemoteLLMAttribution": "fastxai.compat._captum_llm",
    "LLMAttributionResult": "fastxai.compat._captum_llm_result",
    "InterpretableInput": "fastxai.compat._captum_text_inputs",
    "TextTemplateInput": "fastxai.compat._captum_text_inputs",
    "TextTokenInput": "fastxai.compat._captum_text_inputs",
    "Summarizer": "fastxai.compat._captum_summarizer",
    "SummarizerSingleTensor": "fastxai.compat._captum_summarizer",
    "ClassSummarizer": "fastxai.compat._captum_summarizer",
    "CommonStats": "fastxai.compat._captum_stats",
    "Stat": "fastxai.compat._captum_stats",
    "StatValue": "fastxai.compat._captum_stats",
    "Count": "fastxai.compat._captum_stats",
    "Mean": "fastxai.compat._captum_stats",
    "MSE": "fastxai.compat._captum_stats",
    "Var": "fastxai.compat._captum_stats",
    "StdDev": "fastxai.compat._captum_stats",
    "Min": "fastxai.compat._captum_stats",
    "Max": "fastxai.compat._captum_stats",
    "Sum": "fastxai.compat._captum_stats",
    "InterpretableEmbeddingBase": "fastxai.compat._captum_embedding",
    "configure_interpretable_embedding_layer": "fastxai.compat._captum_embedding",
    "remove_interpretable_embedding_layer": "fastxai.compat._captum_embedding",
}


def __getattr__(name: str) -> Any:
    # Lazy: the perturbation and LRP faces live in their own modules and load on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "visualization":  # captum.attr.visualization: the submodule, as an attribute too
        import importlib

        return importlib.import_module(f"{__name__}.visualization")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(f"fastxai.compat.captum: {what} is not implemented; use Captum itself for it")


def check_device_ids(device_ids: object) -> None:
    """Captum's ``device_ids`` (DataParallel) is refused: fastxai runs the model as given."""
    if device_ids is not None:
        raise unsupported("device_ids (DataParallel)")


def check_target(target: object) -> object:
    """Captum's target forms, all of which fastxai takes: int, [B] tensor, list of ints, None, and
    for outputs with more than two dimensions a tuple (one element of every example's output)
    or a list of tuples (one per example). Checked by ``fastxai._model.check_target``."""
    return target


class Saliency(GradientAttribution):
    """Captum's ``Saliency``: ``|d f_target / d x|`` (signed with ``abs=False``)."""

    def attribute(
        self, inputs: Any, target: Any = None, abs: bool = True, additional_forward_args: Any = None
    ) -> Any:
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        grads = self._run(
            lambda: saliency(forward, packed.flat, target, abs=abs, chunk_size=chunk),
            leaves_state=True,
        )
        return packed.format(grads)


class InputXGradient(GradientAttribution):
    """Captum's ``InputXGradient``: ``x * d f_target / d x``."""

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        result = self._run(
            lambda: input_x_gradient(forward, packed.flat, target, chunk_size=chunk),
            leaves_state=True,
        )
        return packed.format(result)


class _ModifiedReluAttribution(GradientAttribution):
    rule = "guided"

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__(model)
        self.model = model

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None) -> Any:
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        # the rule hooks the relu nodes of each forward's graph, never a module
        grads = self._run(
            lambda: modified_relu_gradient(forward, packed.flat, target, self.rule, chunk, no_relu="warn"),
            leaves_state=True,
        )
        return packed.format(grads)


class GuidedBackprop(_ModifiedReluAttribution):
    """Captum's ``GuidedBackprop`` (every ReLU, also functional ones: see the module docstring).
    A model without a ReLU (ConvNeXt, ViT) gets the plain gradient with a ``UserWarning``, as
    Captum returns it (``fastxai.guided_backprop`` refuses it)."""

    rule = "guided"


class Deconvolution(_ModifiedReluAttribution):
    """Captum's ``Deconvolution`` (DeconvNet rule on every ReLU)."""

    rule = "deconvnet"


class _PathAttribution(GradientAttribution):
    """IntegratedGradients and GradientShap: attributions times (inputs - baselines) unless
    ``multiply_by_inputs=False`` (Captum's "local" variant), with a convergence delta."""

    def __init__(self, forward_func: Forward, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
        self._multiply_by_inputs = multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


class IntegratedGradients(_PathAttribution):
    """Captum's ``IntegratedGradients``: the five fixed rules with Captum's points and weights
    (also Captum's ``riemann_trapezoid``, whose weights sum to (n-1)/n).

    Extension: ``method="adaptive"`` (nested Gauss panels refined until the completeness error
    is within ``tolerance``, ``n_steps`` unused: see ``fastxai.integrated_gradients``) and
    ``method="exact"`` (piecewise-linear networks: the sum over the path's linear pieces), with
    the keyword-only ``tolerance``, ``max_steps``, ``on_unconverged`` and ``max_pieces``.

    >>> ig = IntegratedGradients(model)
    >>> attr, delta = ig.attribute(x, target=y, method="adaptive", tolerance=1e-3,
    ...                            return_convergence_delta=True)
    """

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
        *,
        tolerance: float = 1e-3,
        max_steps: int = 1025,
        on_unconverged: str = "warn",
        max_pieces: int = 4096,
    ) -> Any:
        methods = (*quadrature.FIXED_METHODS, *EXTRA_IG_METHODS)
        if method not in methods:
            raise ValueError(f"method must be one of {methods}, got {method!r}")
        packed, forward, chunk = self._prepare(inputs, additional_forward_args, internal_batch_size)
        target = check_target(target)
        baseline = 0.0 if baselines is None else packed.pack(baselines, name="baselines")
        if isinstance(baseline, torch.Tensor) and baseline.shape[0] not in (1, packed.batch):
            raise ValueError(f"baselines must have 1 or {packed.batch} rows, got {baseline.shape[0]}")

        def run() -> Any:
            return integrated_gradients(
                forward, packed.flat, baseline, target, n_steps=n_steps, method=method,
                multiply_by_inputs=self._multiply_by_inputs, chunk_size=chunk, tolerance=tolerance,
                max_steps=max_steps, on_unconverged=on_unconverged, max_pieces=max_pieces,
            )

        attributions = self._run(run, leaves_state=method != "exact")  # exact taps layers
        if method == "riemann_trapezoid":
            # Captum's trapezoid weights are (n-1)/n times the true rule's: same points, scaled.
            attributions = attributions * ((n_steps - 1) / n_steps)
        result = packed.format(attributions)
        if not return_convergence_delta:
            return result
        start = packed.format(baseline) if isinstance(baseline, torch.Tensor) else None  # None: zero
        return result, self._run(
            lambda: self.compute_convergence_delta(result, start, inputs, target, additional_forward_args)
        )


def baseline_distribution(baselines: Any, inputs: Any) -> Any:
    """Captum's callable baselines: called with no argument or with the inputs."""
    if callable(baselines) and not isinstance(baselines, torch.Tensor):
        drawn = baselines() if len(inspect.signature(baselines).parameters) == 0 else baselines(inputs)
        parts = drawn if isinstance(drawn, tuple) else (drawn,)
        if not all(isinstance(part, (torch.Tensor, int, float)) for part in parts):
            raise CaptumTypeError(
                f"baselines() must return a tensor or a tuple of tensors, got {type(drawn).__name__}"
            )
        return drawn
    return baselines


class GradientShap(_PathAttribution):
    """Captum's ``GradientShap`` on ``fastxai.gradient_shap``.

    Extension: ``method="adaptive"`` replaces each sample's random point on its path by the
    whole path, integrated by adaptive IG to ``tolerance`` (``max_steps``, ``on_unconverged``;
    see ``fastxai.gradient_shap``): with ``stdevs=0`` that is Expected Gradients over the drawn
    baselines without the sampling error along the path.

    >>> gs = GradientShap(model)
    >>> attr = gs.attribute(x, baselines=background, n_samples=8, target=y, method="adaptive")
    """

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
        method: str = "sampled",
        tolerance: float = 1e-3,
        max_steps: int = 1025,
        on_unconverged: str = "warn",
    ) -> Any:
        packed, forward, chunk = self._prepare(inputs, additional_forward_args)
        target = check_target(target)
        drawn_from = baseline_distribution(baselines, inputs)
        distribution = packed.pack(drawn_from, name="baselines", allow_scalar=False)
        sigma = _single_stdev(stdevs, packed)
        result = self._run(
            lambda: gradient_shap(
                forward, packed.flat, target, baselines=distribution, n_samples=n_samples, stdevs=sigma,
                seed=seed, multiply_by_inputs=self._multiply_by_inputs,
                return_convergence_delta=return_convergence_delta, chunk_size=chunk, method=method,
                tolerance=tolerance, max_steps=max_steps, on_unconverged=on_unconverged,
            ),
            leaves_state=True,
        )
        if not return_convergence_delta:
            return packed.format(result)
        attributions, delta = result
        return packed.format(attributions), delta.reshape(-1)  # Captum's order: example-major


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


__all__ = [
    "Attribution",
    "Deconvolution",
    "GradientAttribution",
    "GradientShap",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "NeuronAttribution",
    "Saliency",
    "visualization",
    *_LAZY,
]
