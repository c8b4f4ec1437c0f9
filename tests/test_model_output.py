"""Reading a model's output (tensors, tuples, dicts, ModelOutput-like mappings, ``select_output``)
and targets into outputs with more than two dimensions (tuple targets, Captum's forms)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

import fastxai as fx
from fastxai import _model
from fastxai._output import output_tensor

pytestmark = pytest.mark.usefixtures("one_thread")


class Sequence3d(nn.Module):
    """x [B, F] -> [B, T, V] = (x @ W).view(B, T, V): the gradient of output[b, t, v] is W[:, t*V + v]."""

    def __init__(self, features: int = 6, positions: int = 3, vocabulary: int = 4) -> None:
        super().__init__()
        self.shape = (positions, vocabulary)
        self.weight = nn.Parameter(torch.randn(features, positions * vocabulary, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.weight).view(x.shape[0], *self.shape)


class Returns(nn.Module):
    """A linear model whose forward wraps its logits in ``wrap``."""

    def __init__(self, wrap) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.linear = nn.Linear(5, 3)
        self.drop = nn.Dropout(0.5)
        self.wrap = wrap

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.wrap(self.drop(self.linear(x)))


class Output(OrderedDict):
    """What a Hugging Face ``ModelOutput`` is: an ordered mapping whose fields are attributes too."""

    def __getattr__(self, name: str) -> object:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def test_output_tensor_reads_tensors_tuples_dicts_and_model_outputs() -> None:
    t, u = torch.ones(2, 3), torch.zeros(2, 4)
    assert output_tensor(t) is t
    assert output_tensor((t, u)) is t and output_tensor([t, u]) is t
    assert output_tensor({"hidden": u, "logits": t}) is t  # "logits" wins over position
    assert output_tensor(Output(last_hidden_state=u, pooler_output=t)) is u  # else the first tensor
    assert output_tensor({"loss": None, "scores": t}) is t
    assert output_tensor(Output(a=u, b=t), "b") is t
    assert output_tensor(Output(a=u, b=t), lambda out: out.b * 2).equal(2 * t)
    assert output_tensor((u, t), 1) is t
    with pytest.raises(TypeError, match=r"fastxai\.select_output"):
        output_tensor(("text", t))
    with pytest.raises(ValueError, match="'missing' is neither a key nor an attribute"):
        output_tensor({"a": t}, "missing")
    with pytest.raises(TypeError, match="must select a tensor"):
        output_tensor({"a": t, "b": 3}, "b")


@pytest.mark.parametrize(
    "wrap",
    [lambda y: (y, y.sum()), lambda y: [y], lambda y: {"logits": y}, lambda y: Output(logits=y, extra=y * 0)],
    ids=["tuple", "list", "dict", "model-output"],
)
def test_every_method_reads_a_wrapped_output_as_the_plain_model(wrap) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    plain = Returns(lambda y: y)
    wrapped = Returns(wrap)
    wrapped.load_state_dict(plain.state_dict())
    x = torch.randn(4, 5)
    for method in (
        lambda m: fx.saliency(m, x, target=1),
        lambda m: fx.integrated_gradients(m, x, target=2, n_steps=8),
        lambda m: fx.feature_ablation(m, x),
        lambda m: fx.occlusion(m, x, target=0, sliding_window_shapes=(2,)),
    ):
        torch.testing.assert_close(method(wrapped), method(plain))
    assert plain.training and wrapped.training


def test_select_output_keeps_layer_names_and_the_model_state() -> None:
    torch.manual_seed(0)
    model = Returns(lambda y: Output(hidden=y * 2, logits=y)).train()
    selected = fx.select_output(model, "hidden")
    x = torch.randn(3, 5)
    grads = fx.saliency(selected, x, target=1, abs=False)
    torch.testing.assert_close(grads, 2 * model.linear.weight[1].detach().expand(3, 5))
    names = dict(selected.named_modules())
    assert names["linear"] is model.linear and names["model"] is model
    assert model.training and selected.training
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(TypeError, match="output must be a key"):
        fx.select_output(model, 1.5)


def test_tuple_targets_index_every_example_or_one_each() -> None:
    torch.manual_seed(0)
    model = Sequence3d()
    x = torch.randn(2, 6, dtype=torch.float64)
    weight = model.weight.detach()
    same = fx.saliency(model, x, target=(1, 2), abs=False)
    torch.testing.assert_close(same, weight[:, 1 * 4 + 2].expand(2, 6))
    each = fx.saliency(model, x, target=[(0, 3), (2, 1)], abs=False)
    torch.testing.assert_close(each, torch.stack([weight[:, 3], weight[:, 9]]))
    as_tensor = fx.saliency(model, x, target=torch.tensor([[0, 3], [2, 1]]), abs=False)
    torch.testing.assert_close(as_tensor, each)
    # perturbation: ablating feature i changes output[b, t, v] by x_i * W[i, t*V+v]
    ablated = fx.feature_ablation(model, x, target=[(0, 3), (2, 1)])
    torch.testing.assert_close(ablated, x * torch.stack([weight[:, 3], weight[:, 9]]))
    attributions, delta = fx.integrated_gradients(
        model, x, target=(2, 0), n_steps=4, return_convergence_delta=True
    )
    torch.testing.assert_close(attributions, x * weight[:, 8])
    assert delta.abs().max() < 1e-10
    # a [B, C] model takes one-element tuples as its classes
    flat = nn.Linear(6, 4).double()
    torch.testing.assert_close(
        fx.saliency(flat, x, target=[(1,), (3,)]), fx.saliency(flat, x, target=torch.tensor([1, 3]))
    )


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (1, ValueError, r"a class index per example needs a \[batch, classes\] output"),
        (None, ValueError, r"target=None \(the predicted class\) needs a \[batch, classes\] output"),
        ((1, 2, 0), ValueError, "target has 3 indices per example, the model output has 2 dims"),
        ((3, 0), ValueError, r"target index 0 must be in \[0, 3\)"),
        ([(0, 1)], ValueError, "one tuple per example"),
        ([(0, 1), (0,)], ValueError, "all of one length"),
        ((0, 1.5), TypeError, "tuple of ints"),
        ((0, True), TypeError, "tuple of ints"),
    ],
)
def test_bad_targets_for_an_output_with_more_dims(target: object, error: type, match: str) -> None:
    x = torch.randn(2, 6, dtype=torch.float64)
    for method in (fx.saliency, fx.feature_ablation):
        with pytest.raises(error, match=match):
            method(Sequence3d(), x, target=target)


def test_outputs_helpers_shapes() -> None:
    model = Sequence3d()
    x = torch.randn(2, 6, dtype=torch.float64)
    assert _model.outputs(model, x).shape == (2, 3, 4)
    assert _model.flat_outputs(model, x).shape == (2, 12)
    with pytest.raises(ValueError, match="the attribution methods take such outputs with a tuple target"):
        _model.logits(model, x)


def test_captum_tuple_targets_side_by_side() -> None:
    captum = pytest.importorskip("captum.attr")
    from fastxai.compat import captum as fc

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 12), nn.Unflatten(1, (3, 4))).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    for target in [(1, 2), [(0, 3), (2, 1), (1, 1)]]:
        for ours, theirs, kwargs in [
            (fc.Saliency, captum.Saliency, {}),
            (fc.IntegratedGradients, captum.IntegratedGradients, {"n_steps": 16}),
            (fc.FeatureAblation, captum.FeatureAblation, {}),
        ]:
            torch.testing.assert_close(
                ours(model).attribute(x, target=target, **kwargs),
                theirs(model).attribute(x, target=target, **kwargs),
            )


_MASK = torch.tensor([0, 0, 1, 1, 2, 2])
EVERY_METHOD = {
    "saliency": lambda m, x, t: fx.saliency(m, x, t),
    "input_x_gradient": lambda m, x, t: fx.input_x_gradient(m, x, t),
    "smoothgrad": lambda m, x, t: fx.smoothgrad(m, x, t, n_samples=3, seed=0),
    "integrated_gradients": lambda m, x, t: fx.integrated_gradients(m, x, target=t, n_steps=4),
    "gradient_shap": lambda m, x, t: fx.gradient_shap(m, x, t, baselines=torch.zeros(2, 6).double(), seed=0),
    "expected_gradients": lambda m, x, t: fx.expected_gradients(
        m, x, t, baselines=torch.zeros(2, 6).double(), seed=0
    ),
    "guided_backprop": lambda m, x, t: fx.guided_backprop(m, x, t),
    "deconvnet": lambda m, x, t: fx.deconvnet(m, x, t),
    "occlusion": lambda m, x, t: fx.occlusion(m, x, t, sliding_window_shapes=(2,)),
    "feature_ablation": lambda m, x, t: fx.feature_ablation(m, x, t),
    "lime": lambda m, x, t: fx.lime(m, x, t, feature_mask=_MASK, n_samples=16, seed=0),
    "kernel_shap": lambda m, x, t: fx.kernel_shap(m, x, t, feature_mask=_MASK, n_samples=16, seed=0),
    "shapley_value_sampling": lambda m, x, t: fx.shapley_value_sampling(m, x, t, feature_mask=_MASK, seed=0),
    "shapley_values": lambda m, x, t: fx.shapley_values(m, x, t, feature_mask=_MASK),
    "feature_permutation": lambda m, x, t: fx.feature_permutation(m, x, t, seed=0),
}


@pytest.mark.parametrize("method", EVERY_METHOD)
def test_every_method_reads_a_tuple_target_as_the_flat_index(method: str) -> None:
    """output[b, t, v] of a model returning [B, T, V] is output[b, t*V + v] of the same model
    returning [B, T*V]: with the tuple target and the flat index the methods must agree."""
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 12)).double()
    shaped = nn.Sequential(flat, nn.Unflatten(1, (3, 4)))
    x = torch.randn(2, 6, dtype=torch.float64)
    run = EVERY_METHOD[method]
    torch.testing.assert_close(run(shaped, x, [(0, 3), (2, 1)]), run(flat, x, torch.tensor([3, 9])))
    torch.testing.assert_close(run(shaped, x, (1, 2)), run(flat, x, 6))
