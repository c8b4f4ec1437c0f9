"""Square, APGD-T and AutoAttack: the threat model holds, Square only queries the model,
AutoAttack is at least as strong as each of its parts, success rates beside torchattacks."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn

import fastxai as fx
from fastxai.compat import torchattacks as fta


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    pytest.importorskip("sklearn")
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    return train_digits_cnn(x_train, y_train), x_test[:24], y_test[:24]


def _size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)


class QueryOnly(torch.nn.Module):
    """Records whether any call could have produced a gradient."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls, self.gradient_calls = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.gradient_calls += int(torch.is_grad_enabled() or x.requires_grad)
        return self.inner(x)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.2), ("l2", 1.0)])
def test_square_stays_in_the_ball_and_only_queries_the_model(digits, norm: str, eps: float) -> None:
    model, x, y = digits
    counted = QueryOnly(model)
    x_adv = fx.square_attack(counted, x, y, eps=eps, norm=norm, n_queries=300, seed=0)
    assert (_size(x_adv - x, norm) <= eps * (1 + 1e-5)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert counted.gradient_calls == 0 and 1 < counted.calls <= 300 + 1
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).float().mean() > 0.3
    again = fx.square_attack(model, x, y, eps=eps, norm=norm, n_queries=300, seed=0)
    assert torch.equal(again, x_adv)


@pytest.mark.parametrize(("norm", "eps"), [("Linf", 0.2), ("L2", 1.0)])
def test_square_success_rate_beside_torchattacks(digits, norm: str, eps: float) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    kwargs = dict(norm=norm, eps=eps, n_queries=300, seed=0)
    with torch.no_grad():
        ours = (model(fta.Square(model, **kwargs)(x, y)).argmax(1) != y).float().mean()
        theirs = (model(torchattacks.Square(model, **kwargs)(x, y)).argmax(1) != y).float().mean()
    assert ours >= theirs - 0.15


def test_apgd_targeted_stays_in_the_ball_and_fools(digits) -> None:
    model, x, y = digits
    x_adv = fx.apgd_targeted(model, x, y, eps=0.15, steps=10, n_target_classes=3)
    assert (_size(x_adv - x, "linf") <= 0.15 + 1e-6).all()
    with torch.no_grad():
        assert (model(x_adv).argmax(1) != y).float().mean() > 0.3


@pytest.mark.parametrize("name", ["APGDT", "FAB"])
def test_targeted_components_success_rate_beside_torchattacks(digits, name: str) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    kwargs = dict(eps=0.1, n_classes=4, **({"multi_targeted": True} if name == "FAB" else {}))
    with torch.no_grad():
        ours = (model(getattr(fta, name)(model, **kwargs)(x, y)).argmax(1) != y).float().mean()
        theirs = (model(getattr(torchattacks, name)(model, **kwargs)(x, y)).argmax(1) != y).float().mean()
    assert ours >= theirs - 0.15


def test_autoattack_is_at_least_as_strong_as_each_component(digits) -> None:
    model, x, y = digits
    eps, budget = 0.1, dict(bounds=(0.0, 1.0), seed=0)
    x_adv = fx.autoattack(
        model, x, y, eps=eps, steps=10, fab_steps=10, n_target_classes=3, square_queries=200, **budget
    )
    assert (_size(x_adv - x, "linf") <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1

    def accuracy(points: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(points).argmax(1) == y).float().mean())

    robust = accuracy(x_adv)
    components = {
        "apgd-ce": fx.apgd(model, x, y, eps=eps, steps=10, **budget),
        "apgd-t": fx.apgd_targeted(model, x, y, eps=eps, steps=10, n_target_classes=3, **budget),
        "fab-t": fx.fab_targeted(model, x, y, eps=eps, steps=10, n_target_classes=3, **budget),
        "square": fx.square_attack(model, x, y, eps=eps, n_queries=200, **budget),
    }
    for name, points in components.items():
        assert robust <= accuracy(points), name
    assert robust < accuracy(x)


def test_compat_autoattack_and_its_refusals(digits) -> None:
    model, x, y = digits
    attack = fta.AutoAttack(model, norm="Linf", eps=0.3, version="standard", n_classes=10, seed=0)
    x_adv = attack(x[:8], y[:8])
    assert (_size(x_adv - x[:8], "linf") <= 0.3 + 1e-6).all()
    with pytest.raises(NotImplementedError, match="version='plus'"):
        fta.AutoAttack(model, version="plus")
    with pytest.raises(NotImplementedError, match="verbose"):
        fta.AutoAttack(model, verbose=True)
    with pytest.raises(ValueError, match="Targeted mode is not supported"):
        attack.set_mode_targeted_random()


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, y: fx.square_attack(m, x, y, n_queries=20),
        lambda m, x, y: fx.apgd_targeted(m, x, y, steps=3, n_target_classes=2),
        lambda m, x, y: fx.autoattack(m, x, y, steps=3, fab_steps=2, n_target_classes=2, square_queries=10),
    ],
    ids=["square", "apgd_targeted", "autoattack"],
)
def test_the_model_is_left_as_found(call) -> None:
    model = small_cnn(seed=0, channels=3).train()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    model[1].register_forward_hook(lambda module, inputs, output: None)
    before = model_state(model)
    call(model, x, y)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, x, y: fx.square_attack(m, x, y, eps=-1), ValueError, "eps"),
        (lambda m, x, y: fx.square_attack(m, x, y, norm="l1"), ValueError, "norm"),
        (lambda m, x, y: fx.square_attack(m, x, y, n_queries=0), ValueError, "n_queries"),
        (lambda m, x, y: fx.square_attack(m, x, y, p_init=0), ValueError, "p_init"),
        (lambda m, x, y: fx.square_attack(m, x, y, loss="dlr"), ValueError, "loss"),
        (lambda m, x, y: fx.square_attack(m, x.flatten(1), y), ValueError, "images"),
        (lambda m, x, y: fx.square_attack(m, x, None, targeted=True), ValueError, "labels"),
        (lambda m, x, y: fx.autoattack(m, x, y, version="plus"), NotImplementedError, "version"),
        (lambda m, x, y: fx.autoattack(m, x, y, steps=1), ValueError, "steps"),
        (lambda m, x, y: fx.autoattack(m, x, y, seed=-1), ValueError, "seed"),
        (lambda m, x, y: fx.apgd_targeted(m, x, y, norm="l3"), ValueError, "norm"),
        (lambda m, x, y: fx.apgd_targeted(m, x, y, steps=1), ValueError, "steps"),
        (lambda m, x, y: fx.apgd_targeted(m, x, y, rho=0), ValueError, "rho"),
    ],
)
def test_bad_input_is_refused_before_any_model_call(call, error: type, message: str) -> None:
    model = QueryOnly(small_cnn(seed=0, channels=3))
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(error, match=message):
        call(model, x, torch.tensor([0, 1, 2, 3]))
    assert model.calls == 0
