"""Attribution at a layer (``layer=``, ``forward_kwargs=``): oracles on a model that is linear
after the layer, completeness at the layer, token ids, batching of per-example arguments."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

import fastxai as fx


class TanhThenLinear(nn.Module):
    """``f(x) = W tanh(A x) + c``: linear after ``hidden`` (= ``tanh(A x)``), so at that layer
    IG = ``W[t] * (h - h')``, the gradient is ``W[t]`` and SHAP is exact."""

    def __init__(self, features: int = 5, hidden: int = 6, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.project = nn.Linear(features, hidden)
        self.hidden = nn.Tanh()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden(self.project(x))
        return self.head(h if scale is None else h * scale.view(-1, 1))

    def h(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.hidden(self.project(x))


class TinyText(nn.Module):
    """Token ids [B, T] and a mask [B, T] -> [B, 2]: embedding, a smooth nonlinearity, masked mean."""

    def __init__(self, vocab: int = 11, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embedding = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = torch.tanh(self.mix(self.embedding(ids)))
        mask = (
            torch.ones_like(ids, dtype=hidden.dtype)
            if attention_mask is None
            else attention_mask.to(hidden.dtype)
        )
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled) ** 2


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle", "adaptive"])
def test_ig_at_layer_is_weights_times_difference(method: str) -> None:
    model = TanhThenLinear().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    model.double()
    target = torch.tensor([0, 2, 1, 2])
    baseline = torch.randn(6, dtype=torch.float64) * 0.1
    attributions = fx.integrated_gradients(
        model, x, baseline, target=target, layer="hidden", n_steps=3, method=method
    )
    attributions = attributions[0] if isinstance(attributions, tuple) else attributions
    expected = model.head.weight[target].detach() * (model.h(x) - baseline)
    torch.testing.assert_close(attributions, expected, rtol=1e-10, atol=1e-12)


def test_gradients_at_layer_are_the_weights() -> None:
    model = TanhThenLinear().eval()
    x = torch.randn(3, 5)
    target = torch.tensor([1, 0, 2])
    weights = model.head.weight[target].detach()
    h = model.h(x)
    torch.testing.assert_close(fx.saliency(model, x, target, layer=model.hidden, abs=False), weights)
    torch.testing.assert_close(fx.input_x_gradient(model, x, target, layer="hidden"), h * weights)
    noisy = fx.smoothgrad(
        model, x, target, layer="hidden", n_samples=5, stdevs=0.3, seed=0, nt_type="vargrad"
    )
    torch.testing.assert_close(noisy, torch.zeros_like(h), atol=1e-6, rtol=0)
    smooth = fx.smoothgrad(model, x, target, layer="hidden", n_samples=5, stdevs=0.3, seed=0)
    torch.testing.assert_close(smooth, weights)
    background = torch.randn(1, 6) * 0.2
    shap = fx.gradient_shap(model, x, target, layer="hidden", baselines=background, n_samples=4, seed=0)
    torch.testing.assert_close(shap, weights * (h - background), rtol=1e-5, atol=1e-6)


def test_completeness_at_layer_nonlinear_after() -> None:
    model = TinyText().eval()
    ids = torch.randint(1, 11, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    kwargs = {"attention_mask": mask}
    attributions, delta = fx.integrated_gradients(
        model, ids, baselines=0, target=1, n_steps=64, return_convergence_delta=True, forward_kwargs=kwargs
    )
    assert attributions.shape == (3, 5, 4)  # the embedding's output, picked by default for token ids
    with torch.no_grad():
        end = model(ids, attention_mask=mask)[:, 1]
        start = model(torch.zeros_like(ids), attention_mask=mask)[:, 1]
    torch.testing.assert_close(attributions.sum((1, 2)), end - start, rtol=1e-4, atol=1e-5)
    assert delta.abs().max() < 1e-4
    # the masked tokens of example 0 do not reach the output: no attribution
    assert attributions[0, 3:].abs().max() == 0


def test_forward_kwargs_batched_over_steps_match_one_example_at_a_time() -> None:
    model = TinyText().eval()
    ids = torch.randint(1, 11, (3, 6))
    mask = (torch.arange(6) < torch.tensor([[6], [4], [2]])).long()
    runs = [
        fx.integrated_gradients(
            model,
            ids,
            baselines=0,
            target=0,
            n_steps=5,
            forward_kwargs={"attention_mask": mask},
            chunk_size=chunk,
        )
        for chunk in (None, 2, 7)
    ]
    singles = torch.cat(
        [
            fx.integrated_gradients(
                model,
                ids[i : i + 1],
                baselines=0,
                target=0,
                n_steps=5,
                forward_kwargs={"attention_mask": mask[i : i + 1]},
            )
            for i in range(3)
        ]
    )
    for run in runs:
        torch.testing.assert_close(run, singles)
    noisy = [
        fx.smoothgrad(
            model,
            ids,
            target=0,
            n_samples=4,
            stdevs=0.1,
            seed=3,
            forward_kwargs={"attention_mask": mask},
            chunk_size=chunk,
        )
        for chunk in (None, 5)
    ]
    torch.testing.assert_close(noisy[0], noisy[1])


def test_token_id_baselines_equal_their_embedding() -> None:
    model = TinyText().eval()
    ids = torch.randint(1, 11, (2, 4))
    pad = 3
    by_int = fx.integrated_gradients(model, ids, baselines=pad, target=1, n_steps=4)
    by_ids = fx.integrated_gradients(model, ids, baselines=torch.full((1, 4), pad), target=1, n_steps=4)
    by_values = fx.integrated_gradients(
        model, ids, baselines=model.embedding.weight[pad].detach(), target=1, n_steps=4, layer="embedding"
    )
    torch.testing.assert_close(by_int, by_ids)
    torch.testing.assert_close(by_int, by_values)
    shap = fx.gradient_shap(model, ids, target=1, baselines=torch.full((2, 4), pad), n_samples=3, seed=0)
    assert shap.shape == (2, 4, 4)
    # An int is one sequence of that id, as deeplift_shap takes it (it was refused).
    shap_by_int = fx.gradient_shap(model, ids, target=1, baselines=pad, n_samples=3, seed=0)
    one_sequence = torch.full((1, 4), pad)
    shap_by_one = fx.gradient_shap(model, ids, target=1, baselines=one_sequence, n_samples=3, seed=0)
    torch.testing.assert_close(shap_by_int, shap_by_one)
    with pytest.raises(TypeError, match="an int: one sequence"):
        fx.gradient_shap(model, ids, target=1, baselines=0.5, n_samples=3, seed=0)


def test_integer_inputs_need_a_layer() -> None:
    model = TanhThenLinear()
    ids = torch.randint(0, 3, (2, 5))
    with pytest.raises(TypeError, match="layer="):
        fx.saliency(model, ids, target=0)
    with pytest.raises(TypeError, match="layer="):
        fx.integrated_gradients(model.project, ids)  # a model without an embedding


def test_bad_layer_arguments_before_any_model_call() -> None:
    calls = []
    model = TinyText()
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 11, (2, 3))
    with pytest.raises(ValueError, match="not a submodule"):
        fx.integrated_gradients(model, ids, layer="nope")
    with pytest.raises(TypeError, match="forward_kwargs"):
        fx.saliency(model, ids, forward_kwargs=[1])
    with pytest.raises(TypeError, match="token-id"):
        fx.integrated_gradients(
            TanhThenLinear(), torch.randn(2, 5), baselines=torch.zeros(2, 6, dtype=torch.long), layer="hidden"
        )
    assert not calls


def test_model_left_as_found_also_on_error() -> None:
    model = TinyText().train()
    ids = torch.randint(0, 11, (2, 3))
    before = model_state(model)
    fx.integrated_gradients(model, ids, target=0, n_steps=3)
    fx.smoothgrad(model, ids, target=0, n_samples=2, seed=0)
    assert_same_state(before, model_state(model))

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.layer(x))

    twice = Twice()
    before = model_state(twice)
    with pytest.raises(ValueError, match="more than once"):
        fx.integrated_gradients(twice, torch.randn(2, 3), target=0, layer="layer", n_steps=2)
    assert_same_state(before, model_state(twice))


def test_layer_conductance_telescopes_when_linear_after_the_layer() -> None:
    # sum_k W[t] (h(x_{k+1}) - h(x_k)) over points from x' to x (the trapezoid rule's end points)
    model = TanhThenLinear().eval()
    x, start = torch.randn(3, 5), torch.randn(3, 5) * 0.1
    target = torch.tensor([2, 0, 1])
    conductance, delta = fx.layer_conductance(
        model,
        x,
        target,
        layer="hidden",
        baselines=start,
        n_steps=4,
        method="riemann_trapezoid",
        return_convergence_delta=True,
        chunk_size=4,
    )
    expected = model.head.weight[target].detach() * (model.h(x) - model.h(start))
    torch.testing.assert_close(conductance, expected, rtol=1e-5, atol=1e-6)
    assert delta.abs().max() < 1e-5


@pytest.mark.parametrize("method", ["gausslegendre", "adaptive"])
def test_forward_kwargs_at_the_input(method: str) -> None:
    # per-example scale [B] beside every model batch, also for adaptive IG's subsets of rows
    model = TanhThenLinear().eval()
    x, scale = torch.randn(4, 5), torch.tensor([1.0, -2.0, 0.5, 3.0])
    target = torch.tensor([0, 1, 2, 0])
    batched = fx.integrated_gradients(
        model, x, target=target, method=method, forward_kwargs={"scale": scale}, chunk_size=3
    )
    singles = [
        fx.integrated_gradients(
            model,
            x[i : i + 1],
            target=target[i : i + 1],
            method=method,
            forward_kwargs={"scale": scale[i : i + 1]},
        )
        for i in range(4)
    ]
    torch.testing.assert_close(batched, torch.cat(singles), rtol=1e-3, atol=1e-5)
    grads = fx.saliency(model, x, target, abs=False, forward_kwargs={"scale": scale}, chunk_size=3)
    expected = model.head.weight[target].detach() * scale.view(-1, 1)  # d f / d h, times d h / d x:
    jacobian = (1 - model.h(x) ** 2).unsqueeze(-1) * model.project.weight.detach()
    torch.testing.assert_close(grads, torch.einsum("bh,bhf->bf", expected, jacobian))


def test_layer_with_a_tuple_output_is_refused_by_name() -> None:
    model = nn.LSTM(3, 4, batch_first=True)

    class Last(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.split = model, Split()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = self.split(self.lstm(x)[0][:, -1])
            return a + b

    with pytest.raises(ValueError, match="2 tensors"):
        fx.saliency(Last(), torch.randn(2, 5, 3), target=0, layer="split")


class Split(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :2], x[:, 2:]
