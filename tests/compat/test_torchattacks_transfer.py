"""torchattacks' transfer-oriented momentum attacks on fastxai (NI-, SI-NI-, VMI-, VNI-, DI-, TI-,
PI-FGSM and PI-FGSM++): torchattacks' adversarial examples, seeded alike for the random ones,
the threat model, the model left as found, bad arguments refused before any model call."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, fail_at_call, model_state, small_cnn

from fastxai.compat import torchattacks as fta

torchattacks = pytest.importorskip("torchattacks")
# torch's note that an even TI kernel with padding="same" pads a copy of the gradient
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

CASES = [
    ("NIFGSM", dict(steps=4)),
    ("SINIFGSM", dict(steps=3, m=3)),
    ("VMIFGSM", dict(steps=3, N=3)),
    ("VNIFGSM", dict(steps=3, N=3, beta=2.0)),
    ("DIFGSM", dict(steps=4)),
    ("DIFGSM", dict(steps=4, decay=1.0, resize_rate=1.2, diversity_prob=0.7, random_start=True)),
    ("TIFGSM", dict(steps=4, len_kernel=5)),
    ("TIFGSM", dict(steps=3, kernel_name="linear", len_kernel=4, diversity_prob=1.0)),
    ("TIFGSM", dict(steps=3, kernel_name="uniform", len_kernel=3, decay=1.0, random_start=True)),
    ("PIFGSM", dict(num_iter_set=4)),
    ("PIFGSMPP", dict(num_iter_set=4, project_factor=0.5)),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _) in enumerate(CASES)]
NAMES = sorted({name for name, _ in CASES})
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def _setup(size: int = 12) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=0, channels=3).eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, size, size, generator=generator)
    y = torch.randint(0, 10, (5,), generator=generator)
    return model, x, y


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _eps(attack: fta.Attack) -> float:
    return float(attack.max_epsilon if hasattr(attack, "max_epsilon") else attack.eps)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("mode", ["default", "targeted", "normalized"])
def test_same_adversarial_examples_as_torchattacks(name: str, kwargs: dict, mode: str) -> None:
    model, x, y = _setup()
    theirs, ours = getattr(torchattacks, name)(model, **kwargs), getattr(fta, name)(model, **kwargs)
    assert ours.supported_mode == theirs.supported_mode
    inputs = x
    if mode == "targeted":
        if "targeted" not in theirs.supported_mode:
            with pytest.raises(ValueError, match="Targeted mode is not supported"):
                ours.set_mode_targeted_by_label()
            return
        for attack in (theirs, ours):
            attack.set_mode_targeted_by_label(quiet=True)
        y = (y + 1) % 10
    if mode == "normalized":
        for attack in (theirs, ours):
            attack.set_normalization_used(MEAN, STD)
        inputs = _normalised(x)
    model.train()
    torch.manual_seed(7)  # the random draws (neighbours, resizing, start) alike
    expected = theirs(inputs, y)
    before = model_state(model)
    torch.manual_seed(7)
    got = ours(inputs, y)
    assert_same_state(before, model_state(model))
    assert not torch.equal(got, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("name", NAMES)
def test_same_as_torchattacks_on_resnet18(name: str) -> None:
    from real_models import torchvision

    model = torchvision().models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 7])
    steps = {"num_iter_set": 2} if name.startswith("PI") else {"steps": 2}
    theirs, ours = getattr(torchattacks, name)(model, **steps), getattr(fta, name)(model, **steps)
    torch.manual_seed(3)
    expected = theirs(x, y)
    torch.manual_seed(3)
    got = ours(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("targeted", [False, True])
def test_eps_ball_and_box_hold_and_the_loss_rises(name: str, targeted: bool) -> None:
    model, x, y = _setup()
    attack = getattr(fta, name)(model)
    if targeted:
        if "targeted" not in attack.supported_mode:
            return
        attack.set_mode_targeted_least_likely()
    x_adv = attack(x, y)
    assert (x_adv - x).abs().max() <= _eps(attack) + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        labels = attack.get_target_label(x, y) if targeted else y
        loss_before = torch.nn.functional.cross_entropy(model(x), labels)
        loss_after = torch.nn.functional.cross_entropy(model(x_adv), labels)
    assert (loss_after < loss_before) if targeted else (loss_after > loss_before)


def test_random_attacks_follow_the_global_seed() -> None:
    model, x, y = _setup()
    for name in ("VMIFGSM", "VNIFGSM", "DIFGSM", "TIFGSM"):
        attack = getattr(fta, name)(model, steps=3)
        torch.manual_seed(0)
        first = attack(x, y)
        torch.manual_seed(0)
        assert torch.equal(attack(x, y), first), name
        torch.manual_seed(1)
        assert not torch.equal(attack(x, y), first), name


def test_model_left_as_found_with_hooks_and_frozen_parameters() -> None:
    model, x, y = _setup()
    model[1].train()
    model[0].weight.requires_grad_(False)
    model[0].register_forward_hook(lambda module, inputs, output: None)
    before = model_state(model)
    for name in NAMES:
        getattr(fta, name)(model)(x, y)
        assert_same_state(before, model_state(model))


@pytest.mark.parametrize(
    ("name", "kwargs", "argument"),
    [
        ("NIFGSM", dict(eps=-0.1), "eps"),
        ("NIFGSM", dict(alpha=0.0), "alpha"),
        ("SINIFGSM", dict(m=0), "m"),
        ("SINIFGSM", dict(steps=2.5), "steps"),
        ("VMIFGSM", dict(N=0), "N"),
        ("VNIFGSM", dict(beta=float("nan")), "beta"),
        ("VNIFGSM", dict(decay=-1.0), "decay"),
        ("DIFGSM", dict(diversity_prob=1.5), "diversity_prob"),
        ("DIFGSM", dict(resize_rate=0.0), "resize_rate"),
        ("TIFGSM", dict(kernel_name="box"), "kernel_name"),
        ("TIFGSM", dict(len_kernel=0), "len_kernel"),
        ("PIFGSM", dict(num_iter_set=0), "num_iter_set"),
        ("PIFGSM", dict(max_epsilon=-1.0), "max_epsilon"),
        ("PIFGSMPP", dict(project_factor=-0.5), "project_factor"),
    ],
)
def test_bad_arguments_are_refused_naming_them_before_any_model_call(
    name: str, kwargs: dict, argument: str
) -> None:
    model, x, y = _setup()
    with pytest.raises(ValueError, match=argument):
        getattr(fta, name)(model, **kwargs)
    attack = getattr(fta, name)(model)  # changed after construction: refused at the call
    (key, value), *_ = kwargs.items()
    setattr(attack, key, value)
    if key in ("kernel_name", "len_kernel"):
        return  # TIFGSM builds its kernel in the constructor, as torchattacks
    handle = fail_at_call(model, 1)
    try:
        with pytest.raises(ValueError, match=argument):
            attack(x, y)
    finally:
        handle.remove()


def test_inputs_the_attacks_cannot_take_are_refused_before_any_model_call() -> None:
    model, x, y = _setup(size=10)
    handle = fail_at_call(model, 1)
    try:
        with pytest.raises(ValueError, match="resize_rate"):
            fta.DIFGSM(model, resize_rate=1.05)(x, y)  # int(10 * 1.05) == 10: nothing to draw
        with pytest.raises(ValueError, match="within bounds"):
            fta.NIFGSM(model)(x + 1, y)
        with pytest.raises(ValueError, match="m=1000000000: 1000000000 copies"):
            fta.SINIFGSM(model, m=10**9)(x, y)
        with pytest.raises(ValueError, match="N=1000000000"):
            fta.VNIFGSM(model, N=10**9)(x, y)
        with pytest.raises(ValueError, match="3 channels"):
            fta.PIFGSMPP(small_cnn(seed=0, channels=1))(x[:, :1], y)
        with pytest.raises(ValueError, match="Targeted mode is not supported"):
            fta.PIFGSM(model).set_mode_targeted_least_likely()
    finally:
        handle.remove()


def test_ti_kernels_are_torchattacks_kernels() -> None:
    model, _, _ = _setup()
    for kernel_name, size in [("gaussian", 15), ("gaussian", 7), ("linear", 6), ("uniform", 5)]:
        theirs = torchattacks.TIFGSM(model, kernel_name=kernel_name, len_kernel=size)
        ours = fta.TIFGSM(model, kernel_name=kernel_name, len_kernel=size)
        torch.testing.assert_close(ours.stacked_kernel, theirs.stacked_kernel, rtol=1e-6, atol=1e-8)


def test_one_model_batch_per_step() -> None:
    """SI-NI-FGSM's m scale copies and VMI-FGSM's point and N neighbours run as one batch (beside
    the one-sample call that reads the number of classes)."""
    model, x, y = _setup()
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    try:
        fta.SINIFGSM(model, steps=2, m=4)(x, y)
        assert sizes == [1, 20, 20]
        sizes.clear()
        fta.VMIFGSM(model, steps=2, N=3)(x, y)
        assert sizes == [1, 20, 20]
    finally:
        handle.remove()
