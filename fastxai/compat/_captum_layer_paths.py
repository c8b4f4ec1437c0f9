"""Captum's ``LayerGradientShap`` and ``InternalInfluence``: layer gradients at input-space points.

    from fastxai.compat import captum as fc
    attr, delta = fc.LayerGradientShap(model, model.layer2).attribute(
        x, baselines=background, target=y, n_samples=8, return_convergence_delta=True)

Both run the model on points of the *input* space and take the target's gradient at the layer
(``fastxai._layer.LayerSite``: a forward hook keeps the layer's values in the graph, the rows'
per-example ``additional_forward_args`` repeated with them):

- ``LayerGradientShap`` (Lundberg & Lee 2017, GradientSHAP at a layer): per sample ``s`` a
  baseline ``x'_s`` drawn from the given distribution, a noisy input ``x_s = x + sigma z`` and
  a position ``alpha_s ~ U(0, 1)``; the attribution is the mean over samples of
  ``dF/dh(x'_s + alpha_s (x_s - x'_s)) * (h(x_s) - h(x'_s))`` [B, *A] (the mean gradient alone
  with ``multiply_by_inputs=False``); the delta per example and sample [B * n_samples] is
  ``sum(term_s) - (F(x_s) - F(x'_s))``.
- ``InternalInfluence`` (Leino et al. 2018): ``integral_0^1 dF/dh(x' + a (x - x')) da`` [B, *A]
  by Captum's quadrature rules (no multiplication by any difference).

Differences from Captum, on purpose: ``LayerGradientShap``'s draws (baseline indices,
stratified positions, Philox noise) come from ``seed=`` (keyword; None draws one from torch's
generator), not from torch's global generator, so the numbers are equal to Captum's in
expectation, not draw for draw; one noise level for all inputs (different ``stdevs`` per input
are refused); the model batches hold whole copies of the rows (any size works with per-example
``additional_forward_args``); gradients of a layer the output does not use are zeros.
"""

from __future__ import annotations

from typing import Any

import torch

from fastxai import _layer, _scheduling, ops
from fastxai.attribution import quadrature
from fastxai.attribution.gradient_shap import draws
from fastxai.attribution.smoothgrad import _check_seed
from fastxai.compat._captum_attribution import GradientAttribution
from fastxai.compat._captum_inputs import PackedInputs
from fastxai.compat._captum_layer import (
    Layers,
    _check_grad_kwargs,
    _check_inputs,
    _chunk,
    _input_baselines,
    _LayerMethod,
)
from fastxai.compat.captum import Forward, _single_stdev, baseline_distribution


def values_and_scores(
    site: _layer.LayerSite,
    rows: slice,
    count: int,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's values [count * n, *A] at ``inputs`` (``count`` copies of the rows), and the
    target's scores there when ``target`` is given (else the forward stops at the layer)."""
    model, head = site.forward.bound(rows, count, inputs)
    output = None
    with torch.no_grad(), site.slots.hooked("capture", stop=target is None, batch=head.shape[0], ids=head):
        output = model(head)  # with stop, the hook ends the pass at the layer: output stays None
    values = site.slots.flatten(site.slots.collected())
    if target is None or output is None:
        return values, None
    flat = output.reshape(output.shape[0], -1)
    return values, flat.gather(1, target.view(-1, 1)).squeeze(1)


class LayerGradientShap(_LayerMethod, GradientAttribution):
    """Captum's ``LayerGradientShap``: GradientSHAP of a layer's output (or input) with
    input-space baselines, noise and path points (see the module docstring)."""

    def __init__(
        self, forward_func: Forward, layer: Layers, device_ids: Any = None, multiply_by_inputs: bool = True
    ) -> None:
        super().__init__(forward_func, layer, device_ids)
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"multiply_by_inputs must be a bool, got {type(multiply_by_inputs).__name__}")
        self._multiply = multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply

    def attribute(
        self,
        inputs: Any,
        baselines: Any,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        *,
        seed: int | None = None,
    ) -> Any:
        packed = PackedInputs(inputs)  # the points lie in input space: floating-point inputs
        tensors = _check_inputs(inputs)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
        distribution = packed.pack(
            baseline_distribution(baselines, inputs), name="baselines", allow_scalar=False
        )
        sigma = _single_stdev(stdevs, packed)
        if sigma < 0:
            raise ValueError(f"stdevs must be >= 0, got {stdevs!r}")
        seed_value = _check_seed(seed)
        site = self._site(tensors, additional_forward_args, attribute_to_layer_input)
        target_t = self._target(target, tensors)
        chunk = _chunk(None, tensors)
        batch, x = packed.batch, packed.flat
        choices, alphas = draws(distribution.shape[0], n_samples, batch, seed_value)
        choices = choices.to(x.device)
        alphas = alphas.to(device=x.device, dtype=x.dtype)
        sigma_rows = torch.full((batch,), sigma, dtype=torch.float32, device=x.device)

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            site.prepare(chunk)
            origin = site.origin
            acc = torch.float64 if origin.dtype == torch.float64 else torch.float32
            total = torch.zeros(origin.shape, dtype=acc, device=origin.device)
            delta = torch.zeros(n_samples, batch, dtype=acc, device=origin.device)
            resolved = site.forward.resolve_target(target_t, chunk)

            def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
                count, rows, n = sample_stop - sample, slice(row, row_stop), row_stop - row
                if sigma > 0:
                    ends = ops.gaussian_perturb(x[rows], sigma_rows[rows], seed_value, sample, count, row)
                else:
                    ends = x[rows].unsqueeze(0).expand(count, n, x.shape[1])
                starts = distribution[choices[sample:sample_stop, rows]]
                alpha = alphas[sample:sample_stop, rows].unsqueeze(-1)
                points = (starts + alpha * (ends - starts)).reshape(count * n, -1)
                rows_target = resolved[rows].repeat(count)
                grads, _, _ = site.gradients_and_activations(
                    rows, count, rows_target, packed.unpack(points.contiguous())
                )
                wanted = rows_target if return_convergence_delta else None
                end_h, end_f = values_and_scores(
                    site, rows, count, packed.unpack(ends.reshape(count * n, -1)), wanted
                )
                start_h, start_f = values_and_scores(
                    site, rows, count, packed.unpack(starts.reshape(count * n, -1)), wanted
                )
                terms = grads.to(acc) * (end_h - start_h).to(acc) if self._multiply else grads.to(acc)
                total[rows] += terms.view(count, n, *origin.shape[1:]).sum(0)
                if end_f is not None and start_f is not None:
                    gap = terms.reshape(count * n, -1).sum(1) - (end_f - start_f).to(acc)
                    delta[sample:sample_stop, rows] = gap.view(count, n)

            _scheduling.for_each_block(n_samples, batch, chunk, body)
            return total / n_samples, delta.t().reshape(-1)

        attributions, delta = self._run(run)
        result = self._format(site, attributions.to(site.origin.dtype))
        return (result, delta) if return_convergence_delta else result


class InternalInfluence(_LayerMethod, GradientAttribution):
    """Captum's ``InternalInfluence`` (Leino et al. 2018): ``integral dF/dh(x' + a (x - x')) da``
    along the input-space path, by Captum's points and weights for ``method``."""

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        attribute_to_layer_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        _check_grad_kwargs(grad_kwargs)
        quadrature.check_method(method)
        quadrature.check_steps(method, n_steps)
        packed = PackedInputs(inputs)
        tensors = _check_inputs(inputs)
        base = _input_baselines(baselines, tensors)
        starts = packed.pack(base if packed.is_tuple else base[0], name="baselines")
        site = self._site(tensors, additional_forward_args, attribute_to_layer_input)
        target_t = self._target(target, tensors)
        chunk = _chunk(internal_batch_size, tensors)
        alphas, weights = quadrature.points_and_weights(method, n_steps, captum_trapezoid=True)
        x = packed.flat
        alpha_t = torch.tensor(alphas, dtype=x.dtype, device=x.device)

        def run() -> torch.Tensor:
            site.prepare(chunk)
            origin = site.origin
            acc = torch.float64 if origin.dtype == torch.float64 else torch.float32
            total = torch.zeros(origin.shape, dtype=acc, device=origin.device)
            weight_t = torch.tensor(weights, dtype=acc, device=origin.device)
            resolved = site.forward.resolve_target(target_t, chunk)

            def body(step: int, step_stop: int, row: int, row_stop: int) -> None:
                count, rows, n = step_stop - step, slice(row, row_stop), row_stop - row
                points = ops.path_points(x[rows], starts[rows], alpha_t[step:step_stop])
                grads, _, _ = site.gradients_and_activations(
                    rows, count, resolved[rows].repeat(count), packed.unpack(points.reshape(count * n, -1))
                )
                grads = grads.to(acc).view(count, n, -1) * weight_t[step:step_stop].view(count, 1, 1)
                total[rows] += grads.sum(0).view(n, *origin.shape[1:])

            _scheduling.for_each_block(n_steps, packed.batch, chunk, body)
            return total

        attributions = self._run(run)
        return self._format(site, attributions.to(site.origin.dtype))


__all__ = ["InternalInfluence", "LayerGradientShap"]
