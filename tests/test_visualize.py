"""Pictures: sign-aware colours, the grid's size, the self-contained report."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

visualize = pytest.importorskip("fastxai.visualize")
pytest.importorskip("matplotlib")


def test_positive_is_red_negative_is_blue_zero_is_white() -> None:
    heatmap = np.array([[1.0, -1.0, 0.0, 0.25]])
    colours = visualize.signed_colours(heatmap, limit=1.0)
    red, blue, white, pale = colours[0]
    assert red[0] > 0.45 and red[2] < 0.1  # saturated red
    assert blue[2] > 0.45 and blue[0] < 0.1
    assert np.allclose(white[:3], 1.0, atol=0.02)
    assert pale[0] > pale[2] and pale[1] > 0.5  # a light red
    faded = visualize.signed_colours(heatmap, limit=1.0, fade=True)
    assert faded[0, 2, 3] == 0 and faded[0, 0, 3] == 1


def test_heatmap_reduction_and_symmetric_limit() -> None:
    attribution = torch.zeros(3, 4, 4)
    attribution[0, 1, 1], attribution[2, 1, 1], attribution[1, 2, 2] = 2.0, 1.0, -5.0
    heatmap = visualize.to_heatmap(attribution)
    assert heatmap[1, 1] == 3.0 and heatmap[2, 2] == -5.0
    assert visualize.symmetric_limit(heatmap, percentile=100) == 5.0
    with pytest.raises(ValueError, match="attribution must be"):
        visualize.to_heatmap(torch.zeros(2, 2, 2, 2))


def test_grid_png_and_report(tmp_path: Path) -> None:
    from PIL import Image

    images = torch.rand(5, 1, 8, 8)
    attributions = {"a": torch.randn(5, 1, 8, 8), "b": torch.randn(5, 8, 8)}
    grid = visualize.save_grid(
        tmp_path / "grid.png", images, attributions, titles=list("vwxyz"), cell_inches=1.0
    )
    width, height = Image.open(grid).size
    assert (width, height) == (500, 300)  # 5 columns x 3 rows of 1 inch at 100 dpi
    report = visualize.html_report(
        tmp_path / "r.html", "t", {"grid": grid}, {"timings": [{"method": "a", "s": 0.5}]}
    )
    text = report.read_text()
    assert base64.b64encode(grid.read_bytes()).decode()[:100] in text
    assert "<td>a</td>" in text and "<td>0.5</td>" in text
    with pytest.raises(ValueError, match="fewer than"):
        visualize.save_grid(tmp_path / "g.png", images, {"a": torch.randn(2, 8, 8)})
