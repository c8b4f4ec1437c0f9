"""Captum's ``visualize_timeseries_attr``: attributions over time drawn behind (or as the colour of)
each channel's curve. The normalisation and colour maps are the image view's
(``fastxai.compat._captum_visualization``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fastxai.compat._captum_targets import CaptumArgumentError
from fastxai.compat._captum_visualization import (
    FEATURE,
    TimeseriesVisualizationMethod,
    VisualizeSign,
    add_colorbar,
    as_array,
    check_alpha,
    check_outlier_perc,
    choice,
    new_figure,
    normalize_attr,
    show,
    sign_colormap,
)
from fastxai.visualize import require_matplotlib


def visualize_timeseries_attr(
    attr: np.ndarray | torch.Tensor,
    data: np.ndarray | torch.Tensor,
    x_values: np.ndarray | torch.Tensor | None = None,
    method: str = "overlay_individual",
    sign: str = "absolute_value",
    channel_labels: Sequence[str] | None = None,
    channels_last: bool = True,
    plt_fig_axis: tuple[Any, Any] | None = None,
    outlier_perc: int | float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.7,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size: tuple[int, int] = (6, 6),
    use_pyplot: bool = True,
    **pyplot_kwargs: Any,
) -> tuple[Any, Any]:
    """Captum's ``visualize_timeseries_attr``: a series ``data`` and its attribution ``attr``, both
    [N, C] (time, channel; [C, N] with ``channels_last=False``), at ``x_values`` [N] (default
    0..N-1). ``method``:

    - ``overlay_individual``: one panel per channel, its curve over a band per time step coloured
      by the normalised attribution (opacity ``alpha_overlay``);
    - ``overlay_combined``: every channel in one panel (``channel_labels`` in a legend), the
      bands coloured by the attribution summed over channels;
    - ``colored_graph``: one panel per channel, each segment of the curve coloured by the
      attribution at its start.

    ``sign``, ``outlier_perc``, ``cmap``: as ``visualize_image_attr``. ``pyplot_kwargs`` go to
    the curves (``linewidth=2``). Returns (figure, axis or array of axes).

    Differences from Captum 0.9.0, whose function fails with matplotlib >= 3.9
    (``cm.get_cmap`` is gone): the x range, spacing and colour bar are set on this figure, not on
    pyplot's current one; ``colored_graph`` pads the y range by 10 % of the data's range (Captum
    scales the limits by 1.2, which cuts off the curve of positive data); a legend is drawn only
    when there are labels.

    >>> fig, axes = viz.visualize_timeseries_attr(attr[0], series[0], method="colored_graph",
    ...                                           use_pyplot=False)
    """
    chosen = choice(method, TimeseriesVisualizationMethod, "method")
    chosen_sign = choice(sign, VisualizeSign, "sign")
    outlier_perc = check_outlier_perc(outlier_perc)
    values, series = as_array(attr, "attr"), as_array(data, "data")
    for name, array in (("attr", values), ("data", series)):
        if array.ndim != 2:
            raise CaptumArgumentError(
                f"{name} must be [N, C] (or [C, N] with channels_last=False), got shape {array.shape}"
            )
    if values.shape != series.shape:
        raise CaptumArgumentError(
            f"attr and data must have the same shape, got {values.shape} and {series.shape}"
        )
    if channels_last:
        values, series = values.T, series.T
    channels, length = values.shape
    if channels > length:
        warnings.warn(
            f"{channels} channels but {length} time steps: is channels_last={channels_last} right?",
            stacklevel=2,
        )
    if x_values is None:
        times = np.arange(length)
    else:
        times = as_array(x_values, "x_values")
        if times.ndim != 1 or times.shape[0] != length:
            raise CaptumArgumentError(
                f"x_values must be [N] with N = {length} (the data's), got shape {times.shape}"
            )
    if channel_labels is not None and len(channel_labels) != channels:
        raise CaptumArgumentError(
            f"channel_labels must have one label per channel ({channels}), got {len(channel_labels)}"
        )
    check_alpha(alpha_overlay)
    combined = chosen is TimeseriesVisualizationMethod.overlay_combined
    if combined:
        values = values.sum(axis=0)
    normalized = normalize_attr(values, chosen_sign, outlier_perc)

    panels = 1 if combined else channels
    if plt_fig_axis is None:
        figure, axis = new_figure(fig_size, use_pyplot, nrows=panels, sharex=True)
    else:
        require_matplotlib(FEATURE)
        figure, axis = plt_fig_axis
    axes = list(np.asarray(axis, dtype=object).flat)
    if len(axes) < panels:
        raise CaptumArgumentError(
            f"plt_fig_axis must hold {panels} axes for method {chosen.name!r}, got {len(axes)}"
        )
    matplotlib = require_matplotlib(FEATURE)
    default_cmap, low, high = sign_colormap(chosen_sign)
    colormap = cmap if cmap is not None else default_cmap
    if isinstance(colormap, str):
        colormap = matplotlib.colormaps[colormap]
    scale = matplotlib.colors.Normalize(low, high)

    if chosen is TimeseriesVisualizationMethod.colored_graph:
        _colored_curves(axes, times, series, normalized, channel_labels, colormap, scale, pyplot_kwargs)
    elif combined:
        axes[0].set_prop_cycle(color=matplotlib.colormaps["Dark2"].colors)
        for channel in range(channels):
            label = channel_labels[channel] if channel_labels else None
            axes[0].plot(times, series[channel], label=label, **pyplot_kwargs)
        _bands(axes[0], times, normalized, colormap, scale, alpha_overlay)
        if channel_labels:
            axes[0].legend(loc="best")
    else:
        for channel in range(channels):
            axes[channel].plot(times, series[channel], **pyplot_kwargs)
            if channel_labels is not None:
                axes[channel].set_ylabel(channel_labels[channel])
            _bands(axes[channel], times, normalized[channel], colormap, scale, alpha_overlay)
    if not combined:
        figure.subplots_adjust(hspace=0)
    for panel in axes[:panels]:
        panel.set_xlim(times[0], times[-1])
    if show_colorbar:
        opacity = 1.0 if chosen is TimeseriesVisualizationMethod.colored_graph else alpha_overlay
        mappable = matplotlib.cm.ScalarMappable(norm=scale, cmap=colormap)
        add_colorbar(figure, axes[panels - 1], mappable, pad=0.4, alpha=opacity)
    if title:
        axes[0].set_title(title)
    if use_pyplot:
        show()
    return figure, axis


def _bands(
    axis: Any, times: np.ndarray, weights: np.ndarray, colormap: Any, scale: Any, alpha: float
) -> None:
    """One vertical band per time step, as wide as the first step, coloured by its weight."""
    half = (times[1] - times[0]) / 2 if len(times) > 1 else 0.5
    for centre, weight in zip(times, weights, strict=True):
        axis.axvspan(
            centre - half, centre + half, facecolor=colormap(scale(weight)), edgecolor=None, alpha=alpha
        )


def _colored_curves(
    axes: list[Any],
    times: np.ndarray,
    series: np.ndarray,
    weights: np.ndarray,
    labels: Sequence[str] | None,
    colormap: Any,
    scale: Any,
    pyplot_kwargs: dict[str, Any],
) -> None:
    from matplotlib.collections import LineCollection

    for channel, (axis, curve) in enumerate(zip(axes, series, strict=False)):
        points = np.stack([times, curve], axis=1)
        segments = np.stack([points[:-1], points[1:]], axis=1)
        lines = LineCollection(list(segments), cmap=colormap, norm=scale, **pyplot_kwargs)
        lines.set_array(weights[channel, :-1])  # a segment takes the weight of its first point
        axis.add_collection(lines)
        low, high = float(np.min(curve)), float(np.max(curve))
        margin = 0.1 * (high - low) if high > low else 0.5
        axis.set_ylim(low - margin, high + margin)
        if labels is not None:
            axis.set_ylabel(labels[channel])
