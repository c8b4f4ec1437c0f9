"""fastxai.compat.captum.visualization against Captum's: the same pixels, colour limits, layout
and HTML for the same arguments; the normalisation against a textbook loop; clear errors."""

from __future__ import annotations

import inspect
import re
import sys
import types

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
pytest.importorskip("captum", reason="Captum is the peer of fastxai.compat.captum")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from captum.attr import visualization as captum_viz  # noqa: E402

from fastxai.compat.captum import visualization as viz  # noqa: E402

METHODS = ["heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling"]
SIGNS = ["all", "positive", "negative", "absolute_value"]
PAIRS = [
    (m, s) for m in METHODS for s in SIGNS if not (s == "all" and m in ("masked_image", "alpha_scaling"))
]


def drawn(axis) -> list[tuple[np.ndarray, tuple, object, str]]:  # type: ignore[no-untyped-def]
    """What an axis shows: per image its data, colour limits, opacity and colour map."""
    return [
        (np.asarray(image.get_array()), image.get_clim(), image.get_alpha(), image.get_cmap().name)
        for image in axis.images
    ]


def assert_same_drawing(ours, theirs) -> None:  # type: ignore[no-untyped-def]
    assert len(ours) == len(theirs)
    for (array, clim, alpha, cmap), (array_c, clim_c, alpha_c, cmap_c) in zip(ours, theirs, strict=True):
        assert array.shape == array_c.shape
        np.testing.assert_allclose(array.astype(np.float64), array_c.astype(np.float64), rtol=1e-6, atol=1e-6)
        assert clim == pytest.approx(clim_c)
        assert alpha == alpha_c and cmap == cmap_c


def case(channels: int, seed: int = 0, *, uint8: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    attr = rng.normal(size=(12, 17, channels)).astype(np.float32)
    image = rng.random((12, 17, channels)).astype(np.float32)
    return attr, (image * 255).astype(np.uint8) if uint8 else image


@pytest.fixture(autouse=True)
def _close_figures():  # type: ignore[no-untyped-def]
    yield
    plt.close("all")


@pytest.mark.parametrize(("method", "sign"), PAIRS)
@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "grey"])
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_same_pixels_as_captum(method: str, sign: str, channels: int, kind: str) -> None:
    attr, image = case(channels, seed=channels)
    ours_attr, ours_image = (
        (torch.from_numpy(attr), torch.from_numpy(image)) if kind == "tensor" else (attr, image)
    )
    _, axis = viz.visualize_image_attr(
        ours_attr, ours_image, method, sign, use_pyplot=False, show_colorbar=True
    )
    # Captum takes numpy only, and needs three channels to draw alpha_scaling
    peer_image = np.repeat(image, 3, axis=2) if method == "alpha_scaling" and channels == 1 else image
    _, peer = captum_viz.visualize_image_attr(
        attr, peer_image, method, sign, use_pyplot=False, show_colorbar=True
    )
    assert_same_drawing(drawn(axis), drawn(peer))
    assert len(axis.figure.axes) == len(peer.figure.axes) == 2  # the colour bar's slot
    assert axis.figure.axes[1].axison == peer.figure.axes[1].axison


@pytest.mark.parametrize("method", ["blended_heat_map", "original_image", "masked_image"])
def test_image_0_255_and_two_dimensional_attributions(method: str) -> None:
    attr, image = case(3, seed=5, uint8=True)
    _, axis = viz.visualize_image_attr(attr.sum(2), image, method, "positive", use_pyplot=False)
    _, peer = captum_viz.visualize_image_attr(attr.sum(2), image, method, "positive", use_pyplot=False)
    assert_same_drawing(drawn(axis), drawn(peer))


@pytest.mark.parametrize("method", ["blended_heat_map", "masked_image"])
def test_grey_image_without_a_channel_axis(method: str) -> None:
    attr, image = case(1, seed=6)
    _, axis = viz.visualize_image_attr(attr, image[:, :, 0], method, "absolute_value", use_pyplot=False)
    _, peer = captum_viz.visualize_image_attr(attr, image, method, "absolute_value", use_pyplot=False)
    assert_same_drawing(drawn(axis), drawn(peer))


def textbook_threshold(magnitudes: np.ndarray, outlier_perc: float) -> float:
    """The smallest kept magnitude: walk the values upwards until their sum reaches
    (100 - outlier_perc) % of the total."""
    values = sorted(float(v) for v in magnitudes.ravel())
    total, running = sum(values), 0.0
    for value in values:
        running += value
        if running >= total * (100 - outlier_perc) / 100 - 1e-9 * total:
            return value
    return values[-1]


@pytest.mark.parametrize("outlier_perc", [0, 2, 10, 50, 99.5])
@pytest.mark.parametrize("sign", SIGNS)
def test_normalisation_matches_the_formula_and_captum(outlier_perc: float, sign: str) -> None:
    rng = np.random.default_rng(11)
    attr = rng.normal(size=(16, 12))  # float64: the loop above adds in float64 too
    _, axis = viz.visualize_image_attr(
        attr, None, "heat_map", sign, outlier_perc=outlier_perc, use_pyplot=False
    )
    shown = np.asarray(axis.images[0].get_array())
    kept = {
        "all": attr,
        "positive": np.maximum(attr, 0),
        "negative": np.minimum(attr, 0),
        "absolute_value": np.abs(attr),
    }[sign]
    threshold = textbook_threshold(np.abs(kept), outlier_perc)
    expected = np.clip(kept / (-threshold if sign == "negative" else threshold), -1, 1)
    np.testing.assert_allclose(shown, expected, rtol=1e-12)
    _, peer = captum_viz.visualize_image_attr(
        attr, None, "heat_map", sign, outlier_perc=outlier_perc, use_pyplot=False
    )
    np.testing.assert_allclose(shown, np.asarray(peer.images[0].get_array()), rtol=1e-12)
    saturated = int(np.isclose(np.abs(shown), 1).sum())
    assert saturated == int((np.abs(kept) >= threshold).sum())
    assert (saturated > 2) == (outlier_perc >= 10)  # more outliers, more saturated pixels


def test_cmap_alpha_title_and_given_axis() -> None:
    attr, image = case(3, seed=2)
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.subplots(1, 2)
    returned_figure, axis = viz.visualize_image_attr(
        attr,
        image,
        "blended_heat_map",
        "all",
        plt_fig_axis=(figure, list(axes)),
        cmap="viridis",
        alpha_overlay=0.3,
        title="IG",
        use_pyplot=False,
    )
    assert returned_figure is figure and axis is axes[0]
    assert axis.get_title() == "IG"
    assert axis.images[1].get_cmap().name == "viridis" and axis.images[1].get_alpha() == 0.3
    assert axis.xaxis.get_ticklabels() == [] or all(t.get_text() == "" for t in axis.xaxis.get_ticklabels())


def test_use_pyplot_makes_a_pyplot_figure_and_shows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[bool] = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    attr, _ = case(3)
    figure, _ = viz.visualize_image_attr(attr, fig_size=(3, 2))
    assert shown == [True] and plt.fignum_exists(figure.number)
    assert tuple(figure.get_size_inches()) == (3, 2)
    open_figures = len(plt.get_fignums())
    viz.visualize_image_attr(attr, use_pyplot=False)
    assert shown == [True] and len(plt.get_fignums()) == open_figures  # neither made nor shown by pyplot


@pytest.mark.parametrize("count", [1, 3])
def test_multiple_layout_and_pixels(count: int) -> None:
    attr, image = case(3, seed=3)
    methods, signs = (
        ["original_image", "heat_map", "blended_heat_map"][:count],
        ["all", "positive", "negative"][:count],
    )
    titles = [f"panel {i}" for i in range(count)]
    figure, axes = viz.visualize_image_attr_multiple(
        attr, image, methods, signs, titles=titles, use_pyplot=False, show_colorbar=True, outlier_perc=5
    )
    peer_figure, peer_axes = captum_viz.visualize_image_attr_multiple(
        attr, image, methods, signs, titles=titles, use_pyplot=False, show_colorbar=True, outlier_perc=5
    )
    assert tuple(figure.get_size_inches()) == (8, 6)
    if count == 1:
        axes, peer_axes = [axes], [peer_axes]
        assert not isinstance(axes[0], list)
    assert isinstance(axes, list) and len(axes) == count == len(peer_axes)
    for ours, theirs, title in zip(axes, peer_axes, titles, strict=True):
        assert ours.get_title() == title
        assert_same_drawing(drawn(ours), drawn(theirs))
        np.testing.assert_allclose(ours.get_position().bounds, theirs.get_position().bounds, atol=1e-6)
    assert len(figure.axes) == len(peer_figure.axes) == 2 * count


BAD_IMAGE_CALLS = {
    "sign": ({"sign": "bad"}, (KeyError, ValueError), "sign"),
    "method": ({"method": "bad"}, (AssertionError, ValueError), "method"),
    "outlier_perc high": ({"outlier_perc": 120}, (AssertionError, ValueError), "outlier_perc"),
    "outlier_perc low": ({"outlier_perc": -1}, (AssertionError, ValueError), "outlier_perc"),
    "both signs masked": ({"method": "masked_image", "sign": "all"}, (AssertionError, ValueError), "sign"),
    "both signs alpha": ({"method": "alpha_scaling", "sign": "all"}, (AssertionError, ValueError), "sign"),
    "no image": ({"original_image": None, "method": "blended_heat_map"}, (ValueError,), "original_image"),
    "all zero": ({"attr": np.zeros((12, 17, 3))}, (AssertionError, ValueError), "attr"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGE_CALLS))
def test_bad_arguments_raise_captums_errors_naming_the_argument(name: str) -> None:
    changes, kinds, argument = BAD_IMAGE_CALLS[name]
    attr, image = case(3)
    call = {"attr": attr, "original_image": image, "use_pyplot": False, **changes}
    for kind in kinds:
        with pytest.raises(kind) as raised:
            viz.visualize_image_attr(**call)
        assert argument in str(raised.value)
    with pytest.raises(kinds[0]):  # Captum raises the same kind
        captum_viz.visualize_image_attr(**call)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        ({"attr": np.zeros(5)}, "attr"),
        ({"attr": "abc"}, "attr"),
        ({"original_image": np.zeros((12, 16, 3)), "method": "blended_heat_map"}, "original_image"),
        ({"outlier_perc": "2"}, "outlier_perc"),
        ({"method": "blended_heat_map", "alpha_overlay": 2.0}, "alpha_overlay"),
    ],
)
def test_more_bad_arguments(call: dict, argument: str) -> None:
    attr, image = case(3)
    with pytest.raises((ValueError, TypeError), match=argument):
        viz.visualize_image_attr(**{"attr": attr, "original_image": image, "use_pyplot": False, **call})


def test_multiple_bad_lengths() -> None:
    attr, image = case(3)
    with pytest.raises(AssertionError, match="methods and signs"):
        viz.visualize_image_attr_multiple(attr, image, ["heat_map"], ["all", "positive"], use_pyplot=False)
    with pytest.raises(ValueError, match="titles"):
        viz.visualize_image_attr_multiple(
            attr, image, ["heat_map"], ["all"], titles=["a", "b"], use_pyplot=False
        )
    with pytest.raises(KeyError, match="signs"):
        viz.visualize_image_attr_multiple(attr, image, ["heat_map"], ["al"], use_pyplot=False)


def test_small_scale_warns() -> None:
    with pytest.warns(UserWarning, match="close to 0"):
        viz.visualize_image_attr(np.full((3, 3), 1e-7), use_pyplot=False)


def test_missing_matplotlib_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="matplotlib"):
        viz.visualize_image_attr(np.ones((3, 3)), use_pyplot=False)


@pytest.fixture
def captum_timeseries(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Captum 0.9.0 calls ``matplotlib.cm.get_cmap``, gone since matplotlib 3.9: put it back."""
    import matplotlib.cm

    monkeypatch.setattr(matplotlib.cm, "get_cmap", matplotlib.colormaps.get_cmap, raising=False)
    return captum_viz.visualize_timeseries_attr


def spans(axis) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([patch.get_facecolor() for patch in axis.patches])


@pytest.mark.parametrize("method", ["overlay_individual", "overlay_combined", "colored_graph"])
@pytest.mark.parametrize("sign", SIGNS)
def test_timeseries_same_as_captum(method: str, sign: str, captum_timeseries) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    attr, data = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    options = {"method": method, "sign": sign, "channel_labels": ["a", "b", "c"], "use_pyplot": False}
    figure, axes = viz.visualize_timeseries_attr(
        torch.from_numpy(attr), data, show_colorbar=True, linewidth=2, **options
    )
    _, peer_axes = captum_timeseries(attr, data, show_colorbar=True, linewidth=2, **options)
    ours, theirs = np.atleast_1d(axes), np.atleast_1d(peer_axes)
    assert len(ours) == len(theirs) == (1 if method == "overlay_combined" else 3)
    for axis, peer in zip(ours, theirs, strict=True):
        for line, peer_line in zip(axis.lines, peer.lines, strict=True):
            np.testing.assert_array_equal(line.get_xydata(), peer_line.get_xydata())
            assert line.get_color() == peer_line.get_color() and line.get_linewidth() == 2
        np.testing.assert_allclose(spans(axis), spans(peer))
        for lines, peer_lines in zip(axis.collections, peer.collections, strict=True):
            np.testing.assert_allclose(lines.get_array(), np.asarray(peer_lines.get_array())[:-1])
            np.testing.assert_allclose(
                np.asarray(lines.get_segments()), np.asarray(peer_lines.get_segments())
            )
        assert axis.get_ylabel() == peer.get_ylabel()
        assert axis.get_xlim() == (0, 29)
    assert len(figure.axes) == len(ours) + 1  # the colour bar


def test_timeseries_works_on_this_matplotlib_and_checks_arguments() -> None:
    attr = np.random.default_rng(1).normal(size=(2, 20))
    _, axes = viz.visualize_timeseries_attr(attr, attr, channels_last=False, use_pyplot=False, title="t")
    assert len(axes) == 2 and axes[0].get_title() == "t"
    assert len(axes[0].patches) == 20
    with pytest.raises(AssertionError, match="attr"):
        viz.visualize_timeseries_attr(attr[0], attr[0], use_pyplot=False)
    with pytest.raises(ValueError, match="x_values"):
        viz.visualize_timeseries_attr(attr.T, attr.T, x_values=np.arange(3), use_pyplot=False)
    with pytest.raises(KeyError, match="method"):
        viz.visualize_timeseries_attr(attr.T, attr.T, method="bars", use_pyplot=False)
    with pytest.raises(ValueError, match="channel_labels"):
        viz.visualize_timeseries_attr(attr.T, attr.T, channel_labels=["a"], use_pyplot=False)
    with pytest.warns(UserWarning, match="channels_last"):
        viz.visualize_timeseries_attr(attr, attr, use_pyplot=False)


COLOUR = re.compile(r"background-color:\s*(hsl\([^)]*\))")


def marked_words(markup: str) -> list[str]:
    return [word.strip() for word in re.findall(r'<font color="black">(.*?)</font>', markup, flags=re.S)]


def test_word_importances_colours_and_words_match_captum() -> None:
    words = ["<s>", "a", "fine", "film", "</s>"]
    importances = torch.tensor([0.0, -0.35, 0.8, 2.0, -3.0])
    ours = viz.format_word_importances(words, importances)
    theirs = captum_viz.format_word_importances(words, importances)
    assert COLOUR.findall(ours) == COLOUR.findall(theirs)
    assert COLOUR.findall(ours) == [
        "hsl(0, 75%, 100%)",
        "hsl(0, 75%, 86%)",
        "hsl(120, 75%, 60%)",
        "hsl(120, 75%, 50%)",
        "hsl(0, 75%, 60%)",
    ]
    assert marked_words(ours) == marked_words(theirs) == ["#s", "a", "fine", "film", "#/s"]
    assert viz.format_word_importances(words, []) == "<td></td>"
    assert "a&lt;b" in viz.format_word_importances(["a<b"], [0.5])
    with pytest.raises(AssertionError, match="importances"):
        viz.format_word_importances(words, [0.1])
    with pytest.raises(ValueError, match="1-d"):
        viz.format_word_importances(words, np.zeros((5, 1)))


def test_small_helpers_match_captum() -> None:
    for token in ["<pad>", "<<x>>", "word", "<half"]:
        assert viz.format_special_tokens(token) == captum_viz.format_special_tokens(token)
    assert viz.format_classname(3) == captum_viz.format_classname(3)
    assert "tooltiptext" in viz.format_tooltip("word", "0.5") and "word" in viz.format_tooltip("word", "0.5")


def records() -> list:
    return [
        viz.VisualizationDataRecord(
            torch.tensor([0.6, -0.2, 0.1]), 0.91, 1, 1, 1, 0.5, ["good", "bad", "film"], 0.01
        ),
        viz.VisualizationDataRecord(np.array([-1.0, 0.3]), 0.4, 0, 1, 0, -1.25, ["dull", "plot"], 0.0),
    ]


def test_visualize_text_without_ipython_returns_the_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "IPython", None)
    shown = viz.visualize_text(records())
    assert isinstance(shown, viz.HTMLText) and shown._repr_html_() == shown.data == str(shown)
    # Captum's own markup, for the same records (it needs IPython: stand-ins for display and HTML)
    monkeypatch.setattr(captum_viz, "HAS_IPYTHON", True)
    monkeypatch.setattr(captum_viz, "HTML", lambda data: types.SimpleNamespace(data=data), raising=False)
    monkeypatch.setattr(captum_viz, "display", lambda html: None, raising=False)
    theirs = captum_viz.visualize_text(records()).data
    assert COLOUR.findall(shown.data) == COLOUR.findall(theirs)
    assert marked_words(shown.data) == marked_words(theirs) == ["good", "bad", "film", "dull", "plot"]
    for cell in ["1 (0.91)", "0 (0.40)", "-1.25", "Legend", "Attribution Score"]:
        assert cell in shown.data and cell in theirs
    assert shown.data.count("<tr>") == shown.data.count("</tr>") == 3
    assert "Legend" not in viz.visualize_text(records(), legend=False).data


def test_visualize_text_with_ipython_displays_it(monkeypatch: pytest.MonkeyPatch) -> None:
    displayed: list[object] = []

    class HTML:
        def __init__(self, data: str) -> None:
            self.data = data

    display_module = types.ModuleType("IPython.display")
    display_module.HTML = HTML  # type: ignore[attr-defined]
    display_module.display = displayed.append  # type: ignore[attr-defined]
    package = types.ModuleType("IPython")
    package.display = display_module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", package)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    shown = viz.visualize_text(records())
    assert isinstance(shown, HTML) and displayed == [shown] and "film" in shown.data


def test_masks_match_captum() -> None:
    pytest.importorskip("scipy", reason="Captum's draw_mask_border uses scipy")
    from matplotlib.figure import Figure

    mask = np.zeros((9, 10), dtype=bool)
    mask[1:8, 0:6] = True
    mask[4, 6:9] = True
    for width, colour in [(1, "red"), (2, np.array([0.0, 0.5, 1.0, 1.0]))]:
        ours, theirs = Figure().subplots(), Figure().subplots()
        viz.draw_mask_border(ours, mask, border_width=width, border_color=colour)
        captum_viz.draw_mask_border(theirs, mask, border_width=width, border_color=colour)
        assert_same_drawing(drawn(ours), drawn(theirs))
        viz.draw_mask_legend(ours, mask, "7", fontsize=8)
        captum_viz.draw_mask_legend(theirs, mask, "7", fontsize=8)
        assert ours.texts[0].get_position() == pytest.approx(theirs.texts[0].get_position())
        assert ours.texts[0].get_text() == "7" and ours.texts[0].get_fontsize() == 8
    empty = Figure().subplots()
    viz.draw_mask_border(empty, np.zeros((3, 3), dtype=bool))
    viz.draw_mask_legend(empty, np.zeros((3, 3), dtype=bool), "x")
    assert not empty.images and not empty.texts


def captum_public() -> dict[str, object]:
    return {
        name: value
        for name, value in vars(captum_viz).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == captum_viz.__name__
    }


def test_every_public_name_with_captums_signature() -> None:
    public = captum_public()
    assert {"visualize_image_attr", "visualize_text", "VisualizeSign"} <= set(public)
    for name, peer in public.items():
        ours = getattr(viz, name)
        if isinstance(peer, type) and issubclass(peer, __import__("enum").Enum):
            assert {m.name: m.value for m in ours} == {m.name: m.value for m in peer}
            continue
        function, peer_function = (ours.__init__, peer.__init__) if isinstance(peer, type) else (ours, peer)
        parameters = inspect.signature(function).parameters
        peer_parameters = inspect.signature(peer_function).parameters
        assert list(parameters) == list(peer_parameters), name
        for key, parameter in parameters.items():
            assert parameter.default == peer_parameters[key].default, (name, key)
            assert parameter.kind == peer_parameters[key].kind, (name, key)


def test_imports() -> None:
    import fastxai.compat.captum as fc
    import fastxai.compat.captum.visualization as dotted
    from fastxai.compat.captum import IntegratedGradients, NoiseTunnel, Saliency

    assert dotted is viz is fc.visualization
    assert "visualization" in fc.__all__
    assert all(isinstance(cls, type) for cls in (IntegratedGradients, NoiseTunnel, Saliency))
