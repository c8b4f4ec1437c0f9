"""Captum's mask helpers (new in 0.9.0): a segment's outline and its label drawn over a picture."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastxai.compat._captum_targets import CaptumArgumentError
from fastxai.compat._captum_visualization import FEATURE
from fastxai.visualize import require_matplotlib


def draw_mask_border(
    ax: Any, mask: np.ndarray, border_width: int = 1, border_color: str | np.ndarray = "black"
) -> None:
    """Captum's ``draw_mask_border``: the ``border_width`` pixels of ``mask`` [H, W] (bool) next to
    its outside (4-neighbour erosion; outside the picture counts as outside) drawn in
    ``border_color`` (a colour name or an RGBA array) on ``ax``. An empty mask draws nothing."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise CaptumArgumentError(f"mask must be [H, W], got shape {mask.shape}")
    if not mask.any():
        return
    if isinstance(border_color, str):
        colour = np.asarray(require_matplotlib(FEATURE).colors.to_rgba(border_color))
    else:
        colour = np.asarray(border_color)
    inner = mask
    for _ in range(border_width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    border = mask & ~inner
    ax.imshow(border[:, :, None] * colour.reshape(1, 1, -1))


def draw_mask_legend(
    ax: Any,
    mask: np.ndarray,
    label: str,
    fontsize: int = 10,
    text_color: str = "white",
    bbox_facecolor: str = "black",
    bbox_alpha: float = 0.6,
) -> None:
    """Captum's ``draw_mask_legend``: ``label`` in a rounded box at the centroid of ``mask``
    [H, W] (bool) on ``ax``. An empty mask draws nothing."""
    rows, columns = np.nonzero(np.asarray(mask, dtype=bool))
    if rows.size == 0:
        return
    box = {"boxstyle": "round,pad=0.2", "facecolor": bbox_facecolor, "alpha": bbox_alpha}
    ax.text(
        columns.mean(),
        rows.mean(),
        label,
        color=text_color,
        fontsize=fontsize,
        ha="center",
        va="center",
        bbox=box,
    )
