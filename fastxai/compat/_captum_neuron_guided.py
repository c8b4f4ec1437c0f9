"""Captum's ``NeuronGuidedBackprop`` and ``NeuronDeconvolution``: the modified-ReLU gradient of
one unit of a layer with respect to the inputs.

    from fastxai.compat import captum as fc
    gbp = fc.NeuronGuidedBackprop(model, model.layer2)
    attr = gbp.attribute(x, neuron_selector=(3, 0, 1))   # channel 3, position (0, 1): [B, *F]

For the selected neuron ``n(x)`` (``neuron_selector`` as in ``_captum_neuron``: an int, a tuple
of ints and slices, a selection summed per example, or a callable on the layer's output; with
``attribute_to_neuron_input=True`` on the layer's input) the attribution is ``d n / d x`` with
every ReLU between the inputs and the layer passing back

- ``max(g, 0) * [x > 0]`` (Guided Backpropagation, Springenberg et al. 2015), or
- ``max(g, 0)`` (DeconvNet, Zeiler & Fergus 2014)

for an upstream gradient ``g``. Construction: the neuron forward of ``_captum_neuron`` (the
model run up to the layer, returning ``n`` [B, 1]) under the drop-in ``GuidedBackprop`` /
``Deconvolution`` with ``target=0``: the ReLU rule is ``fastxai.attribution.guided``'s (hooks on
each call's autograd graph, none on the model), and the model's state is restored also on error.

Differences from Captum, on purpose: those of ``GuidedBackprop`` (functional ReLUs are modified
too, not only ``nn.ReLU`` modules); no ReLU between the inputs and the layer raises
``ValueError`` (Captum returns the plain gradient: use ``NeuronGradient`` for that);
``device_ids`` is refused; a selection that does not fit the layer raises
``NeuronSelectorError`` (a ``ValueError`` that is also Captum's ``AssertionError``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fastxai.compat._captum_attribution import GradientAttribution
from fastxai.compat._captum_neuron import _NeuronMethod
from fastxai.compat.captum import Deconvolution, GuidedBackprop

__all__ = ["NeuronDeconvolution", "NeuronGuidedBackprop"]


class _NeuronModifiedRelu(_NeuronMethod, GradientAttribution):
    """A neuron's gradient under a modified ReLU rule (``method``: the drop-in class of that rule)."""

    method: type[GuidedBackprop] | type[Deconvolution] = GuidedBackprop

    def __init__(self, model: nn.Module, layer: nn.Module, device_ids: Any = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__(model, layer, device_ids)
        self.model = model

    def attribute(
        self,
        inputs: Any,
        neuron_selector: Any,
        additional_forward_args: Any = None,
        attribute_to_neuron_input: bool = False,
    ) -> Any:
        """Attributions shaped like ``inputs`` (a tensor [B, *F] or a tuple of them)."""
        neuron = self._neuron(neuron_selector, attribute_to_neuron_input)
        # no ReLU before the layer: the neuron's plain gradient with a warning, as Captum returns it
        return self.method(neuron).attribute(inputs, 0, additional_forward_args)


class NeuronGuidedBackprop(_NeuronModifiedRelu):
    """Captum's ``NeuronGuidedBackprop(model, layer)``: ``d n / d x`` with every ReLU passing
    back ``max(g, 0) * [x > 0]``."""

    method = GuidedBackprop


class NeuronDeconvolution(_NeuronModifiedRelu):
    """Captum's ``NeuronDeconvolution(model, layer)``: ``d n / d x`` with every ReLU passing back
    ``max(g, 0)``."""

    method = Deconvolution
