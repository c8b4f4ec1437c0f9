"""PGD and friends: agreement with torchattacks, the threat model, restarts, early stopping,
robust accuracy, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from models import assert_same_state, model_state, small_cnn

import fastxai as fx
from fastxai.compat import torchattacks as fta


def _setup(seed: int = 0, batch: int = 6) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=seed, channels=3).eval()
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 8, 8, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    return model, x, y


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A digits CNN trained for a few seconds (about 97% test accuracy) and 64 test images."""
    pytest.importorskip("sklearn")
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    return train_digits_cnn(x_train, y_train), x_test[:64], y_test[:64]


PEER_CASES = [
    ("PGD", dict(eps=8 / 255, alpha=2 / 255, steps=5, random_start=False)),
    ("PGDL2", dict(eps=0.5, alpha=0.1, steps=5, random_start=False)),
    ("FGSM", dict(eps=8 / 255)),
    ("BIM", dict(eps=8 / 255, alpha=2 / 255, steps=5)),
    ("MIFGSM", dict(eps=8 / 255, alpha=2 / 255, steps=5, decay=1.0)),
]


@pytest.mark.parametrize(("name", "kwargs"), PEER_CASES, ids=[c[0] for c in PEER_CASES])
@pytest.mark.parametrize("mode", ["default", "targeted", "normalized"])
def test_compat_classes_match_torchattacks(name: str, kwargs: dict, mode: str) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _setup()
    theirs, ours = getattr(torchattacks, name)(model, **kwargs), getattr(fta, name)(model, **kwargs)
    inputs = x
    if mode == "targeted":
        for attack in (theirs, ours):
            attack.set_mode_targeted_by_label(quiet=True)
        y = (y + 1) % 10
    if mode == "normalized":
        mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
        for attack in (theirs, ours):
            attack.set_normalization_used(mean, std)
        inputs = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    model.train()
    expected = theirs(inputs, y)
    before = model_state(model)
    got = ours(inputs, y)
    assert_same_state(before, model_state(model))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_functional_pgd_matches_torchattacks(norm: str) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _setup(seed=3)
    kwargs = (
        dict(eps=8 / 255, alpha=2 / 255, steps=7) if norm == "linf" else dict(eps=0.3, alpha=0.05, steps=7)
    )
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    expected = cls(model, random_start=False, **kwargs)(x, y)
    got = fx.pgd(model, x, y, norm=norm, random_start=False, **kwargs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
@pytest.mark.parametrize("targeted", [False, True])
def test_threat_model_holds(norm: str, loss: str, targeted: bool) -> None:
    model, x, y = _setup(seed=1)
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = fx.pgd(
        model,
        x,
        y,
        eps=eps,
        alpha=eps / 4,
        steps=6,
        norm=norm,
        loss=loss,
        targeted=targeted,
        restarts=2,
        seed=0,
    )
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_attack_raises_the_loss_and_fools_an_undefended_model(digits) -> None:
    model, x, y = digits
    x_adv = fx.pgd(model, x, y, eps=0.3, alpha=0.05, steps=20, seed=0)
    with torch.no_grad():
        clean_loss = torch.nn.functional.cross_entropy(model(x), y)
        adv_loss = torch.nn.functional.cross_entropy(model(x_adv), y)
        fooled = (model(x_adv).argmax(1) != y).float().mean()
    assert adv_loss > clean_loss
    assert fooled > 0.8


def test_targeted_attack_reaches_the_target(digits) -> None:
    model, x, _ = digits
    x = x[:8]
    target = torch.full((8,), 3)
    x_adv = fx.pgd(model, x, target, eps=0.5, alpha=0.05, steps=40, targeted=True, seed=0)
    assert (model(x_adv).argmax(1) == 3).float().mean() > 0.7


def test_same_seed_same_result_and_random_start_differs() -> None:
    model, x, y = _setup()
    first = fx.pgd(model, x, y, seed=4)
    assert torch.equal(first, fx.pgd(model, x, y, seed=4))
    assert not torch.equal(first, fx.pgd(model, x, y, seed=5))


class CountingModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.inner(x)


def test_early_stop_returns_adversarial_examples_and_costs_less(digits) -> None:
    model, x, y = digits
    counted = CountingModel(model)
    full = fx.pgd(counted, x, y, eps=0.3, alpha=0.05, steps=20, seed=0)
    full_rows = counted.rows
    counted.rows = 0
    early = fx.pgd(counted, x, y, eps=0.3, alpha=0.05, steps=20, seed=0, early_stop=True)
    assert counted.rows < 0.6 * full_rows
    with torch.no_grad():
        fooled_full = model(full).argmax(1) != y
        fooled_early = model(early).argmax(1) != y
    assert fooled_early.sum() >= fooled_full.sum() - 1  # same attack strength, up to a borderline sample
    assert ((early - x).abs().amax(dim=(1, 2, 3)) <= 0.3 + 1e-6).all()
    assert (fooled_full | fooled_early).any()


def test_restarts_keep_the_most_adversarial_run(digits) -> None:
    model, x, y = digits
    kwargs = dict(eps=0.1, alpha=0.03, steps=3)
    single = [fx.pgd(model, x, y, seed=seed, **kwargs) for seed in range(4)]
    combined = fx.pgd(model, x, y, seed=11, restarts=4, **kwargs)
    with torch.no_grad():
        loss = lambda adv: torch.nn.functional.cross_entropy(model(adv), y, reduction="none")  # noqa: E731
        fooled = lambda adv: model(adv).argmax(1) != y  # noqa: E731
        any_single = torch.stack([fooled(s) for s in single]).float().mean(0)
        assert fooled(combined).float().mean() >= any_single.mean() - 1e-6
        # Among non-fooled samples the kept restart has a loss at least that of a typical run.
        assert loss(combined).mean() >= torch.stack([loss(s) for s in single]).mean(0).mean() - 1e-6


def test_fgsm_is_one_full_step() -> None:
    model, x, y = _setup()
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(leaf), y, reduction="sum"), leaf)
    expected = torch.clamp(x + 0.1 * grad.sign(), 0, 1)
    torch.testing.assert_close(fx.fgsm(model, x, y, eps=0.1), expected, rtol=0, atol=1e-7)


def test_robust_accuracy(digits) -> None:
    model, x, _ = digits
    x = x[:20]
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 10  # five misclassified samples
    result = fx.robust_accuracy(model, (x, y), eps=0.3, alpha=0.05, steps=10, batch_size=8, seed=0)
    assert result["samples"] == 20 and result["clean_accuracy"] == pytest.approx(0.75)
    assert result["robust_accuracy"] <= result["clean_accuracy"]
    loader = [(x[:8], y[:8]), (x[8:], y[8:])]
    attack = lambda m, inputs, labels: fx.pgd(m, inputs, labels, eps=0.3, alpha=0.05, steps=10, seed=0)  # noqa: E731
    assert fx.robust_accuracy(model, loader, attack)["clean_accuracy"] == pytest.approx(0.75)
    no_attack = fx.robust_accuracy(model, (x, y), lambda m, inputs, labels: inputs)
    assert no_attack["robust_accuracy"] == no_attack["clean_accuracy"]


ROBUST_BAD = [
    (dict(labels=lambda y: torch.full_like(y, 10)), ValueError, r"labels must be in \[0, 10\)"),
    (dict(labels=lambda y: y - 1 - y.max()), ValueError, r"labels must be in \[0, 10\)"),
    (dict(labels=lambda y: y.float()), TypeError, "labels must hold integer class indices"),
    (dict(eps=-1.0, labels=lambda y: (y + 1) % 10), ValueError, "eps must be a finite number >= 0"),
    (dict(alpha=0.0, labels=lambda y: (y + 1) % 10), ValueError, "alpha must be a finite number > 0"),
    (dict(norm="l1", labels=lambda y: (y + 1) % 10), ValueError, "norm must be one of"),
    (dict(epsilon=0.1), TypeError, "attack_kwargs for the default PGD"),
]


@pytest.mark.parametrize(("change", "error", "message"), ROBUST_BAD, ids=[m for _, _, m in ROBUST_BAD])
def test_robust_accuracy_refuses_bad_labels_and_settings(change: dict, error: type, message: str) -> None:
    """Labels outside the model's classes used to count as clean errors ("clean accuracy 0.755"
    with label 10 on 10 classes), and a bad eps passed unchecked when no sample was correct (and
    so none attacked): the labels [wrong on purpose, (y + 1) % 10] make every sample misclassified."""
    model, x, _ = _setup()
    y = model(x).argmax(1)
    change = dict(change)
    labels = change.pop("labels", lambda y: y)(y)
    counted = CountingModel(model)
    with pytest.raises(error, match=message):
        fx.robust_accuracy(counted, (x, labels), batch_size=4, **change)
    assert counted.rows <= 4  # at most the first batch's clean pass, no attack


@pytest.mark.parametrize(("backend", "device"), backend_params())
def test_same_attack_on_every_backend(backend: str, device: str) -> None:
    model, x, y = _setup(seed=8)
    model, x, y = model.to(device), x.to(device), y.to(device)
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        expected = fx.pgd(
            model, x, y, eps=eps, alpha=eps / 4, steps=4, norm=norm, seed=0, backend="reference"
        )
        got = fx.pgd(model, x, y, eps=eps, alpha=eps / 4, steps=4, norm=norm, seed=0, backend=backend)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


BAD = [
    (dict(eps=-0.1), ValueError, "eps must be a finite number >= 0"),
    (dict(alpha=0.0), ValueError, "alpha must be a finite number > 0"),
    (dict(steps=0), ValueError, "steps must be an int >= 1"),
    (dict(norm="l1"), ValueError, "norm must be one of"),
    (dict(loss="hinge"), ValueError, "loss must be one of"),
    (dict(restarts=0), ValueError, "restarts must be an int >= 1"),
    (dict(bounds=(1.0, 0.0)), ValueError, "bounds must be"),
    (dict(labels=torch.tensor([1, 2])), ValueError, "labels must be an int or have shape"),
    (dict(labels=torch.full((6,), 10)), ValueError, r"labels must be in \[0, 10\)"),
    (dict(labels=torch.rand(6)), TypeError, "labels must hold integer class indices"),
    (dict(inputs_scale=2.0), ValueError, r"inputs must lie within bounds"),
    (dict(normalize=([0.5, 0.5], [0.2, 0.2])), ValueError, "one value per channel"),
    (dict(targeted=True, labels=None), ValueError, "labels are required for a targeted attack"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize(("change", "error", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_refused_before_any_work(change: dict, error: type, message: str) -> None:
    model, x, y = _setup()
    counted = CountingModel(model).train()
    before = model_state(counted)
    change = dict(change)
    x = x * change.pop("inputs_scale", 1.0)
    labels = change.pop("labels", y)
    with pytest.raises(error, match=message):
        fx.pgd(counted, x, labels, **change)
    assert counted.rows <= (1 if "labels must be in" in message else 0)
    assert_same_state(before, model_state(counted))


def test_model_and_parameter_gradients_untouched_after_attacks() -> None:
    model, x, y = _setup()
    model.train()
    model[0].weight.requires_grad_(False)
    before = model_state(model)
    fx.pgd(model, x, y, steps=2, restarts=2, early_stop=True)
    fx.mifgsm(model, x, y, steps=2)
    fx.robust_accuracy(model, (x, y), steps=2)
    assert_same_state(before, model_state(model))
    assert all(p.grad is None for p in model.parameters())


PLAIN_CALLABLE_ATTACKS = {
    "pgd": lambda f, x, y: fx.pgd(f, x, y, steps=2),
    "fgsm": lambda f, x, y: fx.fgsm(f, x, y),
    "bim": lambda f, x, y: fx.bim(f, x, y, steps=2),
    "mifgsm": lambda f, x, y: fx.mifgsm(f, x, y, steps=2),
    "cw_l2": lambda f, x, y: fx.cw_l2(f, x, y, steps=2, binary_search_steps=1),
    "deepfool": lambda f, x, y: fx.deepfool(f, x, y, steps=2),
    "apgd": lambda f, x, y: fx.apgd(f, x, y, steps=2),
    "fab": lambda f, x, y: fx.fab(f, x, y, steps=2),
    "square_attack": lambda f, x, y: fx.square_attack(f, x, y, n_queries=4),
    "robust_accuracy": lambda f, x, y: fx.robust_accuracy(f, (x, y), steps=2),
}


@pytest.mark.parametrize("name", list(PLAIN_CALLABLE_ATTACKS))
def test_a_plain_callable_around_a_model_gets_no_parameter_gradients(name: str) -> None:
    """``attack(lambda x: net(x), ...)``: the state guard cannot see the module, so its parameters
    still require gradients; an attack must differentiate w.r.t. its own variables only
    (cw_l2's ``cost.backward()`` filled ``.grad`` of every parameter)."""
    model, x, y = _setup()
    PLAIN_CALLABLE_ATTACKS[name](lambda inputs: model(inputs), x, y)
    assert [n for n, p in model.named_parameters() if p.grad is not None] == []


def test_compat_refuses_options_it_does_not_implement() -> None:
    model, _, _ = _setup()
    with pytest.raises(NotImplementedError, match="eot_iter"):
        fta.APGD(model, eot_iter=2)
    with pytest.raises(NotImplementedError, match="norm='L1'"):
        fta.FAB(model, norm="L1")
    with pytest.raises(ValueError, match="Targeted mode is not supported"):
        fta.DeepFool(model).set_mode_targeted_random()


class FailingModel(torch.nn.Module):
    """Fails on its third call, after adding a hook of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn(seed=0, channels=3)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            self.inner[4].register_forward_hook(lambda module, inputs, output: None)
            raise RuntimeError("model failed")
        return self.inner(x)


@pytest.mark.parametrize("attack", ["pgd", "mifgsm", "robust_accuracy"])
def test_model_restored_after_an_exception(attack: str) -> None:
    _, x, y = _setup()
    model = FailingModel().train()
    model.inner[1].register_forward_hook(lambda module, inputs, output: None)
    before = model_state(model)
    with pytest.raises(RuntimeError, match="model failed"):
        if attack == "robust_accuracy":
            with torch.no_grad():
                predicted = model.inner.eval()(x).argmax(1)  # every sample correct: all get attacked
            model.train()
            fx.robust_accuracy(model, (x, predicted), steps=3)
        else:
            getattr(fx, attack)(model, x, y, steps=3)
    assert_same_state(before, model_state(model))


def test_adversarial_training_raises_robust_accuracy() -> None:
    pytest.importorskip("sklearn")
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    attack = dict(eps=0.15, alpha=0.04, steps=10, seed=0)
    standard = train_digits_cnn(x_train, y_train, epochs=8)
    robust = train_digits_cnn(x_train, y_train, epochs=8, adversarial=dict(eps=0.15, alpha=0.04, steps=3))
    standard_result = fx.robust_accuracy(standard, (x_test, y_test), **attack)
    robust_result = fx.robust_accuracy(robust, (x_test, y_test), **attack)
    assert robust_result["clean_accuracy"] > 0.85
    assert robust_result["robust_accuracy"] > standard_result["robust_accuracy"] + 0.2


def test_adversarial_training_step_checks_and_trains() -> None:
    model, x, y = _setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    result = fx.adversarial_training_step(model, optimizer, x, y, eps=0.1, alpha=0.05, steps=2, seed=0)
    assert set(result) == {"loss", "adversarial_accuracy"} and result["loss"] > 0
    assert model.training
    assert any(not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))
    with pytest.raises(ValueError, match="clean_weight"):
        fx.adversarial_training_step(model, optimizer, x, y, clean_weight=2.0)


def test_apgd_checkpoints() -> None:
    from fastxai.attacks.auto_pgd import checkpoints

    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_threat_model_and_seed(norm: str, loss: str) -> None:
    model, x, y = _setup(seed=9)
    eps = 0.1 if norm == "linf" else 0.5
    x_adv = fx.apgd(model, x, y, eps=eps, steps=12, norm=norm, loss=loss, seed=1)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(x_adv, fx.apgd(model, x, y, eps=eps, steps=12, norm=norm, loss=loss, seed=1))


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_agrees_with_torchattacks_and_is_at_least_as_strong_as_pgd(loss: str) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    pytest.importorskip("sklearn")
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    model = train_digits_cnn(x_train, y_train, epochs=8, adversarial=dict(eps=0.15, alpha=0.04, steps=3))
    data = (x_test[:200], y_test[:200])
    eps, steps = 0.15, 20

    def accuracy(attack) -> float:  # type: ignore[no-untyped-def]
        return fx.robust_accuracy(model, data, attack)["robust_accuracy"]

    ours = accuracy(lambda m, x, y: fx.apgd(m, x, y, eps=eps, steps=steps, loss=loss, seed=0))
    theirs = accuracy(lambda m, x, y: torchattacks.APGD(m, eps=eps, steps=steps, loss=loss, seed=0)(x, y))
    pgd = accuracy(lambda m, x, y: fx.pgd(m, x, y, eps=eps, alpha=eps / 4, steps=steps, seed=0))
    assert abs(ours - theirs) <= 0.03
    assert ours <= pgd + 0.01


APGD_BAD = [
    (dict(steps=1), "steps must be an int >= 2"),
    (dict(loss="margin"), "loss must be one of"),
    (dict(rho=0.0), "rho must be in"),
    (dict(targeted=True), "needs labels"),
    (dict(target_labels=torch.zeros(6, dtype=torch.long)), "only used with targeted=True"),
]


@pytest.mark.parametrize(("change", "message"), APGD_BAD, ids=[m for _, m in APGD_BAD])
def test_apgd_bad_input(change: dict, message: str) -> None:
    model, x, y = _setup()
    counted = CountingModel(model)
    before = model_state(counted)
    with pytest.raises(ValueError, match=message):
        fx.apgd(counted, x, y, **change)
    assert counted.rows == 0
    assert_same_state(before, model_state(counted))


def test_cw_l2_finds_the_nearest_boundary_of_a_linear_model() -> None:
    """For two classes and f(x) = W x + b the smallest L2 change of label has length
    |z_0 - z_1| / ||w_1 - w_0||; CW with a binary search over c comes within 10% of it."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(10, 2)
    x = torch.rand(8, 10) * 0.4 + 0.3
    with torch.no_grad():
        logits = linear(x)
    y = logits.argmax(1)
    optimal = (logits[:, 0] - logits[:, 1]).abs() / (linear.weight[1] - linear.weight[0]).norm()
    x_adv = fx.cw_l2(linear, x, y, c=1.0, steps=200, lr=0.01, binary_search_steps=8)
    distance = (x_adv - x).norm(dim=1)
    assert (linear(x_adv).argmax(1) != y).all()
    assert (distance >= optimal.detach() * (1 - 1e-4)).all()  # nothing can beat the optimum
    assert (distance <= optimal.detach() * 1.10).all()


def test_cw_l2_returns_the_input_where_it_fails_and_checks_arguments() -> None:
    model, x, y = _setup()
    x_adv = fx.cw_l2(model, x, y, c=1e-6, steps=2, binary_search_steps=1)
    with torch.no_grad():
        unchanged = model(x_adv).argmax(1) == y
    assert torch.equal(x_adv[unchanged], x[unchanged])
    for change, message in [
        (dict(c=0), "c must be"),
        (dict(kappa=-1), "kappa must be"),
        (dict(steps=0), "steps"),
    ]:
        with pytest.raises(ValueError, match=message):
            fx.cw_l2(model, x, y, **change)


def test_jsma_reaches_targets_with_few_features_like_torchattacks(digits) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    x, y = x[:20], y[:20]
    target = (y + 1) % 10
    x_adv = fx.jsma(model, x, target, theta=1.0, gamma=0.3)
    changed = ((x_adv - x).abs() > 0).flatten(1).sum(1)
    assert (changed <= int(0.3 * 64 / 2) * 2).all()
    assert (x_adv >= x).all() and x_adv.max() <= 1  # theta > 0 only raises features
    theirs_adv = torchattacks.JSMA(model, theta=1.0, gamma=0.3)(x, y)  # default mode: target (y + 1) % 10
    with torch.no_grad():
        ours = (model(x_adv).argmax(1) == target).float().mean()
        theirs = (model(theirs_adv).argmax(1) == target).float().mean()
    assert ours >= theirs - 0.1
    assert ours > 0.3


def test_jsma_bad_input() -> None:
    model, x, y = _setup()
    for change, message in [
        (dict(theta=0.0), "theta must be"),
        (dict(gamma=0.0), "gamma must be in"),
        (dict(target_labels=None), "target_labels are required"),
    ]:
        kwargs = {"target_labels": y} | change
        with pytest.raises(ValueError, match=message):
            fx.jsma(model, x, **kwargs)


def test_substitute_from_oracle_labels_transfers_better_than_noise(digits) -> None:
    from fastxai.digits import load_digits

    oracle = digits[0]
    _, (x_test, y_test) = load_digits()
    torch.manual_seed(0)
    substitute = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    before = model_state(oracle)
    substitute, info = fx.train_substitute(oracle, x_test[:100], substitute, rounds=4, step=0.1, epochs=10)
    assert info == {"queries": 1600.0, "dataset_size": 1600.0}
    assert_same_state(before, model_state(oracle))
    held_x, held_y = x_test[100:], y_test[100:]
    with torch.no_grad():
        agreement = (substitute(held_x).argmax(1) == oracle(held_x).argmax(1)).float().mean()
        correct = oracle(held_x).argmax(1) == held_y
    assert agreement > 0.8
    x, y = held_x[correct], held_y[correct]
    _, rate = fx.transfer_attack(oracle, substitute, x, y, eps=0.2, alpha=0.05, steps=10, seed=0)
    noise = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).sign()).clamp(0, 1)
    with torch.no_grad():
        noise_rate = (oracle(noise).argmax(1) != y).float().mean()
    assert rate > noise_rate + 0.1
