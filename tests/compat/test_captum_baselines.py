"""TokenReferenceBase and ProductBaselines against Captum's own, and the perturbation classes
refusing a ProductBaselines as Captum's do."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat.captum")


class TextNet(nn.Module):
    """Token ids [B, L] -> embeddings -> mean over positions -> [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(11, 6, padding_idx=1)
        self.head = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).mean(1))


@pytest.mark.parametrize(("index", "length"), [(0, 7), (1, 1), (10, 0)])
def test_token_reference_matches_captum(index: int, length: int) -> None:
    device = torch.device("cpu")
    ours = fc.TokenReferenceBase(reference_token_idx=index).generate_reference(length, device)
    theirs = captum_attr.TokenReferenceBase(reference_token_idx=index).generate_reference(length, device)
    assert ours.dtype == torch.long and ours.device == device and ours.shape == (length,)
    assert ours.tolist() == theirs.tolist() == [index] * length
    # Captum's empty reference is float32 (torch.tensor([])); fastxai's stays token ids
    assert theirs.dtype == (torch.long if length else torch.float32)
    assert fc.TokenReferenceBase().generate_reference(3, "cpu").tolist() == [0, 0, 0]  # Captum's default


def test_token_reference_as_baseline_of_layer_integrated_gradients() -> None:
    model = TextNet().eval()
    ids = torch.randint(2, 11, (2, 5))
    reference = fc.TokenReferenceBase(reference_token_idx=1).generate_reference(5, ids.device).unsqueeze(0)
    before = model_state(model)
    ours, delta = fc.LayerIntegratedGradients(model, model.embedding).attribute(
        ids, reference.expand(2, -1), target=2, n_steps=16, return_convergence_delta=True
    )
    assert_same_state(before, model_state(model))
    theirs = captum_attr.LayerIntegratedGradients(model, model.embedding).attribute(
        ids, reference.expand(2, -1), target=2, n_steps=16
    )
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert delta.abs().max() < 1e-4  # completeness: the padding embedding is the path's start


def test_token_reference_bad_input() -> None:
    for bad in (1.5, True, "0", None):
        with pytest.raises(TypeError, match="reference_token_idx"):
            fc.TokenReferenceBase(reference_token_idx=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reference_token_idx"):
        fc.TokenReferenceBase(-1)
    base = fc.TokenReferenceBase(2)
    with pytest.raises(TypeError, match="sequence_length"):
        base.generate_reference(3.0, "cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sequence_length"):
        base.generate_reference(-2, "cpu")


LIST_VALUES = [[1, 2, 3], [4.0, 5.0, 6.0, 7.0], ["a", "b"]]
DICT_VALUES = {("f1", "f2"): [(1, "1"), (2, "2"), (3, "3")], "f3": [4, 5], "f4": [torch.zeros(2), 9]}


@pytest.mark.parametrize("values", [LIST_VALUES, DICT_VALUES, {"f1": [1, 2, 3], "f2": [4, 5]}])
def test_product_baselines_draw_as_captum_under_the_same_seed(values: object) -> None:
    # both draw from Python's random module, so a seed gives the same samples draw for draw
    ours, theirs = fc.ProductBaselines(values), captum_attr.ProductBaselines(values)  # type: ignore[arg-type]
    random.seed(7)
    drawn = [ours() for _ in range(20)]
    random.seed(7)
    expected = [theirs() for _ in range(20)]
    assert repr(drawn) == repr(expected)  # values include tensors: compared by their printed form
    assert ours.dict_keys == theirs.dict_keys and ours.baseline_values == theirs.baseline_values


def test_product_baselines_cover_the_product_uniformly() -> None:
    # brute force: every element of the Cartesian product turns up, about equally often
    random.seed(0)
    sampler = fc.ProductBaselines([[0, 1, 2], [10, 11], [20, 21]])
    draws = [tuple(sampler()) for _ in range(1200)]
    product = set(itertools.product([0, 1, 2], [10, 11], [20, 21]))
    assert set(draws) == product
    counts = [draws.count(element) for element in product]
    assert max(counts) < 2 * min(counts)  # expected 100 each; a binomial sd of about 10
    # grouped features stay together; a dict draw has one entry per name
    grouped = fc.ProductBaselines(DICT_VALUES)
    for _ in range(20):
        sample = grouped()
        assert isinstance(sample, dict) and set(sample) == {"f1", "f2", "f3", "f4"}
        assert (sample["f1"], sample["f2"]) in DICT_VALUES[("f1", "f2")]
        assert sample["f3"] in (4, 5)


def test_product_baselines_bad_input() -> None:
    with pytest.raises(TypeError, match="baseline_values"):
        fc.ProductBaselines("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"baseline_values\[1\]"):
        fc.ProductBaselines([[1, 2], 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"baseline_values\[0\] is empty"):
        fc.ProductBaselines([[], [1]])
    with pytest.raises(ValueError, match=r"baseline_values\['f2'\] is empty"):
        fc.ProductBaselines({"f1": [1], "f2": []})
    with pytest.raises(ValueError, match="tuples of 2 values"):
        fc.ProductBaselines({("f1", "f2"): [(1, 2), (3,)]})


PERTURBATION = {
    "FeatureAblation": {},
    "Occlusion": {"sliding_window_shapes": (2,)},
    "ShapleyValueSampling": {"n_samples": 2},
    "KernelShap": {"n_samples": 8},
    "Lime": {"n_samples": 8},
}


@pytest.mark.parametrize("name", list(PERTURBATION))
def test_perturbation_classes_refuse_product_baselines_as_captum(name: str) -> None:
    # Captum 0.9 takes ProductBaselines only in LLMAttribution's text templates: its perturbation
    # classes assert on it, and fastxai's raise a TypeError naming baselines (also an AssertionError)
    model = nn.Linear(4, 3)
    runs = []
    model.register_forward_pre_hook(lambda *_: runs.append(1))
    x = torch.randn(2, 4)
    sampler = fc.ProductBaselines([[0.0, 1.0]] * 4)
    with pytest.raises(AssertionError):
        getattr(captum_attr, name)(model).attribute(x, baselines=sampler, target=0, **PERTURBATION[name])
    runs.clear()
    with pytest.raises(TypeError, match="baselines must be a number or a tensor, got ProductBaselines"):
        getattr(fc, name)(model).attribute(x, baselines=sampler, target=0, **PERTURBATION[name])
    with pytest.raises(AssertionError, match=r"baselines\[1\]"):
        getattr(fc, name)(model).attribute(
            (x, x), baselines=(0.0, sampler), target=0, **_tuple_options(PERTURBATION[name])
        )
    assert not runs


def _tuple_options(options: dict[str, object]) -> dict[str, object]:
    """The options for two inputs (Occlusion's window: one per input)."""
    if "sliding_window_shapes" in options:
        return {**options, "sliding_window_shapes": ((2,), (2,))}
    return options
