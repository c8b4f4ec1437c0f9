"""torchattacks' iterative gradient variants and noise baselines on fastxai (FFGSM, RFGSM, TPGD,
EOTPGD, UPGD, Jitter, VANILA, GN, PGDRS, PGDRSL2, MultiAttack): the same adversarial examples
as torchattacks under the same ``torch.manual_seed`` (fastxai draws from the global generator in
torchattacks' order), the threat model respected, the model left as found, bad arguments refused
before any model call."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from real_models import torchvision

import fastxai
from fastxai.compat import torchattacks as fta

torchattacks = pytest.importorskip("torchattacks")

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]

# (id, class name, constructor arguments, eps-ball (norm, radius) or None)
CASES = [
    ("FFGSM", "FFGSM", {}, ("linf", 8 / 255)),
    ("RFGSM", "RFGSM", dict(steps=4), ("linf", 8 / 255)),
    ("TPGD", "TPGD", dict(steps=4), ("linf", 8 / 255)),
    ("EOTPGD", "EOTPGD", dict(steps=4, eot_iter=3), ("linf", 8 / 255)),
    ("EOTPGD-no-start", "EOTPGD", dict(steps=3, random_start=False), ("linf", 8 / 255)),
    ("UPGD", "UPGD", dict(steps=4), ("linf", 8 / 255)),
    ("UPGD-start-eot", "UPGD", dict(steps=3, random_start=True, eot_iter=2), ("linf", 8 / 255)),
    ("UPGD-dlr", "UPGD", dict(steps=4, loss="dlr", eps=0.1), ("linf", 0.1)),
    ("UPGD-margin", "UPGD", dict(steps=4, loss="margin", decay=0.5), ("linf", 8 / 255)),
    # succeeds within the steps: a zero gradient stops the sample, as torchattacks' NaN momentum
    ("UPGD-margin-fools", "UPGD", dict(steps=6, loss="margin", eps=0.3, alpha=0.05), ("linf", 0.3)),
    ("Jitter", "Jitter", dict(steps=4, eps=0.1), ("linf", 0.1)),
    ("Jitter-no-noise", "Jitter", dict(steps=3, std=0.0, random_start=False), ("linf", 8 / 255)),
    ("VANILA", "VANILA", {}, ("linf", 0.0)),
    ("GN", "GN", {}, None),
    ("PGDRS", "PGDRS", dict(steps=3), ("linf", 8 / 255)),
    ("PGDRS-uniform", "PGDRS", dict(steps=3, noise_type="uniform", noise_sd=0.2), ("linf", 8 / 255)),
    ("PGDRS-chunked", "PGDRS", dict(steps=2, noise_batch_size=3, batch_max=10), ("linf", 8 / 255)),
    ("PGDRSL2", "PGDRSL2", dict(steps=3, eps=0.5), ("l2", 0.5)),
]
NAMES = sorted({name for _, name, _, _ in CASES})


def _setup(batch: int = 6, size: int = 10) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=0, channels=3).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _both(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    name: str,
    kwargs: dict,
    targeted: bool,
    normalised: bool,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """fastxai's and torchattacks' examples in pixel space, each after torch.manual_seed(3)."""
    results = []
    for library in (fta, torchattacks):
        attack = getattr(library, name)(model, **kwargs)
        if normalised:
            attack.set_normalization_used(MEAN, STD)
        if targeted:
            if "targeted" not in attack.supported_mode:
                return None
            attack.set_mode_targeted_by_function(lambda inputs, labels: (labels + 1) % 10, quiet=True)
        inputs = attack.normalize(x) if normalised else x
        torch.manual_seed(3)
        adversarial = attack(inputs, y)
        results.append(attack.inverse_normalize(adversarial) if normalised else adversarial)
    return results[0], results[1]


UNTARGETED_ONLY = ("TPGD", "VANILA", "GN")  # torchattacks' supported_mode is ["default"]


@pytest.mark.parametrize("normalised", [False, True], ids=["pixels", "normalised"])
@pytest.mark.parametrize(
    ("name", "kwargs", "ball", "targeted"),
    [
        pytest.param(*case[1:], targeted, id=case[0] + ("-targeted" if targeted else ""))
        for case in CASES
        for targeted in (False, True)
        if not (targeted and case[1] in UNTARGETED_ONLY)
    ],
)
def test_same_examples_as_torchattacks_within_the_threat_model(
    name: str, kwargs: dict, ball: tuple[str, float] | None, targeted: bool, normalised: bool
) -> None:
    model, x, y = _setup()
    pair = _both(model, x, y, name, kwargs, targeted, normalised)
    assert pair is not None
    ours, theirs = pair
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours.shape == x.shape and ours.min() >= -1e-6 and ours.max() <= 1 + 1e-6
    if ball is not None:
        norm, radius = ball
        delta = (ours - x).flatten(1)
        size = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= radius + 1e-5).all()
    if name not in ("VANILA", "GN", "TPGD"):
        assert not torch.equal(ours, x)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("FFGSM", {}),
        ("RFGSM", dict(steps=2)),
        ("TPGD", dict(steps=2)),
        ("EOTPGD", dict(steps=2)),
        ("UPGD", dict(steps=2, loss="dlr")),
        ("Jitter", dict(steps=2)),
        ("GN", {}),
        ("PGDRS", dict(steps=2, noise_batch_size=2)),
        ("PGDRSL2", dict(steps=2, noise_batch_size=2)),
    ],
)
def test_same_examples_as_torchattacks_on_resnet18(name: str, kwargs: dict) -> None:
    model = torchvision().models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    pair = _both(model, x, y, name, kwargs, targeted=False, normalised=True)
    assert pair is not None
    torch.testing.assert_close(pair[0], pair[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_model_left_as_found_and_modes_as_torchattacks(name: str) -> None:
    model, x, y = _setup(batch=3, size=8)
    calls = []
    model[0].register_forward_hook(lambda *args: calls.append(1))
    model.train()
    model[1].eval()
    model[4].weight.requires_grad_(False)
    before = model_state(model)
    attack = (
        getattr(fta, name)(model, steps=1)
        if name not in ("VANILA", "GN", "FFGSM")
        else getattr(fta, name)(model)
    )
    assert attack.supported_mode == getattr(torchattacks, name)(model).supported_mode
    attack(x, y)
    assert_same_state(before, model_state(model))
    assert all(p.grad is None for p in model.parameters())
    if "targeted" not in attack.supported_mode:
        with pytest.raises(ValueError, match="Targeted mode is not supported"):
            attack.set_mode_targeted_random()
    else:
        attack.set_mode_targeted_random(seed=1)
        attack(x, y)
        assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("name", "kwargs", "argument"),
    [
        ("FFGSM", dict(eps=-0.1), "eps"),
        ("FFGSM", dict(alpha=float("nan")), "alpha"),
        ("RFGSM", dict(steps=2.5), "steps"),
        ("TPGD", dict(alpha=-1), "alpha"),
        ("EOTPGD", dict(eot_iter=0), "eot_iter"),
        ("UPGD", dict(loss="hinge"), "loss"),
        ("UPGD", dict(decay=-1.0), "decay"),
        ("Jitter", dict(scale=0), "scale"),
        ("Jitter", dict(std=-0.1), "std"),
        ("GN", dict(std=-1.0), "std"),
        ("PGDRS", dict(noise_type="laplace"), "noise_type"),
        ("PGDRS", dict(noise_batch_size=0), "noise_batch_size"),
        ("PGDRSL2", dict(batch_max=2, noise_batch_size=5), "batch_max"),
        ("PGDRSL2", dict(noise_sd=-0.5), "noise_sd"),
    ],
)
def test_bad_arguments_refused_by_name_before_any_model_call(name: str, kwargs: dict, argument: str) -> None:
    model, x, y = _setup(batch=2, size=8)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=argument):
        getattr(fta, name)(model, **kwargs)
    attack = getattr(fta, name)(model)
    setattr(attack, argument, kwargs[argument])  # changed after construction: refused at the call
    if argument == "batch_max":
        attack.noise_batch_size = kwargs["noise_batch_size"]
    with pytest.raises(ValueError, match=argument):
        attack(x, y)
    assert not calls


@pytest.mark.parametrize("name", NAMES)
def test_inputs_outside_the_box_refused_before_any_model_call(name: str) -> None:
    model, x, y = _setup(batch=2, size=8)
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match="bounds"):
        getattr(fta, name)(model)(x + 1.5, y)
    assert not calls
    attack = getattr(fta, name)(model)
    if "targeted" in attack.supported_mode:
        attack.set_mode_targeted_by_label()
        with pytest.raises(ValueError, match="labels are required"):
            attack(x, None)
        assert not calls


@pytest.mark.parametrize("normalised", [False, True], ids=["pixels", "normalised"])
def test_multiattack_as_torchattacks(normalised: bool, capsys: pytest.CaptureFixture[str]) -> None:
    model, x, y = _setup(batch=8)
    results, printed = [], []
    for library in (fta, torchattacks):
        attack = library.MultiAttack(
            [
                library.FGSM(model, eps=0.05),
                library.BIM(model, eps=0.1, alpha=0.03, steps=4),
                library.PGD(model, eps=0.3, alpha=0.05, steps=8, random_start=False),
            ],
            verbose=True,
        )
        if normalised:
            attack.set_normalization_used(MEAN, STD)
        inputs = attack.normalize(x) if normalised else x
        results.append(attack(inputs, y))
        printed.append(capsys.readouterr().out)
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)
    assert printed[0] == printed[1] and "Attack success rate" in printed[0]
    ours = fta.MultiAttack(
        [fta.FGSM(model, eps=0.02), fta.PGD(model, eps=0.3, alpha=0.05, random_start=False)]
    )
    fooled = model(ours(x, y)).argmax(1) != y
    assert fooled.any()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    robust, rates, _, _ = ours.save(loader, verbose=False, return_verbose=True)
    assert len(rates) == 2 and rates[-1] == pytest.approx(100 - robust)


def test_multiattack_refuses_bad_lists() -> None:
    model, other, _ = small_cnn(seed=0, channels=3), small_cnn(seed=1, channels=3), None
    with pytest.raises(ValueError, match="at least two"):
        fta.MultiAttack([fta.FGSM(model)])
    with pytest.raises(ValueError, match="same model"):
        fta.MultiAttack([fta.FGSM(model), fta.FGSM(other)])
    with pytest.raises(TypeError, match="attacks"):
        fta.MultiAttack(model)  # type: ignore[arg-type]


def test_eotpgd_on_a_random_model_is_reproducible_and_stays_in_the_ball() -> None:
    model, x, y = _setup(batch=4, size=8)
    noisy = torch.nn.Sequential(torch.nn.Dropout(0.3), model)
    attack = fta.EOTPGD(noisy, eps=0.05, steps=3, eot_iter=4)
    attack.set_model_training_mode(model_training=True, dropout_training=True)
    before = model_state(noisy)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(attack(x, y))
    assert torch.equal(runs[0], runs[1])
    assert (runs[0] - x).abs().max() <= 0.05 + 1e-6 and runs[0].min() >= 0 and runs[0].max() <= 1
    assert_same_state(before, model_state(noisy))


def test_multiattack_passes_settings_to_its_attacks() -> None:
    model, _, _ = _setup()
    inner = [fta.FGSM(model), fta.PGD(model)]
    inner[0].set_mode_targeted_by_label()
    attack = fta.MultiAttack(inner)
    attack.set_normalization_used(MEAN, STD)
    attack.set_model_training_mode(model_training=True)
    attack.set_device("cpu")
    attack.set_mode_default()
    for each in inner:
        assert each.normalization_used is not None and each._model_training
        assert each.device == torch.device("cpu") and each.get_mode() == "default"


@pytest.mark.parametrize("name", ["PGDRS", "PGDRSL2"])
def test_smoothing_attacks_agree_on_every_backend(name: str) -> None:
    """They step the perturbation with unbounded ``pgd_step`` bounds (-inf, inf)."""
    model, x, y = _setup(batch=3, size=8)
    results = {}
    for backend, info in fastxai.backends().items():
        if info.available and x.device.type in info.devices:
            attack = getattr(fta, name)(model, steps=3, noise_batch_size=2)
            attack.set_backend(backend)
            torch.manual_seed(5)
            results[backend] = attack(x, y)
    for result in results.values():
        torch.testing.assert_close(result, results["reference"], atol=1e-6, rtol=0)
