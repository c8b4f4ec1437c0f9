"""Captum's ``NeuronConductance`` (Dhamdhere et al. 2018): how much of the target's Integrated
Gradients flows through one neuron, per input feature.

    from fastxai.compat import captum as fc
    attr = fc.NeuronConductance(model, model.layer2).attribute(x, (3, 0, 1), target=y, n_steps=32)

For neuron ``n`` (``neuron_selector`` as in ``_captum_neuron``) and input feature ``x_i``:

    cond_i = (x_i - x'_i) * integral_0^1 dF/dn(p) * dn/dx_i(p) da,   p = x' + a (x - x')

[B, *F] per input (the integral alone with ``multiply_by_inputs=False``). It runs on the path
machinery of Integrated Gradients (``fixed_path``: the steps of a path go through the model
together, ``internal_batch_size`` rows at most) at a site whose "gradient" at a point is that
product: one forward with a hook that keeps the layer's values in the graph, then two backward
passes (``dF/dh`` kept, then ``dn/dx``). The default rule is Captum's ``riemann_trapezoid`` with
Captum's weights; ``additional_forward_args`` with one row per example are repeated with the
path's rows. The hook is removed and the model's state restored also on error.

Differences from Captum: ``target=None`` on a [B, C] output is the predicted class.
"""

from __future__ import annotations

from typing import Any

import torch

from fastxai import _model
from fastxai._rows import RowForward, Rows
from fastxai.attribution import quadrature
from fastxai.attribution.integrated_gradients import fixed_path
from fastxai.compat._captum_inputs import PackedInputs, as_tuple
from fastxai.compat._captum_layer import _chunk
from fastxai.compat._captum_neuron import LayerTap, Selector, _MultiplyingNeuronMethod, check_selector, select
from fastxai.compat.captum import Forward, check_target, module_of, unsupported


class _ConductanceSite:
    """Path points in input space; the "gradient" at a point is ``dF/dn * dn/dx``."""

    def __init__(self, forward: RowForward, packed: PackedInputs, tap: LayerTap, selector: Selector) -> None:
        self.forward, self.packed, self.tap, self.selector = forward, packed, tap, selector
        self.origin = packed.flat

    def gradients(
        self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = points.detach().requires_grad_(True)
        with torch.enable_grad():
            with self.tap:
                output = self.forward.logits(rows, count, (leaf,))
            values = self.tap.taken()
            scores = output.gather(1, target.view(-1, 1)).squeeze(1)
            layer_grads = torch.autograd.grad(
                scores.sum(), values, retain_graph=True, allow_unused=True, materialize_grads=True
            )
            upstream = select(list(layer_grads), self.selector).detach()
            neuron = select(values, self.selector)
            (input_grads,) = torch.autograd.grad(
                neuron.sum(), leaf, allow_unused=True, materialize_grads=True
            )
        return input_grads * upstream.to(input_grads.dtype).unsqueeze(1), scores.detach()

    def scores(self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            output = self.forward.logits(rows, count, (points,))
        return output.gather(1, target.view(-1, 1)).squeeze(1)


class NeuronConductance(_MultiplyingNeuronMethod):
    """Captum's ``NeuronConductance``: ``(x - x') * integral dF_target/dn * dn/dx da`` along the
    straight input path, for the selected neuron ``n`` (``multiply_by_inputs=False``: the integral)."""

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str = "riemann_trapezoid",
        internal_batch_size: int | None = None,
        attribute_to_neuron_input: bool = False,
        grad_kwargs: Any = None,
    ) -> Any:
        if grad_kwargs and set(grad_kwargs) - {"materialize_grads"}:
            raise unsupported(f"grad_kwargs {sorted(set(grad_kwargs) - {'materialize_grads'})}")
        if not isinstance(attribute_to_neuron_input, bool):
            raise TypeError(
                f"attribute_to_neuron_input must be a bool, got {type(attribute_to_neuron_input).__name__}"
            )
        selector = check_selector(neuron_selector)
        quadrature.check_method(method)
        quadrature.check_steps(method, n_steps)
        packed = PackedInputs(inputs)
        zeros = (0.0,) * len(packed.sizes) if packed.is_tuple else 0.0
        baseline = packed.pack(zeros if baselines is None else baselines, name="baselines")
        if baseline.shape[0] not in (1, packed.batch):
            raise ValueError(f"baselines must have 1 or {packed.batch} rows, got {baseline.shape[0]}")
        baseline = baseline.expand(packed.batch, -1).contiguous()
        args = () if additional_forward_args is None else as_tuple(additional_forward_args)
        forward = RowForward(_Unpacking(self.forward_func, packed), (packed.flat,), args)
        target_t = _model.check_target(check_target(target), packed.batch, packed.device)
        chunk = _chunk(internal_batch_size, (packed.flat,))
        tap = LayerTap(self.layer, attribute_to_neuron_input, stop=False)
        site = _ConductanceSite(forward, packed, tap, selector)

        def run() -> torch.Tensor:
            resolved = forward.resolve_target(target_t, chunk)
            result, _ = fixed_path(
                site, baseline, resolved, method, n_steps, chunk, None, False,  # type: ignore[arg-type]
                captum_trapezoid=True, multiply_by_inputs=self._multiply_by_inputs,
            )  # fmt: skip
            return result

        module = module_of(self.forward_func)
        if module is None:
            attributions = run()
        else:
            with _model.preserved_state(module, eval_mode=False):
                attributions = run()
        return packed.format(attributions.to(packed.dtype))


class _Unpacking:
    """``forward_func(*unpack(flat), *args)`` on flat rows (``RowForward`` repeats the
    per-example ``args`` it is given and passes them after the one input)."""

    def __init__(self, forward_func: Forward, packed: PackedInputs) -> None:
        self.forward_func, self.packed = forward_func, packed

    def __call__(self, flat: torch.Tensor, *args: Any) -> Any:
        return self.forward_func(*self.packed.unpack(flat), *args)


__all__ = ["NeuronConductance"]
