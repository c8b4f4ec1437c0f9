"""DeepLIFT (Rescale) and DeepLiftShap: summation-to-delta, hand-derived values, the cases
Captum hooks wrongly (functional and reused ReLUs), Captum side by side, bad input, state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from models import assert_same_state, model_state
from torch import nn

from fastxai.attribution.deeplift import deeplift, deeplift_shap

ACTIVATIONS = [nn.ReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.LeakyReLU]
MORE_ACTIVATIONS = [
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.SELU,
    nn.CELU,
    nn.Hardtanh,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softsign,
    nn.LogSigmoid,
]


class TwoLayer(nn.Module):
    """Linear - act - Linear - act - Linear; ``reuse`` applies one module twice, ``functional``
    calls ``F.relu`` / ``torch.relu`` instead of modules."""

    def __init__(
        self, act: type[nn.Module] = nn.ReLU, *, reuse: bool = False, functional: bool = False
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.l3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act1 = act()
        self.act2 = self.act1 if reuse else act()
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.functional:
            return self.l3(torch.relu(self.l2(F.relu(self.l1(x)))))
        return self.l3(self.act2(self.l2(self.act1(self.l1(x)))))


class PoolNet(nn.Module):
    def __init__(self, head: str = "none") -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.relu, self.pool = nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(3 * 4 * 4, 4)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.pool(self.relu(self.conv(x))).flatten(1))
        if self.head == "softmax":
            return F.softmax(out, dim=1)
        if self.head == "log_softmax":
            return out.log_softmax(1)
        return out


def _scores(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[:, target]


@pytest.mark.parametrize("act", ACTIVATIONS + MORE_ACTIVATIONS, ids=lambda a: a.__name__)
def test_summation_to_delta_for_every_activation(act: type[nn.Module]) -> None:
    model = TwoLayer(act).double()
    x, base = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    attr, delta = deeplift(model, x, 1, base, return_convergence_delta=True)
    expected = _scores(model, x, 1) - _scores(model, base, 1)
    torch.testing.assert_close(attr.sum(1), expected, rtol=1e-10, atol=1e-10)
    assert delta.abs().max() < 1e-10


def test_hand_derived_values() -> None:
    """f = 2 relu(x1) + 2 relu(x2 - 1.5) at (1, 2) against 0: the second ReLU goes from 0 to
    0.5 while its input moves by 2, so m = 0.25 and x2 gets 2 * 0.25 * 2 = 1; x1 gets 2."""

    class Model(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * F.relu(x[:, 0]) + 2 * torch.relu(x[:, 1] - 1.5)

    x = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(deeplift(Model(), x), torch.tensor([[2.0, 1.0]]))
    multipliers = deeplift(Model(), x, multiply_by_inputs=False)
    torch.testing.assert_close(multipliers, torch.tensor([[2.0, 0.5]]))


def test_reused_and_functional_relus_equal_distinct_modules() -> None:
    """Captum raises on a reused module and leaves functional ReLUs with their gradient; the
    three spellings of one network must give the same attributions."""
    x, base = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    distinct = deeplift(TwoLayer().double(), x, 2, base)
    reused = TwoLayer(reuse=True).double()
    functional = TwoLayer(functional=True).double()
    torch.testing.assert_close(deeplift(reused, x, 2, base), distinct)
    torch.testing.assert_close(deeplift(functional, x, 2, base), distinct)
    expected = _scores(reused, x, 2) - _scores(reused, base, 2)
    torch.testing.assert_close(deeplift(reused, x, 2, base).sum(1), expected)
    # The plain gradient times (x - x') is not it: the rule is in effect.
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(functional(leaf)[:, 2].sum(), leaf)
    assert not torch.allclose(grad * (x - base), distinct)


def test_in_place_relu_equals_out_of_place() -> None:
    class InPlace(TwoLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l3(self.l2(F.relu(self.l1(x), inplace=True)).relu_())

    x = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(
        deeplift(InPlace().double(), x, 0), deeplift(TwoLayer(functional=True).double(), x, 0)
    )


@pytest.mark.parametrize("head", ["none", "softmax", "log_softmax"])
def test_max_pool_and_softmax_keep_the_summation(head: str) -> None:
    model = PoolNet(head).double()
    x, base = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    attr = deeplift(model, x, 3, base)
    torch.testing.assert_close(attr.sum((1, 2, 3)), _scores(model, x, 3) - _scores(model, base, 3))


class MaskedAttention(nn.Module):
    """Causal attention weights over 5 positions with the masked scores at -inf (transformers'
    eager attention), the scores linear in the input (fixed keys), so that DeepLIFT's summation
    is exact: the masked scores are -inf in both DeepLIFT passes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.query = nn.Linear(3, 4)
        self.keys = nn.Parameter(torch.randn(5, 4))
        self.head = nn.Linear(5 * 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 5 * 3]
        scores = self.query(x.view(-1, 5, 3)) @ self.keys.T  # [B, 5, 5]
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        weights = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return self.head(weights.flatten(1))


def test_softmax_over_masked_scores_keeps_the_summation() -> None:
    """-inf - -inf is nan: equal scores on both sides take the derivative (0 there), so the
    attributions stay finite and sum to the score difference (they were nan)."""
    model = MaskedAttention().double()
    x, base = torch.randn(2, 15, dtype=torch.float64), torch.randn(2, 15, dtype=torch.float64)
    attr = deeplift(model, x, 1, base)
    assert torch.isfinite(attr).all()
    torch.testing.assert_close(attr.sum(1), _scores(model, x, 1) - _scores(model, base, 1))


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: a.__name__)
def test_matches_captum_on_module_activations(act: type[nn.Module]) -> None:
    captum = pytest.importorskip("captum.attr")
    model = TwoLayer(act)
    x, base = torch.randn(4, 6), torch.randn(4, 6)
    expected = captum.DeepLift(model).attribute(x, base, target=1)
    torch.testing.assert_close(deeplift(model, x, 1, base), expected, rtol=1e-4, atol=1e-5)


def test_matches_captum_with_max_pooling() -> None:
    """Without a ReLU before the pool: with one, Captum's own summation fails (its hooks on
    the two consecutive modules), while fastxai's holds (test above)."""
    captum = pytest.importorskip("captum.attr")
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(48, 4))
    x, base = torch.randn(2, 2, 8, 8), torch.randn(2, 2, 8, 8)
    expected = captum.DeepLift(model).attribute(x, base, target=torch.tensor([0, 3]))
    torch.testing.assert_close(deeplift(model, x, torch.tensor([0, 3]), base), expected, rtol=1e-4, atol=1e-5)


def test_deeplift_shap_is_the_mean_over_baselines_for_any_chunk() -> None:
    model = TwoLayer(nn.Tanh).double()
    x, background = torch.randn(3, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    each = torch.stack([deeplift(model, x, 0, background[k]) for k in range(4)])
    for chunk in (2, 6, 7, None):
        got, delta = deeplift_shap(model, x, 0, background, chunk_size=chunk, return_convergence_delta=True)
        torch.testing.assert_close(got, each.mean(0))
        assert delta.shape == (12,) and delta.abs().max() < 1e-10


def test_captum_deeplift_shap_side_by_side() -> None:
    captum = pytest.importorskip("captum.attr")
    model = TwoLayer()
    x, background = torch.randn(3, 6), torch.randn(5, 6)
    expected, expected_delta = captum.DeepLiftShap(model).attribute(
        x, background, target=2, return_convergence_delta=True
    )
    got, delta = deeplift_shap(model, x, 2, background, return_convergence_delta=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(delta, expected_delta.to(delta.dtype), rtol=0, atol=1e-4)


def test_chunking_does_not_change_deeplift() -> None:
    model = PoolNet()
    x, base = torch.randn(5, 2, 8, 8), torch.randn(1, 2, 8, 8)
    whole = deeplift(model, x, 1, base)
    torch.testing.assert_close(deeplift(model, x, 1, base, chunk_size=2), whole, rtol=1e-5, atol=1e-6)


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = TwoLayer()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"baselines": torch.zeros(2, 6)}, ValueError),
        ({"baselines": "zero"}, TypeError),
        ({"baselines": float("nan")}, ValueError),
        ({"eps": -1.0}, ValueError),
        ({"multiply_by_inputs": 1}, TypeError),
        ({"chunk_size": 0}, ValueError),
        ({"target": 2.5}, TypeError),
    ],
)
def test_bad_input_raises_before_the_model_runs(kwargs: dict, error: type[Exception]) -> None:
    model = _Counting()
    with pytest.raises(error):
        deeplift(model, torch.randn(3, 6), **{"target": 0, **kwargs})
    assert model.calls == 0
    with pytest.raises(TypeError, match="baselines"):
        deeplift_shap(model, torch.randn(3, 6), 0, None)
    assert model.calls == 0


def test_a_layout_without_the_batch_first_equals_the_batch_first_model() -> None:
    """Calls are paired between the baselines' and the inputs' passes, not by rows of one batch:
    a model that moves the batch out of the first dimension gets the same attributions."""

    class BatchFirst(nn.Module):
        def __init__(self, transpose: bool) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.l1, self.l2, self.transpose = nn.Linear(5, 7), nn.Linear(7, 2), transpose

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.l1(x)
            if self.transpose:  # features first: [7, B]
                return self.l2(torch.relu(h.t()).softmax(0).t())
            return self.l2(torch.relu(h).softmax(1))

    x, baseline = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    want, want_delta = deeplift(BatchFirst(False).double(), x, 1, baseline, return_convergence_delta=True)
    got, delta = deeplift(BatchFirst(True).double(), x, 1, baseline, return_convergence_delta=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert delta.abs().max() < 1e-12 and want_delta.abs().max() < 1e-12


def test_a_model_that_takes_another_path_for_the_baselines_is_refused() -> None:
    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(x)
            if bool(x.sum() > 0):  # the path depends on the values
                h = torch.sigmoid(h)
            return h[:, :2]

    x = torch.ones(2, 4)
    with pytest.raises(ValueError, match="same path"):
        deeplift(Gate(), x, 0, -x)
    with pytest.raises(ValueError, match="same path"):
        deeplift(Gate(), -x, 0, x)


def test_an_argument_written_in_place_after_the_call_keeps_its_recorded_value() -> None:
    """``h.mul_(torch.sigmoid(h))`` (an in-place SiLU) overwrites sigmoid's argument after the call:
    the baselines' record must keep the value sigmoid saw (copy on write)."""

    class Swish(nn.Module):
        def __init__(self, in_place: bool) -> None:
            super().__init__()
            torch.manual_seed(4)
            self.l1, self.l2, self.in_place = nn.Linear(4, 6), nn.Linear(6, 2), in_place

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.l1(x)
            if self.in_place:
                return self.l2(
                    h.clone().mul_(torch.sigmoid(h)) if h.requires_grad else h.mul_(torch.sigmoid(h))
                )
            return self.l2(h * torch.sigmoid(h))

    x, baseline = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    want = deeplift(Swish(False).double(), x, 0, baseline)
    torch.testing.assert_close(deeplift(Swish(True).double(), x, 0, baseline), want, rtol=1e-12, atol=1e-12)


def test_model_state_is_left_as_found_also_on_error() -> None:
    model = PoolNet().train()
    model.fc.weight.requires_grad_(False)
    model.conv.register_forward_hook(lambda *args: None)
    before = model_state(model)
    deeplift(model, torch.randn(2, 2, 8, 8), 0)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError):
        deeplift(model, torch.randn(2, 2, 8, 8), 9)  # only 4 classes
    assert_same_state(before, model_state(model))


def test_target_none_is_the_predicted_class() -> None:
    model = TwoLayer().double()
    x, background = torch.randn(4, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    predicted = model(x).argmax(1)
    torch.testing.assert_close(deeplift(model, x, None, 0.5), deeplift(model, x, predicted, 0.5))
    torch.testing.assert_close(
        deeplift_shap(model, x, None, background, chunk_size=4),
        deeplift_shap(model, x, predicted, background),
    )


def test_bfloat16_rows_equal_to_their_baseline_stay_finite() -> None:
    """eps=1e-10 rounds to 0 in bfloat16: the fallback still catches 0/0 where x = x'."""
    model = TwoLayer(nn.Sigmoid).to(torch.bfloat16)
    x = torch.randn(3, 6).to(torch.bfloat16)
    base = x.clone()
    base[:, :2] = 0
    attr, delta = deeplift(model, x, 0, base, return_convergence_delta=True)
    assert torch.isfinite(attr).all() and delta.abs().max() < 0.05
    assert (attr[:, 2:] == 0).all()


class _Rows(nn.Module):
    """``inner`` and the number of rows of each call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.inner(x)


class _BatchLast(nn.Module):
    """relu and softmax on [features, B]: the batch is the last dimension there."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.l1, self.l2 = nn.Linear(5, 7), nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x).t()).softmax(0).t())


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: TwoLayer(), (6,)),
        (lambda: TwoLayer(nn.GELU, reuse=True), (6,)),
        (lambda: PoolNet(), (2, 8, 8)),
        (lambda: PoolNet("softmax"), (2, 8, 8)),
        (_BatchLast, (5,)),
    ],
    ids=["relu", "gelu-reused", "max-pool", "softmax", "batch-last"],
)
@pytest.mark.parametrize("baselines", ["zero", "one-row", "equal-rows"])
def test_equal_baselines_run_as_one_row_with_the_same_result(make, shape, baselines: str) -> None:  # type: ignore[no-untyped-def]
    """Baselines whose rows are all equal run once, as one row, broadcast over the inputs' rows
    wherever the model puts the batch; the result is the per-row pass's (float64: to 1e-12)."""
    torch.manual_seed(5)
    x = torch.randn(4, *shape, dtype=torch.float64)
    row = torch.randn(1, *shape, dtype=torch.float64)
    given = {"zero": 0.0, "one-row": row, "equal-rows": row.repeat(4, *([1] * len(shape)))}[baselines]
    model = _Rows(make().double())
    got, delta = deeplift(model, x, 1, given, return_convergence_delta=True)
    assert model.rows == [1, 4]  # the baselines' pass on one row, then the inputs'
    per_row = model.inner
    want, want_delta = deeplift(
        lambda t: per_row(t), x, 1, given, return_convergence_delta=True
    )  # a callable: not shared
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(delta, want_delta, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-12


def test_different_baselines_run_with_all_their_rows() -> None:
    model = _Rows(TwoLayer())
    deeplift(model, torch.randn(3, 6), 0, torch.randn(3, 6))
    assert model.rows == [3, 3]


def test_a_model_that_cannot_run_one_row_falls_back_to_every_row() -> None:
    """A model that folds the batch into another dimension (its one-row pass does not line up
    with the inputs'), or that fails on one row, runs the baselines again with every row."""

    class Folds(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(6)
            self.l1, self.l2 = nn.Linear(6, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.l1(x).reshape(1, -1))  # the batch folded into the features
            return self.l2(h.reshape(x.shape[0], -1))

    class NeedsThree(TwoLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] != 3:
                raise RuntimeError("this model takes batches of 3")
            return super().forward(x)

    x = torch.randn(3, 6, dtype=torch.float64)
    for inner in (Folds(), NeedsThree()):
        model = _Rows(inner.double())
        got, delta = deeplift(model, x, 2, 0.0, return_convergence_delta=True)
        assert model.rows[0] == 1 and model.rows[-2:] == [3, 3], model.rows
        want = deeplift(lambda t, m=model.inner: m(t), x, 2, 0.0)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        assert delta.abs().max() < 1e-12
