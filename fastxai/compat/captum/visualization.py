"""Captum's ``captum.attr.visualization`` for fastxai's drop-in: change the import, keep the code.

    from fastxai.compat.captum import IntegratedGradients, visualization as viz
    attr = IntegratedGradients(model).attribute(x, target=y)
    fig, axis = viz.visualize_image_attr(attr[0].permute(1, 2, 0), x[0].permute(1, 2, 0),
                                         "blended_heat_map", "all", use_pyplot=False)

Same functions, signatures, defaults, return values and pictures as Captum 0.9.0: images
(``visualize_image_attr``, ``visualize_image_attr_multiple``, in
``fastxai.compat._captum_visualization``, where the normalisation is written out; the mask
helpers ``draw_mask_border``, ``draw_mask_legend``, in ``_captum_visualization_masks``), time
series (``visualize_timeseries_attr``, ``_captum_visualization_timeseries``) and text
(``visualize_text``, ``VisualizationDataRecord``, ``format_classname``, ``format_special_tokens``,
``format_tooltip``, ``format_word_importances``, ``_captum_visualization_text``), and the enums
``ImageVisualizationMethod``, ``TimeseriesVisualizationMethod``, ``VisualizeSign``.
matplotlib is imported on first use
(an ImportError naming it when missing); pyplot only with ``use_pyplot=True``.

Differences from Captum, on purpose:

- Attributions and images may be tensors (detached and moved to the CPU); channels still go last.
- Arguments are checked before a figure is made. Where Captum asserts, the error is a
  ``ValueError``/``TypeError`` that is also an ``AssertionError``; an unknown ``method`` or
  ``sign`` is also a ``KeyError`` (Captum's enum look-up). The error names the argument. An
  ``original_image`` whose H, W differ from the attribution's is refused (Captum's documented rule).
- ``method`` and ``sign`` also take the enum members.
- Grey images ([H, W] or [H, W, 1]) work with every method (Captum fails on some).
- ``visualize_text`` works without IPython: it then returns an ``HTMLText`` whose ``.data`` is the
  markup. Words are HTML-escaped; the markup is well-formed (closed rows, legend above the table).
- ``visualize_timeseries_attr`` works with current matplotlib (see its docstring).
"""

from __future__ import annotations

from fastxai.compat._captum_visualization import (
    ImageVisualizationMethod,
    TimeseriesVisualizationMethod,
    VisualizeSign,
    visualize_image_attr,
    visualize_image_attr_multiple,
)
from fastxai.compat._captum_visualization_masks import draw_mask_border, draw_mask_legend
from fastxai.compat._captum_visualization_text import (
    HTMLText,
    VisualizationDataRecord,
    format_classname,
    format_special_tokens,
    format_tooltip,
    format_word_importances,
    visualize_text,
)
from fastxai.compat._captum_visualization_timeseries import visualize_timeseries_attr

__all__ = [
    "HTMLText",
    "ImageVisualizationMethod",
    "TimeseriesVisualizationMethod",
    "VisualizationDataRecord",
    "VisualizeSign",
    "draw_mask_border",
    "draw_mask_legend",
    "format_classname",
    "format_special_tokens",
    "format_tooltip",
    "format_word_importances",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "visualize_text",
    "visualize_timeseries_attr",
]
