"""Captum's image visualisation (``captum.attr.visualization``): attributions drawn as heat maps,
over the image, as a mask or as the image's opacity; the normalisation that the time-series view
shares. The public face is ``fastxai.compat.captum.visualization``.

Normalisation, for a 2-d map ``a`` (an [H, W, C] attribution is summed over C first):

1. keep the chosen sign: ``all`` keeps ``a``, ``positive`` ``max(a, 0)``, ``negative``
   ``min(a, 0)``, ``absolute_value`` ``|a|``;
2. the scale ``t``: sort ``|a|`` ascending; ``t`` is the first value at which the running sum
   reaches ``(100 - outlier_perc)`` % of the total. The largest values, which together carry
   ``outlier_perc`` % of the attribution, saturate;
3. ``clip(a / t, -1, 1)`` (``a / -t`` for ``negative``, so that the map is in [0, 1]).

Colour maps by sign, unless ``cmap`` is given: ``all`` red-white-green on [-1, 1], ``positive``
``Greens``, ``negative`` ``Reds``, ``absolute_value`` ``Blues``, on [0, 1].
"""

from __future__ import annotations

import enum
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from fastxai.compat._captum_targets import CaptumArgumentError, CaptumTypeError
from fastxai.visualize import require_matplotlib

FEATURE = "fastxai.compat.captum.visualization"


class ImageVisualizationMethod(enum.Enum):
    heat_map = 1
    blended_heat_map = 2
    original_image = 3
    masked_image = 4
    alpha_scaling = 5


class TimeseriesVisualizationMethod(enum.Enum):
    overlay_individual = 1
    overlay_combined = 2
    colored_graph = 3


class VisualizeSign(enum.Enum):
    positive = 1
    absolute_value = 2
    negative = 3
    all = 4


class CaptumChoiceError(CaptumArgumentError, KeyError):
    """An unknown ``method`` or ``sign``: Captum looks the name up in its enum (``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


Choice = TypeVar("Choice", bound=enum.Enum)


def choice(value: object, kind: type[Choice], name: str) -> Choice:
    """The member of ``kind`` that ``value`` names (a string, or the member itself)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and value in kind.__members__:
        return kind[value]
    names = ", ".join(kind.__members__)
    raise CaptumChoiceError(f"{name} must be one of {names}, got {value!r}")


def check_outlier_perc(outlier_perc: object) -> float:
    if isinstance(outlier_perc, bool) or not isinstance(outlier_perc, numbers.Real):
        raise CaptumTypeError(f"outlier_perc must be a number in [0, 100], got {outlier_perc!r}")
    if not 0 <= float(outlier_perc) <= 100:
        raise CaptumArgumentError(f"outlier_perc must be in [0, 100], got {outlier_perc!r}")
    return float(outlier_perc)


def as_array(value: object, name: str) -> np.ndarray:
    """A numpy view of an array or a tensor (detached, on the CPU; 16-bit floats as float32).
    Other dtypes are kept: Captum computes in the attribution's own dtype."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise CaptumTypeError(f"{name} must be a numpy array or a torch.Tensor, got {type(value).__name__}")


def outlier_threshold(magnitudes: np.ndarray, percentile: float) -> Any:
    """The value of ``magnitudes`` (>= 0) at which their ascending running sum first reaches
    ``percentile`` % of the total."""
    ordered = np.sort(magnitudes, axis=None)
    running = np.cumsum(ordered)
    reached = running >= running[-1] * (percentile / 100)
    return ordered[int(np.argmax(reached))]


def normalize_attr(attr: np.ndarray, sign: VisualizeSign, outlier_perc: float) -> np.ndarray:
    """``attr`` of the chosen sign, divided by its outlier threshold and clipped to [-1, 1]."""
    if sign is VisualizeSign.positive:
        attr = np.maximum(attr, 0)
    elif sign is VisualizeSign.negative:
        attr = np.minimum(attr, 0)
    elif sign is VisualizeSign.absolute_value:
        attr = np.abs(attr)
    scale = outlier_threshold(np.abs(attr), 100 - outlier_perc)
    if sign is VisualizeSign.negative:
        scale = -scale
    if scale == 0:
        raise CaptumArgumentError(
            f"attr has no {sign.name} value to scale by with outlier_perc={outlier_perc:g} "
            "(Captum: cannot normalize by scale factor = 0); choose another sign"
        )
    if abs(scale) < 1e-5:
        warnings.warn(
            f"the attributions' scale is {float(scale):.3g}, close to 0: the picture may mislead",
            stacklevel=3,
        )
    return np.clip(attr / scale, -1, 1)


def sign_colormap(sign: VisualizeSign) -> tuple[Any, float, float]:
    """The default colour map of ``sign`` and its value range."""
    if sign is VisualizeSign.all:
        colors = require_matplotlib(FEATURE).colors
        return colors.LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"]), -1.0, 1.0
    named = {VisualizeSign.positive: "Greens", VisualizeSign.negative: "Reds"}
    return named.get(sign, "Blues"), 0.0, 1.0


def new_figure(fig_size: Any, use_pyplot: bool, **subplots: Any) -> tuple[Any, Any]:
    """A figure and its axes: through pyplot (shown by the caller) or a bare ``Figure``."""
    require_matplotlib(FEATURE)
    if use_pyplot:
        import matplotlib.pyplot as plt

        return plt.subplots(figsize=fig_size, **subplots)
    from matplotlib.figure import Figure

    figure = Figure(figsize=fig_size)
    return figure, figure.subplots(**subplots)


def show() -> None:
    import matplotlib.pyplot as plt

    plt.show()


def add_colorbar(figure: Any, axis: Any, mappable: Any, pad: float, **options: Any) -> Any:
    """A horizontal colour bar under ``axis``; with no ``mappable`` an empty, hidden slot of the
    same size, so that panels with and without a bar stay aligned."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    slot = make_axes_locatable(axis).append_axes("bottom", size="5%", pad=pad)
    if mappable is None:
        slot.axis("off")
        return slot
    return figure.colorbar(mappable, orientation="horizontal", cax=slot, **options)


def to_bytes(image: np.ndarray) -> np.ndarray:
    """Integers in [0, 255] (truncated, as Captum does) for display."""
    return np.clip(image.astype(np.int64), 0, 255)


_ONE_SIGN_METHODS = (ImageVisualizationMethod.masked_image, ImageVisualizationMethod.alpha_scaling)


def check_alpha(alpha_overlay: object) -> None:
    if (
        isinstance(alpha_overlay, bool)
        or not isinstance(alpha_overlay, numbers.Real)
        or not 0 <= float(alpha_overlay) <= 1
    ):
        raise CaptumArgumentError(f"alpha_overlay must be a number in [0, 1], got {alpha_overlay!r}")


def _shown_image(original_image: object, attr: np.ndarray, method: ImageVisualizationMethod) -> np.ndarray:
    """The image as drawn: checked against the attribution's [H, W], in 0-255 (an image with
    values in [0, 1] is scaled)."""
    if original_image is None:
        raise ValueError(
            f"original_image must be given for method {method.name!r} (only heat_map draws without it)"
        )
    image = as_array(original_image, "original_image")
    if image.ndim not in (2, 3) or image.shape[:2] != attr.shape:
        raise CaptumArgumentError(
            f"original_image must be [H, W, C] or [H, W] with the attribution's H, W {attr.shape}, "
            f"got shape {image.shape} (channels go last)"
        )
    return to_bytes(image * 255) if np.max(image) <= 1.0 else image


def _first_axis(axis: Any) -> Any:
    if isinstance(axis, (list, tuple, np.ndarray)):
        return np.asarray(axis, dtype=object).flat[0]
    return axis


def visualize_image_attr(
    attr: np.ndarray | torch.Tensor,
    original_image: np.ndarray | torch.Tensor | None = None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    plt_fig_axis: tuple[Any, Any] | None = None,
    outlier_perc: int | float = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: str | None = None,
    fig_size: tuple[int, int] = (6, 6),
    use_pyplot: bool = True,
) -> tuple[Any, Any]:
    """Captum's ``visualize_image_attr``: one attribution drawn on a matplotlib axis.

    ``attr``: [H, W, C] (summed over C) or [H, W], a numpy array or a tensor (channels last, as
    in Captum: ``attr[0].permute(1, 2, 0)`` for a [B, C, H, W] batch). ``original_image``:
    [H, W, C] or [H, W], values in [0, 1] (scaled to 0-255) or in 0-255; needed by every method
    but ``heat_map``. ``method``: ``heat_map``, ``blended_heat_map`` (the heat map at
    ``alpha_overlay`` over the image in grey), ``original_image``, ``masked_image`` (the image
    times the normalised map) or ``alpha_scaling`` (the map as the image's opacity); the last two
    need a ``sign`` other than ``all``. ``sign``, ``outlier_perc``, ``cmap``: see the module
    docstring. ``plt_fig_axis``: a (figure, axis) to draw on, else a new figure of ``fig_size``,
    made by pyplot and shown when ``use_pyplot``. Returns (figure, axis).

    Unlike Captum, tensors are taken, and grey images ([H, W] or [H, W, 1]) work with every method.

    >>> from fastxai.compat.captum import visualization as viz
    >>> fig, axis = viz.visualize_image_attr(attr_hwc, image_hwc, "blended_heat_map", "all")
    """
    chosen = choice(method, ImageVisualizationMethod, "method")
    chosen_sign = choice(sign, VisualizeSign, "sign")
    outlier_perc = check_outlier_perc(outlier_perc)
    values = as_array(attr, "attr")
    if values.ndim not in (2, 3):
        raise CaptumArgumentError(f"attr must be [H, W, C] or [H, W], got shape {values.shape}")
    if values.ndim == 3:
        values = values.sum(axis=2)
    image = (
        None if chosen is ImageVisualizationMethod.heat_map else _shown_image(original_image, values, chosen)
    )
    if chosen_sign is VisualizeSign.all and chosen in _ONE_SIGN_METHODS:
        raise CaptumArgumentError(
            f"method {chosen.name!r} cannot show both signs: choose sign positive, negative or absolute_value"
        )
    if chosen is ImageVisualizationMethod.blended_heat_map:
        check_alpha(alpha_overlay)
    normalized = normalize_attr(values, chosen_sign, outlier_perc)

    if plt_fig_axis is None:
        figure, axis = new_figure(fig_size, use_pyplot)
    else:
        require_matplotlib(FEATURE)
        figure, axis = plt_fig_axis
        axis = _first_axis(axis)
    for ticks in (axis.xaxis, axis.yaxis):
        if ticks is not None:
            ticks.set_ticks_position("none")
    axis.set_xticklabels([])
    axis.set_yticklabels([])
    axis.grid(visible=False)
    default_cmap, low, high = sign_colormap(chosen_sign)
    heat_map = _draw(
        axis, chosen, normalized, image, cmap if cmap is not None else default_cmap, low, high, alpha_overlay
    )
    if show_colorbar:
        add_colorbar(figure, axis, heat_map, pad=0.1)
    if title:
        axis.set_title(title)
    if use_pyplot:
        show()
    return figure, axis


def _draw(
    axis: Any,
    method: ImageVisualizationMethod,
    normalized: np.ndarray,
    image: np.ndarray | None,
    cmap: Any,
    low: float,
    high: float,
    alpha_overlay: float,
) -> Any:
    """Draw ``method`` on ``axis``; the heat map's artist (for a colour bar), else None."""
    if method is ImageVisualizationMethod.heat_map:
        return axis.imshow(normalized, cmap=cmap, vmin=low, vmax=high)
    assert image is not None  # checked by the caller
    if method is ImageVisualizationMethod.blended_heat_map:
        grey = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
        axis.imshow(grey, cmap="gray")
        return axis.imshow(normalized, cmap=cmap, vmin=low, vmax=high, alpha=alpha_overlay)
    if method is ImageVisualizationMethod.original_image:
        axis.imshow(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        return None
    weights = normalized[:, :, None] if image.ndim == 3 else normalized
    if method is ImageVisualizationMethod.masked_image:
        axis.imshow(to_bytes(image * weights))
        return None
    colour = image if image.ndim == 3 else image[:, :, None]
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)  # an RGBA picture needs three colour channels
    opacity = to_bytes(normalized * 255)[:, :, None]
    axis.imshow(np.concatenate([colour, opacity], axis=2))
    return None


def visualize_image_attr_multiple(
    attr: np.ndarray | torch.Tensor,
    original_image: np.ndarray | torch.Tensor | None,
    methods: Sequence[str],
    signs: Sequence[str],
    titles: Sequence[str] | None = None,
    fig_size: tuple[int, int] = (8, 6),
    use_pyplot: bool = True,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Captum's ``visualize_image_attr_multiple``: ``visualize_image_attr`` once per
    (method, sign) pair, side by side in one row of ``len(methods)`` panels, with ``titles`` (one
    per panel) and ``kwargs`` (``outlier_perc``, ``cmap``, ``alpha_overlay``, ``show_colorbar``)
    passed to each. Returns (figure, axis), or (figure, list of axes) for more than one panel.

    >>> fig, axes = viz.visualize_image_attr_multiple(attr_hwc, image_hwc,
    ...     ["original_image", "heat_map"], ["all", "positive"], use_pyplot=False)
    """
    if len(methods) != len(signs):
        raise CaptumArgumentError(
            f"methods and signs must have the same length, got {len(methods)} and {len(signs)}"
        )
    if len(methods) == 0:
        raise CaptumArgumentError("methods must name at least one method")
    if titles is not None and len(titles) != len(methods):
        raise CaptumArgumentError(
            f"titles must have one title per method ({len(methods)}), got {len(titles)}"
        )
    for method, sign in zip(methods, signs, strict=True):
        choice(method, ImageVisualizationMethod, "methods[...]")
        choice(sign, VisualizeSign, "signs[...]")
    require_matplotlib(FEATURE)
    if use_pyplot:
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=fig_size)
    else:
        from matplotlib.figure import Figure

        figure = Figure(figsize=fig_size)
    grid = figure.subplots(1, len(methods), squeeze=True)
    axes = [grid] if len(methods) == 1 else list(grid)
    for index, (method, sign) in enumerate(zip(methods, signs, strict=True)):
        visualize_image_attr(
            attr,
            original_image=original_image,
            method=method,
            sign=sign,
            plt_fig_axis=(figure, axes[index]),
            use_pyplot=False,
            title=titles[index] if titles else None,
            **kwargs,
        )
    figure.tight_layout()
    if use_pyplot:
        show()
    return figure, axes[0] if len(methods) == 1 else axes
