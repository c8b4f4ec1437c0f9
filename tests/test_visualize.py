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


def test_layer_grid_has_a_row_per_input_and_a_column_per_unit(tmp_path: Path) -> None:
    from models import assert_same_state, model_state, small_cnn
    from PIL import Image

    model = small_cnn().train()
    before = model_state(model)
    x = torch.rand(5, 1, 8, 8)
    grid = visualize.save_layer_grid(
        tmp_path / "layer.png", model, "2", x, max_units=4, max_samples=3, cell_inches=1.0
    )
    assert Image.open(grid).size == (500, 300)  # the input and 4 units, 3 inputs
    chosen = visualize.save_layer_grid(tmp_path / "units.png", model, "4", x, units=[0, 7], cell_inches=1.0)
    assert Image.open(chosen).size == (300, 500)
    dense = visualize.save_layer_grid(tmp_path / "dense.png", model, "8", x[:2], cell_inches=1.0)
    assert Image.open(dense).size == (200, 200)  # [N, F]: all F units as one strip per input
    assert_same_state(before, model_state(model))


def test_layer_grid_shows_the_strongest_units() -> None:
    """Unit k of a 1x1 conv scales the input by 5 - k on even k, -(5 - k) on odd k: by mean
    |activation| the strongest three are units 0, 1, 2."""
    activation = torch.rand(3, 1, 4, 4) + 0.1
    scale = torch.tensor([5.0, -4.0, 3.0, -2.0, 1.0, -0.5]).view(1, 6, 1, 1)
    assert visualize.shown_units(activation * scale, None, 3) == [0, 1, 2]
    assert visualize.shown_units(activation * scale.flip(1), None, 2) == [4, 5]
    assert visualize.shown_units(activation * scale, [5, 1], 3) == [5, 1]
    assert visualize.shown_units(activation * scale, None, 10) == list(range(6))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_units": 0}, "max_units must be an int >= 1"),
        ({"max_samples": 0}, "max_samples must be an int >= 1"),
        ({"units": []}, "units must be None or a non-empty sequence"),
        ({"units": [0, 99]}, r"units must be in \[0, 6\)"),
        ({"layer": "nope"}, "is not a submodule"),
    ],
)
def test_layer_grid_errors_name_the_argument(tmp_path: Path, kwargs: dict, message: str) -> None:
    from models import small_cnn

    arguments = {"layer": "2"} | kwargs
    with pytest.raises(ValueError, match=message):
        visualize.save_layer_grid(tmp_path / "x.png", small_cnn(), inputs=torch.rand(2, 1, 8, 8), **arguments)
    assert not (tmp_path / "x.png").exists()
