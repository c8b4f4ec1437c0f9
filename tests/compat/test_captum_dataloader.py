"""``DataLoaderAttribution`` against Captum's own (with Captum's ``FeatureAblation``) on small
models and data: default and custom ``reduce`` / ``to_metric`` (same calls, same order under
Captum's schedule), input roles, masks across elements, baselines, aggregate forwards, every
``perturbations_per_pass``; ``fastxai.dataset_feature_ablation`` against brute force over the
whole data set; bad arguments named before any model call; the model left as found."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from models import assert_same_state, mlp, model_state
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fastxai
from fastxai.compat.captum import DataLoaderAttribution, FeatureAblation, InputRole, Saliency

captum_attr = pytest.importorskip("captum.attr")
captum_dl = pytest.importorskip("captum.attr._core.dataloader_attr")


def _captum(forward: Any, loader: DataLoader, **kwargs: Any) -> Any:
    return captum_dl.DataLoaderAttribution(captum_attr.FeatureAblation(forward)).attribute(loader, **kwargs)


def _ours(forward: Any, loader: DataLoader, **kwargs: Any) -> Any:
    return DataLoaderAttribution(FeatureAblation(forward)).attribute(loader, **kwargs)


def _close(ours: Any, theirs: Any) -> None:
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class TwoInputModel(nn.Module):
    """f(a, b, scale) = (W_a flatten(a) + tanh(W_b b)) * scale: a [B, 2, 3], b [B, 4], scale [B, 1]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(4, 3, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        return (self.a(a.flatten(1)) + torch.tanh(self.b(b))) * scale


def _classification(n: int = 11, features: int = 6, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g))


def _two_inputs(n: int = 9) -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(
        torch.randn(n, 2, 3, generator=g), torch.randn(n, 4, generator=g), torch.rand(n, 1, generator=g) + 0.5
    )


def _count_correct(accum: Any, output: torch.Tensor, inputs: tuple[Any, ...]) -> torch.Tensor:
    correct = (output.argmax(1) == inputs[1]).sum()
    return correct if accum is None else accum + correct


def _loss_state(accum: Any, output: torch.Tensor, inputs: tuple[Any, ...]) -> dict[str, Any]:
    accum = {"loss": 0.0, "n": 0} if accum is None else accum
    accum["loss"] = accum["loss"] + nn.functional.cross_entropy(output, inputs[1], reduction="sum")
    accum["n"] += len(output)
    return accum


def _loss_metric(accum: dict[str, Any]) -> torch.Tensor:
    return torch.stack([accum["loss"] / accum["n"], accum["loss"]])


# Captum's own DataLoaderAttribution as the oracle ----------------------------------------------


@pytest.mark.parametrize("per_pass", [1, 2, 4])
@pytest.mark.parametrize("return_input_shape", [True, False])
def test_default_reduce_matches_captum(per_pass: int, return_input_shape: bool) -> None:
    model = mlp(seed=3, features=6, hidden=8, classes=3).eval()
    loader = DataLoader(_classification(), batch_size=4)  # 4, 4, 3 rows
    kwargs = {
        "input_roles": (0, 2),
        "perturbations_per_pass": per_pass,
        "return_input_shape": return_input_shape,
    }
    _close(_ours(model, loader, **kwargs), _captum(model, loader, **kwargs))


@pytest.mark.parametrize("per_pass", [1, 3])
def test_masks_across_elements_baselines_and_forward_roles_match_captum(per_pass: int) -> None:
    model = TwoInputModel().eval()
    loader = DataLoader(_two_inputs(), batch_size=4)
    # group 2 spans both attributed elements; ids 5 and 6 unused (zero columns)
    mask = (torch.tensor([[[0, 0, 1], [2, 2, 1]]]), torch.tensor([[3, 2, 4, 7]]))
    baselines = (torch.full((1, 2, 3), 0.25), -0.5)
    kwargs: dict[str, Any] = {"input_roles": (0, 0, 1), "feature_mask": mask, "baselines": baselines}
    ours = _ours(model, loader, perturbations_per_pass=per_pass, **kwargs)
    _close(ours, _captum(model, loader, perturbations_per_pass=per_pass, **kwargs))
    flat = _ours(model, loader, return_input_shape=False, **kwargs)
    assert flat.shape == (9 * 3, 8) and not flat[:, 5:7].any()
    _close(flat, _captum(model, loader, return_input_shape=False, **kwargs))


def test_reduce_and_to_metric_calls_match_captum_call_for_call() -> None:
    """Under Captum's schedule (perturbations_per_pass > 1) reduce sees the same outputs and
    inputs in the same order, to_metric the same states."""
    model = mlp(seed=4, features=6, hidden=8, classes=3).eval()
    loader = DataLoader(_classification(), batch_size=4)

    def recorded(calls: list[Any]) -> Any:
        def reduce(accum: Any, output: torch.Tensor, inputs: tuple[Any, ...]) -> Any:
            calls.append((output.clone(), tuple(t.clone() for t in inputs)))
            return _loss_state(accum, output, inputs)

        return reduce

    ours_calls: list[Any] = []
    theirs_calls: list[Any] = []
    kwargs: dict[str, Any] = {"input_roles": (0, 2), "to_metric": _loss_metric, "perturbations_per_pass": 4}
    ours = _ours(model, loader, reduce=recorded(ours_calls), **kwargs)
    theirs = _captum(model, loader, reduce=recorded(theirs_calls), **kwargs)
    _close(ours, theirs)
    assert len(ours_calls) == len(theirs_calls) == 3 * 7
    for (out_a, in_a), (out_b, in_b) in zip(ours_calls, theirs_calls, strict=True):
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)
        for a, b in zip(in_a, in_b, strict=True):
            torch.testing.assert_close(a, b.to(a.dtype))


def test_integer_metric_and_call_counts_match_captum() -> None:
    model = mlp(seed=5, features=6, hidden=8, classes=3).eval()
    loader = DataLoader(_classification(n=23), batch_size=5)
    counts = {"ours": [0, 0], "theirs": [0, 0]}

    def counted(key: str) -> tuple[Any, Any]:
        def reduce(accum: Any, output: torch.Tensor, inputs: tuple[Any, ...]) -> Any:
            counts[key][0] += 1
            return _count_correct(accum, output, inputs)

        def to_metric(accum: torch.Tensor) -> torch.Tensor:
            counts[key][1] += 1
            return accum

        return reduce, to_metric

    reduce, to_metric = counted("ours")
    ours = _ours(model, loader, input_roles=(0, 2), reduce=reduce, to_metric=to_metric)
    reduce, to_metric = counted("theirs")
    theirs = _captum(model, loader, input_roles=(0, 2), reduce=reduce, to_metric=to_metric)
    _close(ours, theirs)
    assert ours[0].dtype == torch.int64
    assert counts["ours"] == counts["theirs"] == [5 * 7, 7]


def test_forward_that_aggregates_the_batch_matches_captum() -> None:
    """A forward returning one number per batch is scored copy by copy."""
    model = mlp(seed=6, features=6, hidden=8, classes=3).eval()

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    def total(accum: Any, output: torch.Tensor, inputs: tuple[Any, ...]) -> torch.Tensor:
        return output if accum is None else accum + output

    loader = DataLoader(_classification(), batch_size=4)
    mask = torch.tensor([[0, 0, 1, 1, 2, 2]])
    kwargs: dict[str, Any] = {"input_roles": (0, 1), "reduce": total, "feature_mask": mask}
    _close(_ours(loss, loader, **kwargs), _captum(loss, loader, **kwargs))


def test_one_tensor_batches_and_captums_feature_ablation() -> None:
    """Batches that are one tensor (Captum's loop breaks on them) give Captum's numbers for the
    same data as a one-element TensorDataset; Captum's FeatureAblation is accepted too."""
    model = mlp(seed=7, features=6, hidden=8, classes=3).eval()
    x = _classification().tensors[0]
    ours = _ours(model, DataLoader(x, batch_size=4))
    assert isinstance(ours, torch.Tensor)
    theirs = _captum(model, DataLoader(TensorDataset(x), batch_size=4))
    _close(ours, theirs[0])
    wrapped = DataLoaderAttribution(captum_attr.FeatureAblation(model))
    _close(wrapped.attribute(DataLoader(TensorDataset(x), batch_size=4)), theirs)


def test_float64_data_and_use_weights_match_captum() -> None:
    model = mlp(seed=8, features=6, hidden=8, classes=3).double().eval()
    data = TensorDataset(_classification().tensors[0].double())
    loader = DataLoader(data, batch_size=4)
    _close(_ours(model, loader), _captum(model, loader))
    ours_fa, theirs_fa = FeatureAblation(model), captum_attr.FeatureAblation(model)
    ours_fa.use_weights = theirs_fa.use_weights = True
    ours = DataLoaderAttribution(ours_fa).attribute(loader)
    _close(ours, captum_dl.DataLoaderAttribution(theirs_fa).attribute(loader))


# the schedule: results never change, traversals as documented ---------------------------------


class CountingLoader(DataLoader):
    iterations = 0

    def __iter__(self) -> Any:
        type(self).iterations += 1
        return super().__iter__()


@pytest.mark.parametrize("per_pass", [1, 2, 3, 7])
def test_perturbations_per_pass_changes_traversals_not_results(per_pass: int) -> None:
    model = mlp(seed=9, features=7, hidden=8, classes=3).eval()
    loader = CountingLoader(_classification(features=7), batch_size=4)
    reference = _captum(model, DataLoader(_classification(features=7), batch_size=4), input_roles=(0, 2))
    CountingLoader.iterations = 0
    _close(_ours(model, loader, input_roles=(0, 2), perturbations_per_pass=per_pass), reference)
    # Captum's default 1: one traversal; n > 1: Captum's schedule (first batch, unperturbed, groups)
    assert CountingLoader.iterations == (1 if per_pass == 1 else math.ceil(7 / per_pass) + 2)


def test_state_budget_and_chunk_size_split_the_work_not_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastxai.attribution import dataset_ablation

    model = mlp(seed=10, features=7, hidden=8, classes=3).eval()
    loader = CountingLoader(_classification(features=7), batch_size=4)
    whole = fastxai.dataset_feature_ablation(model, loader, input_roles=(0, 2))
    # each concatenated state holds 11 x 3 float32: a budget of 2.5 states gives passes of 2 groups
    monkeypatch.setattr(dataset_ablation, "STATE_BYTES", int(2.5 * 11 * 3 * 4))
    CountingLoader.iterations = 0
    torch.testing.assert_close(
        fastxai.dataset_feature_ablation(model, loader, input_roles=(0, 2), chunk_size=5), whole
    )
    assert CountingLoader.iterations == math.ceil(7 / 2)


def test_one_shot_iterator_works_in_one_pass_and_is_refused_for_several() -> None:
    model = mlp(seed=11, features=6, hidden=8, classes=3).eval()
    batches = list(DataLoader(TensorDataset(_classification().tensors[0]), batch_size=4))
    whole = fastxai.dataset_feature_ablation(model, batches)
    torch.testing.assert_close(fastxai.dataset_feature_ablation(model, iter(batches)), whole)
    with pytest.raises(ValueError, match="re-iterable"):
        fastxai.dataset_feature_ablation(model, iter(batches), perturbations_per_pass=2)


# the functional form against brute force ------------------------------------------------------


def test_dataset_feature_ablation_is_the_metric_drop_over_the_whole_data() -> None:
    """a[m] = accuracy(D) - accuracy(D with group m at its baseline), evaluated on the whole
    data set at once; the model in train mode (dropout) is run in eval mode and left training."""
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    torch.manual_seed(12)
    data = _classification(n=40)
    x, y = data.tensors
    mask = torch.tensor([0, 1, 1, 2, 3, 3])
    baseline = x.mean(0, keepdim=True)
    before = model_state(model)
    drop = fastxai.dataset_feature_ablation(
        model, DataLoader(data, batch_size=16), input_roles=(0, 2), feature_mask=mask, baselines=baseline,
        reduce=_count_correct, to_metric=lambda n: n / len(x),
    )  # fmt: skip
    assert_same_state(before, model_state(model))
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean()
        expected = []
        for group in range(4):
            ablated = torch.where(mask == group, baseline, x)
            expected.append(accuracy - (model(ablated).argmax(1) == y).float().mean())
    torch.testing.assert_close(drop, torch.stack(expected))


def test_dataset_feature_ablation_default_metric_is_per_example_feature_ablation() -> None:
    model = mlp(seed=13, features=6, hidden=8, classes=3).eval()
    data = _classification()
    values = fastxai.dataset_feature_ablation(model, DataLoader(data, batch_size=4), input_roles=(0, 2))
    assert values.shape == (11, 3, 6)
    per_class = [fastxai.feature_ablation(model, data.tensors[0], target=c) for c in range(3)]
    torch.testing.assert_close(values, torch.stack(per_class, 1), rtol=1e-5, atol=1e-6)


# bad arguments, the model's state ---------------------------------------------------------------


class Counted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(seed=14, features=6, hidden=8, classes=3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"input_roles": (0,)}, ValueError, "input_roles"),
        ({"input_roles": (0, 3)}, ValueError, "input_roles"),
        ({"input_roles": (2, 2)}, ValueError, "input_roles"),
        ({"input_roles": "02"}, TypeError, "input_roles"),
        ({"input_roles": (0, 2), "feature_mask": torch.zeros(1, 6)}, TypeError, "feature_mask"),
        (
            {"input_roles": (0, 2), "feature_mask": torch.zeros(2, 6, dtype=torch.long)},
            ValueError,
            "feature_mask",
        ),
        (
            {"input_roles": (0, 2), "feature_mask": -torch.ones(1, 6, dtype=torch.long)},
            ValueError,
            "feature_mask",
        ),
        ({"feature_mask": torch.zeros(1, 6, dtype=torch.long)}, ValueError, "feature_mask"),
        ({"input_roles": (0, 2), "baselines": torch.zeros(1, 5)}, ValueError, "baselines"),
        ({"input_roles": (0, 2), "baselines": (0.0, 1.0)}, ValueError, "baselines"),
        ({"input_roles": (0, 2), "baselines": "zero"}, TypeError, "baselines"),
        ({"input_roles": (0, 2), "perturbations_per_pass": 0}, ValueError, "perturbations_per_pass"),
        ({"input_roles": (0, 2), "perturbations_per_pass": 2.0}, TypeError, "perturbations_per_pass"),
        ({"input_roles": (0, 2), "reduce": 3}, TypeError, "reduce"),
        ({"input_roles": (0, 2), "to_metric": "mean"}, TypeError, "to_metric"),
    ],
)
def test_bad_arguments_are_named_before_any_model_call(
    kwargs: dict[str, Any], error: type, name: str
) -> None:
    model = Counted()
    loader = DataLoader(_classification(), batch_size=4)
    with pytest.raises(error, match=name) as raised:
        _ours(model, loader, **kwargs)
    assert isinstance(raised.value, AssertionError)  # Captum asserts: code catching that still works
    with pytest.raises(error, match=name):
        fastxai.dataset_feature_ablation(model, loader, **kwargs)
    assert model.calls == 0


def test_bad_data_and_methods_are_refused() -> None:
    model = mlp(seed=15, features=6, hidden=8, classes=3)
    with pytest.raises(TypeError, match="data"):
        fastxai.dataset_feature_ablation(model, torch.randn(4, 6))
    with pytest.raises(ValueError, match="no batches"):
        fastxai.dataset_feature_ablation(model, [])
    with pytest.raises(ValueError, match="batch 1"):  # features change shape between batches
        fastxai.dataset_feature_ablation(model, [torch.randn(2, 6), torch.randn(2, 5)])
    with pytest.raises(TypeError, match="to_metric"):
        fastxai.dataset_feature_ablation(model, [torch.randn(2, 6)], to_metric=lambda state: 1.0)
    for method in (Saliency(model), captum_attr.FeaturePermutation(model), model):
        with pytest.raises(TypeError, match="attr_method") as raised:
            DataLoaderAttribution(method)
        assert isinstance(raised.value, AssertionError)
    with pytest.raises(NotImplementedError):
        DataLoaderAttribution(FeatureAblation(model)).attribute_future()
    assert (InputRole.need_attr, InputRole.need_forward, InputRole.no_forward) == (0, 1, 2)
    from fastxai.compat import captum as fc

    assert {"DataLoaderAttribution", "InputRole"} <= set(fc.__all__)
    assert fastxai.dataset_feature_ablation is fastxai.attribution.dataset_feature_ablation


@pytest.mark.parametrize("fail", ["forward", "reduce", None])
def test_model_left_as_found(fail: str | None) -> None:
    """Training flags, requires_grad, hooks and weights as found, also when the forward or
    reduce raises; the compat class runs the model in the mode it is in, as Captum does."""
    model = mlp(seed=16, features=6, hidden=8, classes=3).train()
    model[0].weight.requires_grad_(False)
    modes: list[bool] = []

    def record(module: nn.Module, args: Any) -> None:
        modes.append(module.training)
        if fail == "forward" and len(modes) == 3:
            raise RuntimeError("crash")

    handle = model.register_forward_pre_hook(record)

    def reduce(accum: Any, output: torch.Tensor, inputs: tuple[Any, ...]) -> torch.Tensor:
        if fail == "reduce":
            raise RuntimeError("crash")
        return output.sum() if accum is None else accum + output.sum()

    before = model_state(model)
    loader = DataLoader(_classification(), batch_size=4)
    if fail is None:
        _ours(model, loader, input_roles=(0, 2), reduce=reduce)
    else:
        with pytest.raises(RuntimeError, match="crash"):
            _ours(model, loader, input_roles=(0, 2), reduce=reduce)
    assert_same_state(before, model_state(model))
    assert modes and all(modes)  # as given: training
    handle.remove()
