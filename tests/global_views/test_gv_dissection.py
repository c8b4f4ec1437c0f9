"""Network dissection: planted detectors labelled with their concept, IoU against a per-image
loop, and the synthetic concept data set's masks against the pictures they label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import assert_same_state, fail_at_call, model_state, small_cnn
from torch import nn
from torch.nn import functional

import fastxai as fx
from fastxai.global_views.concepts import CONCEPTS, SHAPES
from fastxai.global_views.dissection import top_quantile_thresholds

pytestmark = pytest.mark.usefixtures("one_thread")

PLANTED = ("horizontal_stripes", "vertical_stripes", "checkerboard", "bright", "dim")


class Planted(nn.Module):
    """Units 0-4 detect, by construction, the concepts in ``PLANTED``; unit 5 is seeded noise,
    unrelated to the picture. Stripes of period 4 are found by a 4 x 4 filter whose rows (or
    columns, or both) weigh +1, +1, -1, -1: it sums to zero over a uniform patch, over stripes
    across it and over a checkerboard's rows, so only its own texture makes |response| large.
    Intensities by a ramp above 0.75 (bright) and a tent around 0.5 (dim). Pooled 4 x 4 to an
    8 x 8 map, as a conv net's deeper layer would be."""

    def __init__(self) -> None:
        super().__init__()
        ramp = torch.tensor([1.0, 1.0, -1.0, -1.0])
        weight = torch.stack([ramp.view(4, 1).expand(4, 4), ramp.view(1, 4).expand(4, 4), ramp.outer(ramp)])
        self.texture = nn.Conv2d(1, 3, 4, bias=False)
        with torch.no_grad():
            self.texture.weight.copy_(weight.unsqueeze(1))
        self.pool = nn.AvgPool2d(4)
        self.maps = nn.Identity()
        self.noise = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        textures = self.texture(functional.pad(x, (1, 2, 1, 2))).abs()
        bright = (x - 0.75).relu()
        dim = (0.15 - (x - 0.5).abs()).relu()
        noise = torch.rand(x.shape, generator=self.noise)
        maps = self.maps(self.pool(torch.cat([textures, bright, dim, noise], dim=1)))
        return maps.flatten(1)


@pytest.fixture(scope="module")
def concepts() -> fx.global_views.ConceptDataset:
    return fx.concept_dataset(192, seed=1)


def chance_iou(concepts: fx.global_views.ConceptDataset, quantile: float) -> float:
    """The best IoU a map that fires on a random fraction ``quantile`` of the pixels expects:
    ``q c / (q + c - q c)`` for a concept covering a fraction ``c`` of the pixels."""
    coverage = concepts.masks.float().mean((0, 2, 3))
    return float((quantile * coverage / (quantile + coverage - quantile * coverage)).max())


@pytest.mark.parametrize(("quantile", "bound"), [(0.005, 4.0), (0.04, 10.0)])
def test_planted_detectors_get_their_concept_and_noise_gets_chance(
    concepts: fx.global_views.ConceptDataset, quantile: float, bound: float
) -> None:
    result = fx.network_dissection(Planted(), concepts, layer="maps", quantile=quantile)
    chance = chance_iou(concepts, quantile)
    assert result.labels[:5] == PLANTED
    assert bool((result.best_iou[:5] > bound * chance).all()), (result.best_iou, chance)
    assert float(result.best_iou[5]) < chance, (result.best_iou[5], chance)
    assert result.iou.shape == (6, len(CONCEPTS)) and result.concepts == CONCEPTS
    if quantile == 0.04:  # the threshold near the concepts' coverage: the planted maps segment them
        assert bool((result.best_iou[:5] > 0.35).all()), result.best_iou
        assert all(result.counts().get(name, 0) >= 1 for name in PLANTED), result.counts()


def per_image_iou(maps: torch.Tensor, masks: torch.Tensor, quantile: float) -> np.ndarray:
    """The paper's IoU one image and one unit at a time, with numpy's quantile."""
    units, concepts = maps.shape[1], masks.shape[1]
    flat = maps.transpose(0, 1).reshape(units, -1).double().numpy()
    thresholds = np.quantile(flat, 1 - quantile, axis=1)
    inter = np.zeros((units, concepts))
    union = np.zeros((units, concepts))
    for n in range(maps.shape[0]):
        up = functional.interpolate(maps[n : n + 1].float(), size=masks.shape[2:], mode="bilinear").numpy()[0]
        for u in range(units):
            on = up[u] > thresholds[u]
            for k in range(concepts):
                label = masks[n, k].numpy()
                inter[u, k] += np.logical_and(on, label).sum()
                union[u, k] += np.logical_or(on, label).sum()
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def test_iou_matches_a_per_image_loop() -> None:
    model = small_cnn(seed=2)
    concepts = fx.concept_dataset(12, size=16, seed=3)
    result = fx.network_dissection(model, concepts, layer="2", quantile=0.05, batch_size=5)
    maps = fx.layer_activations(model, concepts.images, layer="2")
    expected = per_image_iou(maps, concepts.masks, 0.05)
    np.testing.assert_allclose(result.iou.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        result.thresholds.double().numpy(),
        np.quantile(maps.transpose(0, 1).reshape(6, -1).double().numpy(), 0.95, axis=1),
        rtol=1e-5,
    )
    assert result.best.tolist() == expected.argmax(1).tolist()
    assert result.detectors.tolist() == (expected.max(1) > 0.04).tolist()


def test_thresholds_are_the_top_quantile() -> None:
    maps = torch.randn(7, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    thresholds = top_quantile_thresholds(maps, 0.1)
    expected = torch.quantile(maps.transpose(0, 1).reshape(3, -1), 0.9, dim=1)
    torch.testing.assert_close(thresholds, expected)
    exceeded = (maps > thresholds.view(1, -1, 1, 1)).float().mean((0, 2, 3))
    torch.testing.assert_close(exceeded, torch.full((3,), 0.1), atol=1 / 140, rtol=0)


def test_digits_cnn_through_an_input_adapter_leaves_the_model_as_found() -> None:
    from fastxai.digits import digits_cnn

    model = digits_cnn().train()
    before = model_state(model)
    concepts = fx.concept_dataset(16, seed=0)
    result = fx.network_dissection(
        model, concepts, layer="6", input_adapter=lambda x: functional.interpolate(x, size=8, mode="area")
    )
    assert result.iou.shape == (32, 9) and len(result.labels) == 32 and result.thresholds.shape == (32,)
    assert_same_state(before, model_state(model))
    handle = fail_at_call(model, 1)
    with pytest.raises(RuntimeError, match="crash"):
        fx.network_dissection(model, concepts, layer="6")
    handle.remove()
    assert_same_state(before, model_state(model))


def test_concept_masks_describe_the_pictures() -> None:
    data = fx.concept_dataset(160, max_objects=1, noise=0.0, seed=5)
    images, masks = data.images[:, 0], data.masks
    shape_masks, fill_masks = masks[:, : len(SHAPES)], masks[:, len(SHAPES) :]
    assert torch.equal(shape_masks.sum(1), fill_masks.sum(1)) and int(shape_masks.sum(1).max()) == 1
    assert bool((images[~shape_masks.any(1)] == 0).all())  # background: black
    names = list(CONCEPTS)
    for n in range(len(data)):
        shape = names[int(masks[n].flatten(1).any(1)[: len(SHAPES)].float().argmax())]
        fill = names[len(SHAPES) + int(fill_masks[n].flatten(1).any(1).float().argmax())]
        region = masks[n, names.index(shape)]
        rows, columns = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
        box = region[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        height, width = box.shape
        if shape != "disc":
            assert bool(box.all())  # squares and bars fill their bounding box
        if shape == "square":
            assert abs(height - width) <= 1
        elif shape == "horizontal_bar":
            assert width > 1.5 * height
        elif shape == "vertical_bar":
            assert height > 1.5 * width
        else:
            assert abs(height - width) <= 1 and not bool(box.all())
        values = images[n][region]
        patch = images[n, rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        if fill == "dim":
            assert bool(((values >= 0.4) & (values <= 0.6)).all()) and values.unique().numel() == 1
        elif fill == "bright":
            assert bool((values >= 0.85).all()) and values.unique().numel() == 1
        elif shape != "disc":
            assert values.unique().numel() == 2 and float(values.min()) == 0.0
            rows_constant = bool((patch == patch[:, :1]).all())
            columns_constant = bool((patch == patch[:1]).all())
            assert (rows_constant, columns_constant) == {
                "horizontal_stripes": (True, False),
                "vertical_stripes": (False, True),
                "checkerboard": (False, False),
            }[fill] or min(height, width) < 4


def test_concept_dataset_is_seeded() -> None:
    first, again = fx.concept_dataset(8, seed=0), fx.concept_dataset(8, seed=0)
    other = fx.concept_dataset(8, seed=1)
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    assert not torch.equal(first.images, other.images)
    assert first.images.dtype == torch.float32 and first.masks.dtype == torch.bool
    assert float(first.images.min()) >= 0 and float(first.images.max()) <= 1


IMAGES = torch.rand(4, 1, 16, 16)


class Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.linear = nn.Linear(16 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flat(x))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"quantile": 0.0}, ValueError, "quantile must be a number in"),
        ({"quantile": 1.5}, ValueError, "quantile must be a number in"),
        ({"iou_threshold": -0.1}, ValueError, "iou_threshold must be"),
        ({"input_adapter": 3}, TypeError, "input_adapter must be None or a callable"),
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        ({"layer": "nope"}, ValueError, "is not a submodule"),
        ({"concepts": "shapes"}, TypeError, "concepts must be None, a ConceptDataset"),
        ({"concepts": (IMAGES, torch.zeros(3, 2, 16, 16, dtype=torch.bool))}, ValueError, "N = 4"),
        ({"concepts": (IMAGES, torch.full((4, 2, 16, 16), 0.5))}, ValueError, "only 0 and 1"),
        ({"concepts": (IMAGES, torch.zeros(4, 2, 16, 16), ["a"])}, ValueError, "2 strings"),
    ],
)
def test_bad_input_is_refused_before_the_model_runs(kwargs: dict, error: type, message: str) -> None:
    model = Dense()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    arguments = {"layer": "flat", "concepts": fx.concept_dataset(4, size=16)} | kwargs
    with pytest.raises(error, match=message):
        fx.network_dissection(model, **arguments)
    assert not calls


def test_a_layer_without_maps_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a layer with 2-d activation maps"):
        fx.network_dissection(Dense(), fx.concept_dataset(4, size=16), layer="linear")
