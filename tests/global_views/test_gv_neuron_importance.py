"""Neuron importance against a direct computation over the whole data set at once."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, mlp, model_state, small_cnn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fastxai.global_views import neuron_importance

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = ["mean_abs", "mean", "positive_fraction"]


def direct(activation: torch.Tensor, labels: torch.Tensor | None = None, classes: int = 0) -> dict:
    """The statistics in one go from the full activation tensor [N, U, *positions]."""
    flat = activation.double().flatten(2) if activation.dim() > 2 else activation.double().unsqueeze(2)
    per_example = torch.stack([flat.abs().mean(2), flat.mean(2), (flat > 0).double().mean(2)])  # [3, N, U]
    overall = {name: per_example[i].mean(0) for i, name in enumerate(ALL)}
    if labels is None:
        return overall
    per_class = {
        name: torch.stack([per_example[i][labels == k].mean(0) for k in range(classes)])
        for i, name in enumerate(ALL)
    }
    return {"overall": overall, "per_class": per_class}


def conv_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(23, 1, 8, 8, generator=generator)
    y = torch.randint(0, 4, (23,), generator=generator)
    y[:4] = torch.arange(4)
    return model, x, y


@pytest.mark.parametrize("source", ["tensor_tuple", "dataset", "dataloader"])
def test_conv_channels_per_class_match_direct(source: str) -> None:
    model, x, y = conv_data()
    if source == "tensor_tuple":
        data: object = (x, y)
    elif source == "dataset":
        data = TensorDataset(x, y)
    else:
        data = DataLoader(TensorDataset(x, y), batch_size=6)
    result = neuron_importance(model, data, layer="4", batch_size=5, statistic=ALL)
    model.eval()
    with torch.no_grad():
        expected = direct(model[:5](x), y, classes=4)
    assert result.n_examples == 23
    assert result.class_counts is not None and result.per_class is not None
    assert result.class_counts.tolist() == torch.bincount(y, minlength=4).tolist()
    for name in ALL:
        torch.testing.assert_close(result[name].double(), expected["overall"][name], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            result.per_class[name].double(), expected["per_class"][name], rtol=1e-5, atol=1e-6
        )


def test_linear_neurons_of_a_tensor_dataset_without_labels() -> None:
    model = mlp(seed=1)
    x = torch.randn(17, 20)
    result = neuron_importance(model, x, layer=model[2], batch_size=4)
    with torch.no_grad():
        expected = direct(model[:3](x))
    assert set(result.values) == {"mean_abs"} and result.per_class is None and result.class_counts is None
    torch.testing.assert_close(result["mean_abs"].double(), expected["mean_abs"], rtol=1e-5, atol=1e-6)


def test_activation_is_read_before_an_in_place_relu() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(6, 2, 5, 5)
    model(x)  # materialise the lazy layer
    result = neuron_importance(model, x, layer="0", statistic=["mean", "positive_fraction"])
    with torch.no_grad():
        expected = direct(model[0](x))
    torch.testing.assert_close(result["mean"].double(), expected["mean"], rtol=1e-5, atol=1e-6)
    assert 0 < float(result["positive_fraction"].min()) and float(result["positive_fraction"].max()) < 1


def test_a_label_never_seen_gives_nan_rows() -> None:
    model, x, y = conv_data()
    y = torch.where(y == 2, 3, y)
    result = neuron_importance(model, (x, y), layer="0")
    assert result.per_class is not None and result.class_counts is not None
    assert result.class_counts[2] == 0
    assert bool(result.per_class["mean_abs"][2].isnan().all())
    assert not bool(result.per_class["mean_abs"][[0, 1, 3]].isnan().any())


def test_model_state_is_restored() -> None:
    model, x, y = conv_data()
    model.train()
    before = model_state(model)
    neuron_importance(model, (x, y), layer="4")
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="labels"):
        neuron_importance(model, DataLoader(TensorDataset(x, y * 0 - 1), batch_size=8), layer="4")
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        ("x", dict(layer="conv"), ValueError, r"layer 'conv'.*valid names: '0', '1', '2'"),
        ("x", dict(layer="4", statistic="median"), ValueError, "statistic must be one of"),
        ("x", dict(layer="4", statistic=[]), ValueError, "statistic must be one of"),
        ("x", dict(layer="4", batch_size=0), ValueError, "batch_size"),
        ([1, 2], dict(layer="4"), TypeError, "data must be"),
        ("xy3", dict(layer="4"), TypeError, r"data as a tuple must be \(inputs, labels\)"),
        ("x_yshort", dict(layer="4"), ValueError, r"labels must have shape \(23,\)"),
        ("x_yfloat", dict(layer="4"), TypeError, "labels must be an integer tensor"),
        ("xint", dict(layer="4"), TypeError, "inputs must be a floating-point tensor"),
        ("empty", dict(layer="4"), ValueError, "batch >= 1"),
    ],
)
def test_bad_input(data: object, kwargs: dict, error: type[Exception], match: str) -> None:
    model, x, y = conv_data()
    sources = {
        "x": x,
        "xy3": (x, y, y),
        "x_yshort": (x, y[:-1]),
        "x_yfloat": (x, y.float()),
        "xint": x.long(),
        "empty": x[:0],
    }
    with pytest.raises(error, match=match):
        neuron_importance(model, sources.get(data, data) if isinstance(data, str) else data, **kwargs)
