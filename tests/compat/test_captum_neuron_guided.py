"""NeuronGuidedBackprop and NeuronDeconvolution against Captum's own and the textbook rules."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat.captum")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Captum's hook warnings

CLASSES = ["NeuronGuidedBackprop", "NeuronDeconvolution"]
CNN_CASES = [  # (layer index in small_cnn, selector, attribute_to_neuron_input)
    (4, (2, 1, 1), False),
    (4, (slice(2, 5), 0, slice(1, 3)), False),
    (6, (slice(2, 6), 1, slice(None)), False),  # the second ReLU: its own rule applies to the neuron
    (6, (3, 2, 0), True),
    (9, 2, True),
    (9, 7, False),
    (7, lambda h: h[:, 2].mean((1, 2)), False),
    (7, lambda h: torch.sum(h[:, 2:]), False),  # one number for the batch, as Captum's tests write
]


class TwoInputNet(nn.Module):
    """(x [B, 4], z [B, 3]) and a per-example scale [B] -> [B, 3], with ReLUs on both branches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Linear(4, 6), nn.Linear(3, 6)
        self.relu_a, self.relu_b = nn.ReLU(), nn.ReLU()
        self.mid = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        hidden = self.mid(self.relu_a(self.a(x)) + self.relu_b(self.b(z))) * scale.view(-1, 1)
        return self.head(hidden)


def _close(ours: object, theirs: object) -> None:
    ours_t = ours if isinstance(ours, tuple) else (ours,)
    theirs_t = theirs if isinstance(theirs, tuple) else (theirs,)
    assert len(ours_t) == len(theirs_t)
    for a, b in zip(ours_t, theirs_t, strict=True):
        assert isinstance(a, torch.Tensor) and a.shape == b.shape
        assert torch.allclose(a, b.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize(("index", "selector", "to_input"), CNN_CASES)
def test_cnn_matches_captum(name: str, index: int, selector: object, to_input: bool) -> None:
    model = small_cnn().eval()  # ReLU modules and max pooling: Captum modifies the same ReLUs
    layer = model[index]
    torch.manual_seed(index)
    x = torch.randn(3, 1, 8, 8)
    before = model_state(model)
    ours = getattr(fc, name)(model, layer).attribute(x, selector, attribute_to_neuron_input=to_input)
    theirs = getattr(captum_attr, name)(model, layer).attribute(
        x, selector, attribute_to_neuron_input=to_input
    )
    assert ours.abs().sum() > 0  # a neuron that reaches the inputs: the comparison means something
    _close(ours, theirs)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("name", CLASSES)
def test_tuple_inputs_and_per_example_args_match_captum(name: str) -> None:
    net = TwoInputNet().eval()
    inputs = (torch.randn(4, 4), torch.randn(4, 3))
    scale = torch.tensor([1.0, -2.0, 0.5, 3.0])  # one row per example: matched to its row
    for layer, selector, to_input in [
        (net.mid, 2, False),
        (net.head, 1, True),
        (net.head, (slice(0, 2),), False),
    ]:
        ours = getattr(fc, name)(net, layer).attribute(inputs, selector, (scale,), to_input)
        _close(ours, getattr(captum_attr, name)(net, layer).attribute(inputs, selector, (scale,), to_input))


def test_textbook_rules_on_one_hidden_layer() -> None:
    # f(x) = W2 relu(W1 x): the neuron k of f's output gets W1^T (r(W2[k]) * [W1 x > 0]) under
    # guided backprop and W1^T r(W2[k]) under deconvolution, r = max(., 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 4, bias=False)).eval()
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    x = torch.randn(6, 5)
    active = (x @ w1.T > 0).to(x.dtype)  # [6, 7]
    for k in range(4):
        upstream = w2[k].clamp_min(0)  # [7]
        guided = (active * upstream) @ w1
        deconv = upstream.expand(6, 7) @ w1
        assert torch.allclose(fc.NeuronGuidedBackprop(model, model[2]).attribute(x, k), guided, atol=1e-6)
        assert torch.allclose(fc.NeuronDeconvolution(model, model[2]).attribute(x, k), deconv, atol=1e-6)


def test_neuron_at_the_output_is_the_method_with_that_target() -> None:
    model = small_cnn().eval()
    x = torch.randn(2, 1, 8, 8)
    for neuron_class, whole in [
        ("NeuronGuidedBackprop", fc.GuidedBackprop),
        ("NeuronDeconvolution", fc.Deconvolution),
    ]:
        for k in (0, 4):
            ours = getattr(fc, neuron_class)(model, model[9]).attribute(x, (k,))
            _close(ours, whole(model).attribute(x, target=k))


def test_api_as_captum() -> None:
    model = small_cnn()
    for name in CLASSES:
        assert name in fc.__all__
        ours = getattr(fc, name)(model, model[4])
        assert not ours.multiplies_by_inputs and not ours.has_convergence_delta()


def test_bad_input_refused_before_the_model_runs() -> None:
    model = small_cnn()
    runs = []
    model.register_forward_pre_hook(lambda *_: runs.append(1))
    x = torch.randn(2, 1, 8, 8)
    for name in CLASSES:
        cls = getattr(fc, name)
        with pytest.raises(TypeError, match="model"):
            cls(lambda t: t, model[4])
        with pytest.raises(TypeError, match="layer"):
            cls(model, [model[4]])
        with pytest.raises(ValueError, match="not a submodule"):
            cls(model, nn.ReLU())
        with pytest.raises(NotImplementedError, match="device_ids"):
            cls(model, model[4], device_ids=[0])
        with pytest.raises(TypeError, match="neuron_selector"):
            cls(model, model[4]).attribute(x, 1.5)
        with pytest.raises(TypeError, match="attribute_to_neuron_input"):
            cls(model, model[4]).attribute(x, (1, 0, 0), attribute_to_neuron_input="yes")
        with pytest.raises(TypeError, match="inputs"):
            cls(model, model[4]).attribute([x], (1, 0, 0))
    assert not runs


def test_model_left_as_found_on_error_and_no_relu_before_the_layer() -> None:
    model = small_cnn()
    model.train()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    x = torch.randn(2, 1, 8, 8)
    for name in CLASSES:
        with pytest.raises(AssertionError, match="out of range"):  # Captum's error type
            getattr(fc, name)(model, model[4]).attribute(x, (9, 0, 0))
        assert_same_state(before, model_state(model))
        # conv and batch norm only before the layer: the rule changes nothing. Captum returns
        # the plain gradient there; so does fastxai, with a warning that says so.
        with pytest.warns(UserWarning, match="no ReLU.*plain gradient"):
            getattr(fc, name)(model, model[1]).attribute(x, (1, 0, 0))
        assert_same_state(before, model_state(model))
        getattr(fc, name)(model, model[4]).attribute(x, (1, 0, 0))
        assert_same_state(before, model_state(model))
    model.eval()
    plain = fc.NeuronGradient(model, model[1]).attribute(x, (1, 0, 0))
    _close(plain, captum_attr.NeuronGuidedBackprop(model, model[1]).attribute(x, (1, 0, 0)))
    for name in CLASSES:
        with pytest.warns(UserWarning, match="no ReLU"):
            ours = getattr(fc, name)(model, model[1]).attribute(x, (1, 0, 0))
        _close(ours, getattr(captum_attr, name)(model, model[1]).attribute(x, (1, 0, 0)))
