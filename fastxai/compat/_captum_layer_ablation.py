"""Captum's ``LayerFeatureAblation(forward_func, layer)``: feature ablation of a layer's output
(or input), batched.

The layer's values ``A`` (a tensor ``[B, *L]`` or a tuple of them, for a layer with several
outputs or inputs) are read in one forward pass over the inputs. Then ``FeatureAblation`` runs
on ``A`` as if it were the input, with a forward function that runs the model on the inputs
while a hook puts the ablated values in place of the layer's: a model batch of ``k`` copies of
``A`` runs the inputs repeated ``k`` times (copy-major) with the layer's output replaced, so
many ablations go through one forward pass, as for input features::

    from fastxai.compat.captum import LayerFeatureAblation
    attr = LayerFeatureAblation(model, model.conv2).attribute(x, target=y, layer_mask=channel_ids)

``LayerFeaturePermutation`` runs ``FeaturePermutation`` on the layer's output the same way.

``R_j = f_t(x) - f_t(x with layer value group g(j) := baseline)``, in the layer's shape.
``layer_baselines``: None (0), a number, or tensors shaped like one example's layer values.
The hooks are removed and the model left as found, also when a call raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastxai import _model
from fastxai.compat._captum_games import PerturbationAttribution
from fastxai.compat._captum_inputs import as_tuple
from fastxai.compat._captum_permutation import FeaturePermutation
from fastxai.compat._captum_perturbation import FeatureAblation
from fastxai.compat.captum import check_device_ids


class LayerFeatureAblation(PerturbationAttribution):
    """Captum's ``LayerFeatureAblation`` on fastxai's ``FeatureAblation`` (see the module doc)."""

    progress_name = "Layer Feature Ablation"

    def __init__(self, forward_func: Callable[..., Any], layer: nn.Module, device_ids: Any = None) -> None:
        super().__init__(forward_func)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        check_device_ids(device_ids)
        self.layer = layer

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: Any,
        layer_baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: Any = None,
        attribute_to_layer_input: bool = False,
        perturbations_per_eval: int = 1,
    ) -> Any:
        return self._on_layer(
            inputs,
            additional_forward_args,
            attribute_to_layer_input,
            lambda forward, values: FeatureAblation(forward).attribute(
                values,
                baselines=layer_baselines,
                target=target,
                feature_mask=layer_mask,
                perturbations_per_eval=perturbations_per_eval,
            ),
        )

    def _on_layer(
        self,
        inputs: Any,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
        method: Callable[[Callable[..., Any], Any], Any],
    ) -> Any:
        """``method(forward, values)``: an input-space method run on the layer's values, with
        ``forward(*layer_rows)`` the model on the inputs (repeated copy-major to the rows'
        count) with the layer's values replaced by ``layer_rows``."""
        inputs_tuple = as_tuple(inputs)
        extra = () if additional_forward_args is None else as_tuple(additional_forward_args)
        batch = inputs_tuple[0].shape[0]
        module = self.forward_func if isinstance(self.forward_func, nn.Module) else None
        with _model.preserved_state(module, eval_mode=False) if module is not None else _nothing():
            values = self._layer_values(inputs_tuple, extra, attribute_to_layer_input)
            replacement: list[tuple[torch.Tensor, ...] | None] = [None]

            def swap_output(_: nn.Module, __: Any, output: Any) -> Any:
                new = replacement[0]
                assert new is not None
                return new if isinstance(output, tuple) else new[0]

            def swap_input(_: nn.Module, args: tuple[Any, ...]) -> Any:
                new = replacement[0]
                assert new is not None
                return new + tuple(args[len(new) :])

            def forward(*layer_rows: torch.Tensor) -> Any:
                copies = layer_rows[0].shape[0] // batch
                replacement[0] = tuple(layer_rows)
                repeated = tuple(_repeat(value, copies, batch) for value in inputs_tuple)
                repeated_extra = tuple(_repeat(value, copies, batch) for value in extra)
                return self.forward_func(*repeated, *repeated_extra)

            if attribute_to_layer_input:
                handle = self.layer.register_forward_pre_hook(swap_input)
            else:
                handle = self.layer.register_forward_hook(swap_output)
            try:
                result = method(forward, values if len(values) > 1 else values[0])
            finally:
                handle.remove()
        return result

    def _layer_values(
        self, inputs: tuple[Any, ...], extra: tuple[Any, ...], to_input: bool
    ) -> tuple[torch.Tensor, ...]:
        """The layer's output (or its tensor inputs) on the inputs, detached copies."""
        seen: list[tuple[torch.Tensor, ...]] = []

        def keep(values: Any) -> None:
            seen.append(tuple(v.detach().clone() for v in as_tuple(values) if isinstance(v, torch.Tensor)))

        if to_input:
            handle = self.layer.register_forward_pre_hook(lambda _, args: keep(args))
        else:
            handle = self.layer.register_forward_hook(lambda _, __, output: keep(output))
        try:
            with torch.no_grad():
                self.forward_func(*inputs, *extra)
        finally:
            handle.remove()
        if not seen:
            raise ValueError("layer was not called by forward_func on these inputs")
        return seen[0]


class LayerFeaturePermutation(LayerFeatureAblation):
    """Captum's ``LayerFeaturePermutation(forward_func, layer)``: ``FeaturePermutation`` of the
    layer's output, ``R_j = f_t(x) - f_t(x with layer group g(j) permuted across the batch)``,
    the permuted copies batched as for ``LayerFeatureAblation``."""

    progress_name = "Layer Feature Permutation"

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: Any = None,
        perturbations_per_eval: int = 1,
    ) -> Any:
        return self._on_layer(
            inputs,
            additional_forward_args,
            False,
            lambda forward, values: FeaturePermutation(forward).attribute(
                values,
                target=target,
                feature_mask=layer_mask,
                perturbations_per_eval=perturbations_per_eval,
            ),
        )


def _repeat(value: Any, copies: int, batch: int) -> Any:
    """A per-example tensor repeated for ``copies`` copies of the batch (copy-major); anything
    else as given."""
    if copies == 1 or not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
        return value
    return value.repeat(copies, *([1] * (value.dim() - 1)))


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


__all__ = ["LayerFeatureAblation", "LayerFeaturePermutation"]
