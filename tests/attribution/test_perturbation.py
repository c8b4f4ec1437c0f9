"""Occlusion and feature ablation: Captum's numbers, closed-form oracles, chunking, backends,
bad input and the model left as found."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from models import LinearModel, assert_same_state, model_state, small_cnn

import fastxai.attribution.perturbation as perturbation_module
from fastxai.attribution.perturbation import feature_ablation, occlusion

WINDOWS = [
    # (sliding_window_shapes, strides): tiling grids use ops.occlude, the others clipped edge windows
    pytest.param((1, 3, 3), (1, 2, 2), id="3x3-stride2-tiles"),
    pytest.param((1, 3, 3), None, id="3x3-stride1"),
    pytest.param((1, 2, 2), 2, id="2x2-stride2-clipped"),
    pytest.param((1, 4, 2), (1, 3, 1), id="4x2-mixed-clipped"),
    pytest.param((1, 9, 9), 1, id="whole-input"),
]


@pytest.mark.parametrize(("window", "strides"), WINDOWS)
@pytest.mark.parametrize("baselines", [None, 0.5, "per-sample"])
def test_occlusion_against_captum(window: tuple[int, ...], strides: object, baselines: object) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = small_cnn(seed=3).eval()
    x = torch.randn(3, 1, 9, 9)
    target = torch.tensor([1, 4, 7])
    base = torch.randn(3, 1, 9, 9) if baselines == "per-sample" else baselines
    ours = occlusion(
        model, x, target, sliding_window_shapes=window, strides=strides, baselines=base, chunk_size=5
    )
    theirs = captum_attr.Occlusion(model).attribute(
        x, sliding_window_shapes=window, strides=strides, baselines=base, target=target
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("window", "strides"), WINDOWS[:2] + WINDOWS[3:4])
def test_occlusion_spread_dense_and_per_dimension_agree(
    window: tuple[int, ...], strides: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Window drops reach the elements through one dense map on small grids and one contraction
    per dimension on large ones: the same means either way."""
    model = small_cnn(seed=3).eval()
    x = torch.randn(2, 1, 9, 9)
    dense = occlusion(model, x, 1, sliding_window_shapes=window, strides=strides)
    monkeypatch.setattr(perturbation_module, "_DENSE_SPREAD_ELEMENTS", 0)
    perturbation_module._spread.cache_clear()
    try:
        per_dimension = occlusion(model, x, 1, sliding_window_shapes=window, strides=strides)
    finally:
        perturbation_module._spread.cache_clear()
    torch.testing.assert_close(per_dimension, dense)


def test_occlusion_3d_window_against_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = small_cnn(seed=4, channels=3).eval()
    x = torch.randn(2, 3, 8, 7)
    kwargs = {"sliding_window_shapes": (2, 3, 3), "strides": (1, 2, 2), "target": 2}
    ours = occlusion(model, x, **kwargs)
    theirs = captum_attr.Occlusion(model).attribute(x, **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_occlusion_linear_oracle() -> None:
    """For f = w.x + c, a window W drops f by sum_{j in W} w_j (x_j - b_j); an element's value is
    the mean of that over the windows covering it, here written out with explicit loops."""
    model = LinearModel(10, 2)
    x = torch.randn(2, 10, dtype=torch.float64)
    base = torch.randn(2, 10, dtype=torch.float64)
    got = occlusion(model, x, 1, sliding_window_shapes=(4,), strides=(4,), baselines=base)
    contribution = model.weight[1].detach() * (x - base)
    expected = torch.zeros_like(x)
    count = torch.zeros(10, dtype=torch.float64)
    for start in (0, 4, 8):  # ceil((10 - 4) / 4) + 1 = 3 windows, the last clipped to [8, 10)
        drop = contribution[:, start : start + 4].sum(1, keepdim=True)
        expected[:, start : start + 4] += drop
        count[start : start + 4] += 1
    torch.testing.assert_close(got, expected / count)


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_occlusion_independent_of_chunk_size(chunk_size: int) -> None:
    model = small_cnn(seed=5).eval()
    x = torch.randn(3, 1, 8, 8)
    kwargs = {"sliding_window_shapes": (1, 3, 3), "strides": 2, "target": 3}
    reference = occlusion(model, x, **kwargs, chunk_size=None)
    torch.testing.assert_close(occlusion(model, x, **kwargs, chunk_size=chunk_size), reference)


@pytest.mark.parametrize(
    "mask_kind", ["default", "superpixels-shared", "superpixels-broadcast", "per-sample", "row-1"]
)
def test_feature_ablation_against_captum(mask_kind: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = small_cnn(seed=6, channels=2).eval()
    x = torch.randn(3, 2, 6, 6)
    target = torch.tensor([0, 5, 9])
    base = torch.randn(1, 2, 6, 6)
    cells = (torch.arange(6) // 2).view(-1, 1) * 3 + (torch.arange(6) // 2).view(1, -1)  # 9 superpixels
    masks = {
        "default": None,
        "superpixels-shared": torch.stack([cells, cells + 9]),  # [2, 6, 6], per channel
        "superpixels-broadcast": cells.view(1, 1, 6, 6),  # both channels together
        "per-sample": torch.randint(0, 7, (3, 2, 6, 6), generator=torch.Generator().manual_seed(0)),
        "row-1": torch.stack([cells, cells + 9]).unsqueeze(0),
    }
    mask = masks[mask_kind]
    if mask_kind == "per-sample":
        mask[0, 0, 0, 0], mask[1, 0, 0, 0] = 0, 6  # every id 0..6 used somewhere
    ours = feature_ablation(model, x, target, baselines=base, feature_mask=mask, chunk_size=11)
    # Captum wants the mask with inputs' number of dims (a leading 1 for a shared mask)
    their_mask = mask.unsqueeze(0) if mask is not None and mask.dim() == 3 else mask
    theirs = captum_attr.FeatureAblation(model).attribute(
        x, baselines=base, target=target, feature_mask=their_mask, perturbations_per_eval=3
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_feature_ablation_linear_oracle() -> None:
    model = LinearModel(6, 3)
    x = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.tensor([0, 0, 1, 2, 2, 2])
    got = feature_ablation(model, x, 2, baselines=1.5, feature_mask=mask)
    contribution = model.weight[2].detach() * (x - 1.5)
    group_sum = torch.stack([contribution[:, mask == g].sum(1) for g in range(3)], dim=1)
    torch.testing.assert_close(got, group_sum[:, mask])


def test_feature_ablation_chunk_size_and_predicted_target() -> None:
    model = small_cnn(seed=7).eval()
    x = torch.randn(4, 1, 5, 5)
    predicted = model(x).argmax(1)
    before = x.clone()
    reference = feature_ablation(model, x, predicted)
    for chunk_size in (1, 3, 17):  # 1: blocks of one copy, which must still be new tensors
        torch.testing.assert_close(feature_ablation(model, x, None, chunk_size=chunk_size), reference)
        assert torch.equal(x, before)


@pytest.mark.parametrize(("backend", "device"), backend_params())
def test_backends_agree_with_reference(backend: str, device: str) -> None:
    model = small_cnn(seed=8).eval().to(device)
    x = torch.randn(2, 1, 7, 7, device=device)
    mask = (torch.arange(49, device=device) % 6).view(1, 7, 7)
    for method, kwargs in (
        (occlusion, {"sliding_window_shapes": (1, 3, 3), "strides": (1, 2, 2)}),
        (occlusion, {"sliding_window_shapes": (1, 2, 2), "strides": (1, 2, 2)}),
        (feature_ablation, {"feature_mask": mask, "baselines": 0.2}),
    ):
        expected = method(model, x, 1, backend="reference", **kwargs)
        torch.testing.assert_close(method(model, x, 1, backend=backend, **kwargs), expected)


def test_model_state_restored_also_on_error() -> None:
    model = small_cnn(seed=9)
    model.train()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 1, 6, 6)
    occlusion(model, x, 1, sliding_window_shapes=(1, 2, 2), strides=2)
    feature_ablation(model, x, 1)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        feature_ablation(model, x, 99)
    assert_same_state(before, model_state(model))


def _counting_model() -> tuple[torch.nn.Module, list[int]]:
    calls: list[int] = []
    model = small_cnn(seed=10).eval()
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return model, calls


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sliding_window_shapes": (1, 7, 3)}, "sliding_window_shapes"),
        ({"sliding_window_shapes": (3, 3)}, "sliding_window_shapes"),
        ({"sliding_window_shapes": (1, 2.0, 2)}, "sliding_window_shapes"),
        ({"sliding_window_shapes": (1, 2, 2), "strides": (1, 3, 1)}, "strides"),
        ({"sliding_window_shapes": (1, 2, 2), "strides": 0}, "strides"),
        ({"sliding_window_shapes": (1, 2, 2), "strides": (1, 1)}, "strides"),
        ({"sliding_window_shapes": (1, 2, 2), "baselines": torch.zeros(2, 6, 6)}, "baselines"),
        ({"sliding_window_shapes": (1, 2, 2), "chunk_size": 0}, "chunk_size"),
    ],
)
def test_occlusion_bad_input_before_any_model_call(kwargs: dict, match: str) -> None:
    model, calls = _counting_model()
    with pytest.raises((ValueError, TypeError), match=match):
        occlusion(model, torch.randn(2, 1, 6, 6), 1, **kwargs)
    assert calls == []


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.zeros(6, 6, dtype=torch.long), "feature_mask must have shape"),
        (torch.zeros(1, 6, 6), "integer"),
        (torch.zeros(1, 6, 6, dtype=torch.bool), "integer"),
        (torch.tensor([0, 2]).repeat(18).view(1, 6, 6), "gaps"),
        (torch.full((1, 6, 6), -2), ">= 0"),
        (torch.full((1, 6, 6), -1), "every element -1"),
        (torch.zeros(3, 1, 6, 6, dtype=torch.long), "feature_mask must have shape"),
        ([[0, 1]], "torch.Tensor"),
    ],
)
def test_feature_ablation_bad_mask_before_any_model_call(mask: object, match: str) -> None:
    model, calls = _counting_model()
    with pytest.raises((ValueError, TypeError), match=match):
        feature_ablation(model, torch.randn(2, 1, 6, 6), 1, feature_mask=mask)
    assert calls == []


def test_occlusion_runs_big_batches() -> None:
    model, calls = _counting_model()
    occlusion(model, torch.randn(2, 1, 6, 6), 1, sliding_window_shapes=(1, 2, 2), strides=2, chunk_size=8)
    assert max(calls) == 8
    assert sum(calls) == 2 * (9 + 1)  # the input and 9 windows per sample: no separate target probe


@pytest.mark.parametrize("chunk_size", [1, 2, 7, None])
def test_occlusion_predicted_target_from_the_scoring_pass(chunk_size: int | None) -> None:
    # target=None reads the predicted class off copy 0 (the input itself) of the scoring pass
    model, calls = _counting_model()
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    calls.clear()
    kwargs = {"sliding_window_shapes": (1, 2, 2), "strides": 2, "chunk_size": chunk_size}
    got = occlusion(model, x, None, **kwargs)
    assert sum(calls) == 5 * (9 + 1)  # no extra forward for the prediction
    torch.testing.assert_close(got, occlusion(model, x, predicted, **kwargs))


@pytest.mark.parametrize("method", ["occlusion", "occlusion-clipped", "feature_ablation"])
@pytest.mark.parametrize("target", [10, -1, torch.tensor([0, 10])])
def test_out_of_range_target_checked_on_the_first_batch(method: str, target: object) -> None:
    model, calls = _counting_model()
    model.train()
    before = model_state(model)
    x = torch.randn(2, 1, 6, 6)
    kwargs: dict = {
        "occlusion": {"sliding_window_shapes": (1, 2, 2), "strides": 2},
        "occlusion-clipped": {"sliding_window_shapes": (1, 3, 3), "strides": 2},
        "feature_ablation": {},
    }[method]
    function = feature_ablation if method == "feature_ablation" else occlusion
    with pytest.raises(ValueError, match=r"target must be in \[0, 10\)"):
        function(model, x, target, chunk_size=4, **kwargs)
    assert calls == [4]  # one model batch, then the error
    assert_same_state(before, model_state(model))


def test_copies_built_by_the_op_implementation_directly() -> None:
    # the methods build their arguments from validated inputs and call the op's implementation
    # (no public-op checks per call); results match across chunkings
    from fastxai import ops

    x = torch.randn(3, 1, 6, 6)
    base = torch.zeros_like(x)
    mask = (torch.arange(36) % 5).view(1, 6, 6)
    keep = torch.rand(3, 4, 5)
    fast = ops._unchecked("masked_blend", "reference", x)
    assert torch.equal(fast(x, base, mask, keep), ops.masked_blend(x, base, mask, keep, backend="reference"))
    model = small_cnn(seed=11).eval()
    reference = feature_ablation(model, x, 2, feature_mask=mask, chunk_size=1000)
    for chunk_size in (1, 2, 5):
        got = feature_ablation(model, x, 2, feature_mask=mask, chunk_size=chunk_size)
        torch.testing.assert_close(got, reference)  # model batches differ: float tolerance


@pytest.mark.parametrize(
    ("build_elements", "per_build"),
    [(1, 2), (300, 2), (500, 4), (1 << 22, 1 << 22)],  # copies: 2 (one model batch), 2, 500 // 108 -> 4, all
)
@pytest.mark.parametrize("method", ["feature_ablation", "occlusion", "occlusion-clipped"])
def test_copies_built_in_blocks_scored_in_whole_copy_batches(
    monkeypatch: pytest.MonkeyPatch, build_elements: int, per_build: int, method: str
) -> None:
    """On the CPU one op call (one build, for feature ablation) builds the copies of several
    model batches (up to BUILD_ELEMENTS elements); the model still gets batches of whole
    copies, at most chunk_size rows, the same batches whatever the build size, so the results
    are bit-identical."""
    from fastxai.attribution import _perturbation

    monkeypatch.setattr(_perturbation, "BUILD_ELEMENTS", build_elements)
    op_calls: list[int] = []
    original = _perturbation.FusedOp.__call__

    def counted(self: _perturbation.FusedOp, *args: object, **options: object) -> torch.Tensor:
        op_calls.append(1)
        return original(self, *args, **options)

    monkeypatch.setattr(_perturbation.FusedOp, "__call__", counted)
    original_ablate = _perturbation.ablate

    def counted_ablate(*args: torch.Tensor) -> _perturbation.Perturb:  # feature ablation's builder
        perturb = original_ablate(*args)
        return lambda *block: (op_calls.append(1), perturb(*block))[1]

    monkeypatch.setattr(_perturbation, "ablate", counted_ablate)
    model, calls = _counting_model()
    x = torch.randn(3, 1, 6, 6)  # 3 rows of 36 elements; chunk_size 7: two copies (6 rows) per batch
    kwargs: dict = {
        "feature_ablation": {"feature_mask": (torch.arange(36) % 5).view(1, 6, 6)},  # 6 copies
        "occlusion": {"sliding_window_shapes": (1, 2, 6), "strides": 1},  # 5 windows: 6 copies
        "occlusion-clipped": {"sliding_window_shapes": (1, 2, 5), "strides": (1, 2, 2)},  # 7 copies
    }[method]
    function = feature_ablation if method == "feature_ablation" else occlusion
    got = function(model, x, 1, chunk_size=7, **kwargs)
    copies = sum(calls) // 3
    assert copies == (7 if method == "occlusion-clipped" else 6)
    assert calls == [6] * (copies // 2) + [3] * (copies % 2)  # whole copies, at most chunk_size rows
    assert len(op_calls) == -(-copies // per_build)
    monkeypatch.setattr(_perturbation, "BUILD_ELEMENTS", 1)
    calls.clear()
    assert torch.equal(function(model, x, 1, chunk_size=7, **kwargs), got)
    torch.testing.assert_close(function(model, x, 1, chunk_size=3, **kwargs), got)


def test_integer_inputs_reach_the_model_as_integers() -> None:
    """Token ids: attributed as floats, the model sees int64 copies (an int baseline), or float
    ones under a float baseline (Captum's blend dtype)."""
    weights = torch.tensor([1, -2, 3, 5])
    seen: list[torch.dtype] = []

    def model(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens.dtype)
        return (tokens * weights).sum(1, keepdim=True)

    tokens = torch.tensor([[3, 1, 4, 1], [5, 9, 2, 6]])
    drops = feature_ablation(model, tokens, 0)
    assert set(seen) == {torch.int64} and drops.dtype == torch.get_default_dtype()
    torch.testing.assert_close(drops, (tokens * weights).float())
    seen.clear()
    torch.testing.assert_close(feature_ablation(model, tokens, 0, baselines=0.5), (tokens - 0.5) * weights)
    assert set(seen) == {torch.float32}
