"""The methods the data set runner (and the command line) apply by name.

One table below the face: ``fastxai.runner`` and ``fastxai.cli`` look methods up here, in the
method packages, instead of in ``fastxai``'s own namespace (which would import upward).

>>> from fastxai._registry import DATASET_METHODS
>>> DATASET_METHODS["saliency"](model, x, target=y)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastxai.attribution import (
    deconvnet,
    feature_ablation,
    grad_cam,
    grad_cam_plus_plus,
    guided_backprop,
    guided_grad_cam,
    hires_cam,
    input_x_gradient,
    integrated_gradients,
    layer_cam,
    occlusion,
    saliency,
    score_cam,
    smoothgrad,
    xgrad_cam,
)
from fastxai.lrp.core import lrp

CAM_METHODS = (
    "grad_cam",
    "grad_cam_plus_plus",
    "xgrad_cam",
    "hires_cam",
    "layer_cam",
    "score_cam",
    "guided_grad_cam",
)
"""The CAM family: each needs the ``layer`` to explain."""

DATASET_METHODS: dict[str, Callable[..., Any]] = {
    "saliency": saliency,
    "input_x_gradient": input_x_gradient,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "lrp": lrp,
    "occlusion": occlusion,
    "feature_ablation": feature_ablation,
    "grad_cam": grad_cam,
    "grad_cam_plus_plus": grad_cam_plus_plus,
    "xgrad_cam": xgrad_cam,
    "hires_cam": hires_cam,
    "layer_cam": layer_cam,
    "score_cam": score_cam,
    "guided_grad_cam": guided_grad_cam,
}
"""Methods the runner can apply: those whose result for an item does not depend on which other
items share its batch (SmoothGrad keys its noise by the item's index). The sampled perturbation
methods (KernelSHAP, LIME, Shapley sampling, GradientSHAP) draw per batch and are left out."""

METHODS = tuple(DATASET_METHODS)
