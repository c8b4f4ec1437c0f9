"""Pictures of attributions: sign-aware heatmaps, overlays, a methods x samples grid, a
self-contained HTML report, and a layer's activation maps as an inputs x units grid. Needs
matplotlib (imported on first use).

Relevance is drawn red for positive and blue for negative, white at zero, on a colour scale
symmetric about zero and set by the largest magnitude (or its 99.5th percentile, so a single
extreme pixel does not wash out the rest).

>>> from fastxai import visualize
>>> visualize.save_grid("grid.png", images, {"IG": ig, "SmoothGrad": sg}, titles=[str(int(t)) for t in y])
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIGNED_COLORMAP = "bwr"
"""Blue (negative) - white (zero) - red (positive)."""


def require_matplotlib(feature: str = "fastxai.visualize") -> Any:
    """The ``matplotlib`` module, imported on first use; an ImportError that names it (and how to
    install it) when it is missing. ``feature``: what needs it, for the message."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"{feature} needs matplotlib: pip install matplotlib") from None
    return matplotlib


def _pyplot() -> Any:
    require_matplotlib().use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _array(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return (
        value.detach().float().cpu().numpy()
        if isinstance(value, torch.Tensor)
        else np.asarray(value, dtype=np.float32)
    )


def to_heatmap(attribution: torch.Tensor | np.ndarray, reduce: str = "sum") -> np.ndarray:
    """One attribution [C, H, W] or [H, W] to a 2-d map: channels summed (``"sum"``, keeps the
    sign) or the largest magnitude taken (``"absmax"``)."""
    values = _array(attribution)
    if values.ndim == 3:
        values = values.sum(0) if reduce == "sum" else np.abs(values).max(0)
    if values.ndim != 2:
        raise ValueError(f"attribution must be [C, H, W] or [H, W], got shape {values.shape}")
    return values


def to_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] or [H, W] in any range to [H, W, 3] or [H, W] in [0, 1] for display."""
    values = _array(image)
    if values.ndim == 3:
        values = values.transpose(1, 2, 0)
        if values.shape[2] == 1:
            values = values[:, :, 0]
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def symmetric_limit(heatmap: np.ndarray, percentile: float = 99.5) -> float:
    limit = float(np.percentile(np.abs(heatmap), percentile))
    return limit if limit > 0 else float(np.abs(heatmap).max()) or 1.0


def signed_colours(heatmap: np.ndarray, limit: float, *, fade: bool = False) -> np.ndarray:
    """RGBA [H, W, 4]: red for positive, blue for negative, white at zero, saturating at
    ``limit``; with ``fade`` the opacity is (|h| / limit)^0.7 instead of 1."""
    plt = _pyplot()
    scaled = np.clip(heatmap / limit, -1, 1)
    colours = plt.get_cmap(SIGNED_COLORMAP)((scaled + 1) / 2)
    if fade:
        colours[..., 3] = np.abs(scaled) ** 0.7
    return colours


def draw(
    axis: Any,
    image: torch.Tensor | np.ndarray | None,
    attribution: torch.Tensor | np.ndarray,
    *,
    percentile: float = 99.5,
) -> Any:
    """Draw the signed heatmap of ``attribution`` on ``axis``. Over an ``image`` (shown in grey)
    the colour's opacity grows with |relevance|, so irrelevant pixels show the input itself."""
    heatmap = to_heatmap(attribution)
    colours = signed_colours(heatmap, symmetric_limit(heatmap, percentile), fade=image is not None)
    if image is not None:
        shown = to_image(image)
        grey = shown.mean(2) if shown.ndim == 3 else shown
        axis.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    artist = axis.imshow(colours, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    return artist


def save_grid(
    path: str | Path,
    images: torch.Tensor | np.ndarray,
    attributions: Mapping[str, torch.Tensor | np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    max_samples: int = 8,
    cell_inches: float = 1.6,
) -> Path:
    """A PNG grid: the inputs in the first row, then one row per method with its heatmap over
    each input. ``images``: [N, C, H, W]; each attribution [N, C, H, W] or [N, H, W]."""
    plt = _pyplot()
    count = min(max_samples, len(images))
    if count == 0:
        raise ValueError("images is empty")
    for name, values in attributions.items():
        if len(values) < count:
            raise ValueError(
                f"attributions[{name!r}] has {len(values)} samples, fewer than the {count} images"
            )
    rows = 1 + len(attributions)
    figure, axes = plt.subplots(rows, count, figsize=(cell_inches * count, cell_inches * rows), squeeze=False)
    for column in range(count):
        shown = to_image(images[column])
        axes[0, column].imshow(shown, cmap="gray" if shown.ndim == 2 else None, interpolation="nearest")
        axes[0, column].set_xticks([])
        axes[0, column].set_yticks([])
        if titles is not None and column < len(titles):
            axes[0, column].set_title(titles[column], fontsize=8)
        for row, (name, values) in enumerate(attributions.items(), start=1):
            draw(axes[row, column], images[column], values[column])
            if column == 0:
                axes[row, 0].set_ylabel(name, fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def html_report(
    path: str | Path,
    title: str,
    pictures: Mapping[str, str | Path],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
) -> Path:
    """A single HTML file with the PNGs embedded (base64) and each table (a list of rows)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
    ]
    for caption, rows in tables.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        if rows:
            columns = list(rows[0])
            parts.append(
                "<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>"
            )
            for row in rows:
                cells = "".join(f"<td>{html.escape(_format(row.get(c)))}</td>" for c in columns)
                parts.append(f"<tr>{cells}</tr>")
            parts.append("</table>")
    for caption, picture in pictures.items():
        encoded = base64.b64encode(Path(picture).read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
            f"src='data:image/png;base64,{encoded}'>"
        )
    parts.append("</body></html>")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _strip(values: np.ndarray) -> np.ndarray:
    """A map to draw: [H, W] as it is, [L] as one row [1, L]."""
    return values if values.ndim == 2 else values.reshape(1, -1)


def shown_units(activation: torch.Tensor, units: Sequence[int] | None, max_units: int) -> list[int]:
    """``units`` checked against the layer's [N, U, ...] output, or the ``max_units`` units with
    the largest mean |activation| over the inputs, in index order."""
    if units is not None:
        if max(units) >= activation.shape[1]:
            raise ValueError(f"units must be in [0, {activation.shape[1]}) (the layer's), got {max(units)}")
        return list(units)
    strength = activation.abs().flatten(2).mean(2).mean(0)
    return sorted(strength.topk(min(max_units, activation.shape[1])).indices.tolist())


def save_layer_grid(
    path: str | Path,
    model: Any,
    layer: Any,
    inputs: torch.Tensor,
    *,
    units: Sequence[int] | None = None,
    max_units: int = 16,
    max_samples: int = 8,
    cell_inches: float = 1.2,
) -> Path:
    """A PNG grid of a layer's activation maps: one row per input (its picture first), one
    column per unit. ``layer``: a module of ``model`` or its dotted name; its output [N, C, H, W]
    gives each unit a map, [N, C, L] a strip, [N, F] one strip of all F units per input.

    ``units``: the units to show, else the ``max_units`` with the largest mean |activation| over
    the inputs shown (in index order). Each unit has one colour scale over all rows, so rows
    compare: viridis from its lowest to its highest value, or red/blue about zero where it
    takes both signs. The activations come from ``fastxai.layer_activations`` (the model is left
    as found). Returns the path.

    >>> from fastxai import visualize
    >>> visualize.save_layer_grid("layer.png", model, "2", x[:6], max_units=8)
    """
    from fastxai.global_views.activations import layer_activations

    for name, value in (("max_units", max_units), ("max_samples", max_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if units is not None and (
        isinstance(units, (str, bytes))
        or len(units) == 0
        or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in units)
    ):
        raise ValueError(f"units must be None or a non-empty sequence of ints >= 0, got {units!r}")
    plt = _pyplot()
    shown = inputs[:max_samples]
    activation = layer_activations(model, shown, layer=layer)
    if activation.dim() > 4:
        raise ValueError(
            f"layer output must be [N, C, H, W], [N, C, L] or [N, F] to draw, got {tuple(activation.shape)}"
        )
    dense = activation.dim() == 2
    if dense:
        activation = activation.unsqueeze(1)  # one "unit": the whole vector as a strip
        chosen = [0]
    else:
        chosen = shown_units(activation, units, max_units)
    values = _array(activation[:, chosen])
    rows, columns = values.shape[0], 1 + len(chosen)
    figure, axes = plt.subplots(
        rows, columns, figsize=(cell_inches * columns, cell_inches * rows), squeeze=False
    )
    for row in range(rows):
        picture = _array(shown[row])
        if picture.ndim == 3 and picture.shape[0] in (1, 3):
            image = to_image(picture)
        else:
            image = _strip(picture.reshape(picture.shape[-2:]) if picture.ndim > 2 else picture)
        axes[row, 0].imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        for column, unit in enumerate(chosen, start=1):
            maps = values[:, column - 1]
            low, high = float(maps.min()), float(maps.max())
            if low < 0 < high:
                limit = max(-low, high)
                style: dict[str, Any] = {"cmap": SIGNED_COLORMAP, "vmin": -limit, "vmax": limit}
            else:
                style = {"cmap": "viridis", "vmin": low, "vmax": high if high > low else low + 1}
            axes[row, column].imshow(_strip(maps[row]), interpolation="nearest", aspect="auto", **style)
            if row == 0:
                label = f"{values.shape[-1]} units" if dense else f"unit {unit}"
                axes[0, column].set_title(label, fontsize=8)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
