"""The sparse linear student (planted sparse teacher, KKT conditions) and the neural additive
model (planted additive function)."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.surrogate import AdditiveModel, distill, fidelity, fit_additive, fit_sparse_linear

pytestmark = pytest.mark.usefixtures("one_thread")


def _sparse_teacher() -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.zeros(3, 10, dtype=torch.float64)
    # every used column has its median over the classes at 0, so W itself is the L1-smallest of
    # the matrices W + 1 v^T that give the same probabilities
    weight[0, 2], weight[1, 7], weight[2, 4], weight[0, 4] = 2.0, -1.5, 1.0, -1.0
    return weight, torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)


def test_a_sparse_linear_teacher_is_recovered() -> None:
    weight, bias = _sparse_teacher()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=generator, dtype=torch.float64)
    x_test = torch.randn(300, 10, generator=generator, dtype=torch.float64)
    result = distill(
        lambda v: v @ weight.T + bias, x, student="linear", test_inputs=x_test, l1=1e-3, steps=3000
    )
    assert result.fidelity == 1.0 and result.train_fidelity == 1.0
    assert result.student.support.tolist() == [2, 4, 7]
    assert torch.equal(result.student.weight != 0, weight != 0)
    # softmax fixes the logits up to one constant per row: compare differences to class 0
    learned = result.student.weight - result.student.weight[:1]
    torch.testing.assert_close(learned, weight - weight[:1], rtol=0, atol=0.1)
    rules = result.student.rules().splitlines()
    assert len(rules) == 3 and "x[2]" in rules[0] and "x[7]" in rules[1] and "x[5]" not in " ".join(rules)


def test_the_solution_meets_the_lasso_optimality_conditions() -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=generator, dtype=torch.float64) * torch.tensor([1.0, 5, 0.2, 1, 2, 1])
    soft = torch.randn(200, 3, generator=generator, dtype=torch.float64).softmax(1)
    l1 = 0.02
    model = fit_sparse_linear(x, soft, l1=l1, steps=20000, tolerance=1e-12, standardize=False)
    # gradient of the smooth part; KKT: g = -l1 sign(w) where w != 0, |g| <= l1 where w == 0
    gradient = ((model(x).softmax(1) - soft).T @ x) / len(x)
    nonzero = model.weight != 0
    assert nonzero.any() and (~nonzero).any()
    torch.testing.assert_close(gradient[nonzero], -l1 * model.weight[nonzero].sign(), rtol=0, atol=1e-6)
    assert bool((gradient[~nonzero].abs() <= l1 + 1e-6).all())
    bias_gradient = (model(x).softmax(1) - soft).mean(0)
    torch.testing.assert_close(bias_gradient, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6)


def test_additive_model_recovers_a_planted_additive_function() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(800, 3, generator=generator) * 2 - 1
    terms = torch.stack([x[:, 0] ** 2, torch.sin(3 * x[:, 1]), 0.5 * x[:, 2]], 1)
    model = fit_additive(x, terms.sum(1) + 0.3, steps=600, lr=0.01)
    shapes = model.shape_functions(x)[:, :, 0]
    centred = terms - terms.mean(0)
    error = (shapes - centred).square().mean(0).sqrt()
    assert bool((error < 0.05 * centred.std(0).max()).all()), error
    with torch.no_grad():
        assert float((model(x)[:, 0] - terms.sum(1) - 0.3).abs().mean()) < 0.03


def test_grouped_layers_equal_one_mlp_per_feature() -> None:
    model = AdditiveModel(4, 2, hidden=(5, 3), seed=1)
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.shift.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
        model.scale.copy_(torch.tensor([1.0, 2.0, 0.5, 1.5]))
        grouped = model.contributions(x)
    for i in range(4):
        hidden = ((x[:, i] - model.shift[i]) / model.scale[i]).view(-1, 1)
        for layer, (weight, bias) in enumerate(zip(model.weights, model.biases, strict=True)):
            hidden = hidden @ weight[i] + bias[i]
            hidden = torch.relu(hidden) if layer < len(model.weights) - 1 else hidden
        torch.testing.assert_close(grouped[:, i], hidden.detach())
    torch.testing.assert_close(model(x), grouped.sum(1) + model.bias, rtol=1e-6, atol=1e-6)


def test_exu_units_fit_a_step() -> None:
    x = torch.linspace(-1, 1, 400).view(-1, 1)
    y = (x[:, 0] > 0.2).float()
    model = fit_additive(x, y, activation="exu", hidden=(16, 8), steps=600, lr=0.01)
    with torch.no_grad():
        assert float((model(x)[:, 0] - y).abs().mean()) < 0.05


def test_additive_student_and_plot(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from fastxai.surrogate import plot_shape_functions

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(300, 3, generator=generator)
    torch.manual_seed(0)
    teacher = nn.Linear(3, 2)
    result = distill(teacher, x, student="additive", test_inputs=x[:50], steps=300)
    assert result.fidelity is not None and result.fidelity > 0.9
    path = tmp_path / "shapes.png"
    figure = plot_shape_functions(result.student, x, output=1, feature_names=["a", "b", "c"], path=str(path))
    assert path.stat().st_size > 1000 and len(figure.axes) == 3


def test_fidelity_and_teacher_left_as_found() -> None:
    teacher = small_cnn(seed=0, classes=3).train()
    teacher[0].weight.requires_grad_(False)
    teacher[1].register_forward_hook(lambda *args: None)
    before = model_state(teacher)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = distill(teacher, x, student="tree", max_depth=2, test_inputs=x[:20])
    assert_same_state(before, model_state(teacher))
    assert result.fidelity == fidelity(teacher, result.student, x[:20])
    assert_same_state(before, model_state(teacher))
    with torch.no_grad():
        expected = teacher.eval()(x[:20]).argmax(1)
    assert result.fidelity == float((result.student.predict(x[:20]) == expected).double().mean())


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


BAD = [
    ({"student": "forest"}, ValueError, "student must be one of"),
    ({"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\]"),
    ({"alpha": -0.1}, ValueError, "alpha must be a finite number >= 0"),
    ({"temperature": 0}, ValueError, "temperature must be a finite number > 0"),
    ({"labels": torch.zeros(5)}, ValueError, "labels must be None or"),
    ({"labels": torch.zeros(3, dtype=torch.long)}, ValueError, "labels must be None or"),
    ({"test_inputs": torch.zeros(2, 5)}, ValueError, "test_inputs must have the inputs' shape"),
    ({"max_dept": 2}, TypeError, "unknown options for the tree student"),
    ({"student": "linear", "max_depth": 2}, TypeError, "unknown options for the linear student"),
    ({"inputs": torch.zeros(5, 4, dtype=torch.long)}, TypeError, "inputs must be a floating-point"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_input_refused_before_the_teacher_runs(change: dict, error: type, message: str) -> None:
    teacher = Counting()
    kwargs = dict(change)
    inputs = kwargs.pop("inputs", torch.rand(5, 4))
    with pytest.raises(error, match=message):
        distill(teacher, inputs, **kwargs)
    assert teacher.calls == 0
