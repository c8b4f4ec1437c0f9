"""The Captum perturbation classes on Captum's less common forms, side by side with Captum:
integer inputs, forwards that aggregate the batch, several outputs with target=None, the
progress bar, Lime's pluggable parts, futures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastxai.compat._captum_lime import Lime
from fastxai.compat._captum_perturbation import FeatureAblation, Occlusion, ShapleyValueSampling

captum_attr = pytest.importorskip("captum.attr")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_integer_inputs_reach_the_forward_as_integers_like_captum() -> None:
    seen: list[torch.dtype] = []

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        seen.append(tokens.dtype)
        return (tokens * torch.tensor([1, -2, 3, 5])).sum(1)  # integer scores

    tokens = torch.tensor([[3, 1, 4, 1], [5, 9, 2, 6]])
    ours = FeatureAblation(forward).attribute(tokens)
    theirs = captum_attr.FeatureAblation(forward).attribute(tokens)
    assert set(seen) == {torch.int64}
    assert ours.dtype == theirs.dtype == torch.int64
    torch.testing.assert_close(ours, theirs)
    # a float baseline makes the perturbed inputs float, as Captum's blend does (Captum itself
    # then fails to add float score drops into its int64 attributions; ours are float)
    seen.clear()
    drops = FeatureAblation(forward).attribute(tokens, baselines=0.5)
    assert torch.float32 in seen
    torch.testing.assert_close(drops, (tokens - 0.5) * torch.tensor([1.0, -2.0, 3.0, 5.0]))


@pytest.mark.parametrize(
    "aggregate",
    [
        lambda out: out.sum(),
        lambda out: out.sum().item(),
        lambda out: out.sum().reshape(1),
        lambda out: out.sum(0, keepdim=True),  # [1, K]: one attribution row per output
    ],
)
def test_forward_aggregating_the_batch_matches_captum(aggregate) -> None:  # type: ignore[no-untyped-def]
    model = _mlp()
    x = torch.randn(3, 4)
    mask = torch.tensor([[0, 0, 1, 2]])
    ours = FeatureAblation(lambda inp: aggregate(model(inp))).attribute(x, feature_mask=mask)
    theirs = captum_attr.FeatureAblation(lambda inp: aggregate(model(inp))).attribute(x, feature_mask=mask)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_aggregate_forward_refuses_several_copies_per_call_before_scoring() -> None:
    model = _mlp()
    with pytest.raises((ValueError, AssertionError), match="perturbations_per_eval"):
        FeatureAblation(lambda inp: model(inp).sum()).attribute(torch.randn(2, 4), perturbations_per_eval=2)


def test_shapley_target_none_attributes_every_output_exactly() -> None:
    """Three groups, 6 orders: with n_samples covering all orders in antithetic pairs the
    estimate is not exact, but on a model additive over the inputs every order gives the same
    marginals, so the values are exact: compare with Captum's exact ShapleyValues."""
    linear = nn.Linear(3, 2).eval()
    x = torch.randn(2, 3)
    ours = ShapleyValueSampling(linear).attribute(x, n_samples=4, seed=0)
    theirs = captum_attr.ShapleyValues(linear).attribute(x)
    assert ours.shape == theirs.shape == (2, 2, 3)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_show_progress_prints_a_complete_tqdm_bar(capsys: pytest.CaptureFixture[str]) -> None:
    FeatureAblation(_mlp()).attribute(torch.randn(2, 4), target=1, show_progress=True)
    assert "Feature Ablation attribution: 100%" in capsys.readouterr().err


def test_occlusion_of_inputs_without_feature_dimensions_matches_captum() -> None:
    def forward(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 2 * a - b * a

    a, b = torch.tensor([1.0, -3.0]), torch.tensor([0.5, 2.0])
    ours = Occlusion(forward).attribute((a, b), sliding_window_shapes=((), ()))
    theirs = captum_attr.Occlusion(forward).attribute((a, b), sliding_window_shapes=((), ()))
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference)


def test_lime_custom_kernel_and_sampler_equal_the_batched_path() -> None:
    """Captum's contract for similarity_func and perturb_func, called per sample: a similarity
    that computes Captum's cosine kernel gives the batched kernel's coefficients on the same
    samples; a perturb_func is called n_samples times per example with Captum's kwargs."""
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    model = _mlp()
    x = torch.randn(2, 4)
    kernel = get_exp_kernel_similarity_function("cosine", 2.0)

    def own_kernel(original, perturbed, interpretable, **kwargs):  # type: ignore[no-untyped-def]
        return kernel(original, perturbed, interpretable)

    fast = Lime(model, SkLearnLinearRegression(), kernel).attribute(x, target=0, n_samples=40, seed=5)
    slow = Lime(model, SkLearnLinearRegression(), own_kernel).attribute(x, target=0, n_samples=40, seed=5)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)

    calls: list[dict] = []

    def sampler(original, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs)
        return torch.tensor([[1, 0, 1, 1]]) if len(calls) % 2 else torch.tensor([[0, 1, 1, 0]])

    Lime(model, perturb_func=sampler).attribute(x, target=0, n_samples=6)
    assert len(calls) == 12 and calls[0]["num_interp_features"] == 4


def test_futures_on_feature_ablation_and_not_on_occlusion() -> None:
    model = _mlp()

    def future_forward(inp: torch.Tensor) -> torch.futures.Future:
        future: torch.futures.Future = torch.futures.Future()
        future.set_result(model(inp))
        return future

    x = torch.randn(2, 4)
    result = FeatureAblation(future_forward).attribute_future(x, target=1).wait()
    torch.testing.assert_close(result, captum_attr.FeatureAblation(model).attribute(x, target=1))
    with pytest.raises(AssertionError):
        FeatureAblation(future_forward).attribute(x, target=1)
    with pytest.raises(NotImplementedError):
        Occlusion(model).attribute_future(x, sliding_window_shapes=(1,))


class _SparseModel(nn.Module):
    """Dense features [B, 3] and one index list [L] whose bag sum is shared by the batch (the
    shape of a recommender's sparse input), scored as one number for the whole batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dense = nn.Linear(3, 1)
        self.bag = nn.EmbeddingBag(10, 1, mode="sum")

    def forward(self, dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        offsets = torch.zeros(1, dtype=torch.long)
        bag = self.bag(indices.long(), offsets) if indices.numel() else torch.zeros(1, 1)
        return (torch.tanh(self.dense(dense)) * (1 + bag)).sum()


_CLASSES = {
    "FeatureAblation": {},
    "ShapleyValueSampling": {"n_samples": 4},
    "ShapleyValues": {},
    "KernelShap": {"n_samples": 200},  # >= 2**4 - 2 coalitions: exact Shapley values
}


@pytest.mark.parametrize("name", sorted(_CLASSES))
def test_sparse_inputs_of_other_row_counts_match_captum(name: str) -> None:
    from fastxai.compat import captum as fc

    model = _SparseModel()
    dense = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    indices = torch.tensor([1, 7, 2, 4, 5, 3, 6])
    options = _CLASSES[name]
    reference = name
    cases = [
        (None, None),
        ((torch.tensor([[0, 0, 1]]), torch.tensor(2)), (torch.full((1, 3), 0.5), 9)),
    ]
    if name == "ShapleyValueSampling":  # two groups: an order and its reverse are every order
        cases = [((torch.tensor([0, 1, 1]), torch.tensor(0)), baselines) for _, baselines in cases]
    for mask, baselines in cases:
        kwargs = {"feature_mask": mask, "baselines": baselines, **options}
        ours = getattr(fc, name)(model).attribute((dense, indices), **kwargs)
        if name in ("KernelShap", "ShapleyValueSampling"):  # Captum's draws: compare with exact values
            reference, kwargs = "ShapleyValues", {"feature_mask": mask, "baselines": baselines}
        theirs = getattr(captum_attr, reference)(model).attribute((dense, indices), **kwargs)
        for mine, captum in zip(ours, theirs, strict=True):
            assert mine.shape == captum.shape  # (1, 3) and (1,): one row for the batch, as in Captum
            torch.testing.assert_close(mine, captum, rtol=1e-5, atol=1e-5)


def test_sparse_inputs_need_an_aggregating_forward_and_masks_that_span_the_rows() -> None:
    from fastxai.compat import captum as fc
    from fastxai.compat._captum_games import AggregateOutputError

    dense, indices = torch.randn(2, 3), torch.tensor([1, 7, 2])
    per_example = fc.FeatureAblation(lambda d, i: d.sum(1) + i.float().sum())
    with pytest.raises(AggregateOutputError, match=r"inputs have \[2, 3\] rows"):
        per_example.attribute((dense, indices))
    model = _SparseModel()
    with pytest.raises(ValueError, match=r"feature_mask\[1\] has 3 rows"):
        fc.FeatureAblation(model).attribute(
            (dense, indices), feature_mask=(torch.tensor([[0, 1, 2]]), torch.tensor([3, 4, 4]))
        )
    with pytest.raises(ValueError, match=r"baselines\[0\] has shape \(4,\)"):
        fc.FeatureAblation(model).attribute((dense, indices), baselines=(torch.zeros(4), 0))
    # an input without rows: its feature is never present, its attribution 0
    empty = fc.FeatureAblation(model).attribute((dense, torch.tensor([])))
    assert empty[1].shape == (1,) and empty[1].item() == 0.0


def test_feature_permutation_permutes_each_sparse_input_along_its_own_rows() -> None:
    from fastxai.compat import captum as fc

    # the score depends on the first index only: permuting the 7 indices moves it, permuting the
    # dense rows does not change the sum over the batch
    def model(dense: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return dense.sum() + 2.0 * indices[0]

    dense, indices = torch.randn(2, 3), torch.tensor([1.0, 7.0, 2.0, 4.0, 5.0, 3.0, 6.0])
    method = fc.FeaturePermutation(model)
    draws = torch.stack([method.attribute((dense, indices), seed=seed)[1] for seed in range(300)])
    assert torch.equal(method.attribute((dense, indices), seed=3)[1], draws[3])  # seeded
    # 2 * (1 - indices[p(0)]) over the permutations that are not the identity: mean -6 + 1/5039...
    values = set(draws.reshape(-1).tolist())
    assert values <= {2.0 * (1.0 - v) for v in indices[1:].tolist()} | {0.0} and len(values) >= 5
    assert abs(draws.mean().item() + 6.0) < 0.5  # sd of the mean: 4 / sqrt(300) = 0.23
    dense_attr = method.attribute((dense, indices), seed=0)[0]
    torch.testing.assert_close(dense_attr, torch.zeros(1, 3))
    # a custom perm_func is called per input on its own rows, as Captum calls it
    flip = lambda x, mask: torch.where(mask, x.flip(0), x)  # noqa: E731
    ours = fc.FeaturePermutation(model, perm_func=flip).attribute((dense, indices))
    theirs = captum_attr.FeaturePermutation(model, perm_func=flip).attribute((dense, indices))
    for mine, captum in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, captum)
    # an input with fewer than two rows is not permuted (attribution 0), as in Captum
    short = fc.FeaturePermutation(model).attribute((dense, indices[:1]), seed=0)
    assert short[1].shape == (1,) and short[1].item() == 0.0
