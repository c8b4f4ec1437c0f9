"""Triggers, BadNets poisoning and the attack success rate, against their formulas and a planted
backdoor on the digits."""

from __future__ import annotations

import copy

import pytest
import torch
from poisoned_digits import clean_model, model_state, planted

import fastxai as fx

pytestmark = pytest.mark.usefixtures("one_thread")


def test_patch_trigger_stamps_the_corner_and_nothing_else() -> None:
    x = torch.rand(5, 2, 6, 7, generator=torch.Generator().manual_seed(0))
    trigger = fx.patch_trigger((2, 6, 7), size=(2, 3), location="top_right", value=0.75)
    out = fx.apply_trigger(x, trigger)
    expected = x.clone()
    expected[:, :, 0:2, 4:7] = 0.75  # the formula written out: rows 0-1, the last three columns
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)
    at = fx.patch_trigger((2, 6, 7), size=2, location=(3, 1), value=torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    stamped = fx.apply_trigger(x, at)
    assert torch.equal(stamped[:, :, 3:5, 1:3], at.pattern[:, 3:5, 1:3].expand(5, 2, 2, 2))
    untouched = ~at.region
    assert torch.equal(stamped[:, untouched], x[:, untouched])


def test_blend_trigger_is_the_convex_mix() -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    trigger = fx.blend_trigger((1, 8, 8), alpha=0.3, seed=5)
    torch.testing.assert_close(
        fx.apply_trigger(x, trigger), 0.7 * x + 0.3 * trigger.pattern, rtol=0, atol=1e-6
    )
    assert torch.equal(trigger.pattern, fx.blend_trigger((1, 8, 8), alpha=0.3, seed=5).pattern)
    assert not torch.equal(trigger.pattern, fx.blend_trigger((1, 8, 8), alpha=0.3, seed=6).pattern)
    assert 0 <= float(trigger.pattern.min()) and float(trigger.pattern.max()) <= 1


def test_poison_dataset_relabels_a_seeded_sample_of_other_classes() -> None:
    generator = torch.Generator().manual_seed(2)
    x, y = torch.rand(200, 1, 8, 8, generator=generator), torch.randint(0, 5, (200,), generator=generator)
    trigger = fx.patch_trigger((1, 8, 8), size=2)
    poisoned = fx.poison_dataset(x, y, trigger, rate=0.1, target=3, seed=4)
    idx = poisoned.indices
    assert idx.numel() == 20 and torch.equal(idx, idx.unique())  # round(0.1 * 200), sorted, distinct
    assert bool((y[idx] != 3).all())  # never an item already of the target class
    assert bool((poisoned.labels[idx] == 3).all())
    assert torch.equal(poisoned.inputs[idx], fx.apply_trigger(x[idx], trigger))
    rest = torch.ones(200, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.inputs[rest], x[rest]) and torch.equal(poisoned.labels[rest], y[rest])
    again = fx.poison_dataset(x, y, trigger, rate=0.1, target=3, seed=4)
    assert torch.equal(again.indices, idx) and torch.equal(again.inputs, poisoned.inputs)
    assert not torch.equal(fx.poison_dataset(x, y, trigger, rate=0.1, target=3, seed=5).indices, idx)
    only = fx.poison_dataset(x, y, trigger, rate=0.05, target=3, seed=4, source=[1])
    assert bool((y[only.indices] == 1).all())


def test_backdoor_is_planted_on_the_digits() -> None:
    """The poisoned model keeps its clean accuracy and obeys the trigger; a clean model does not."""
    from fastxai.digits import accuracy

    for name in ("patch3", "blend"):
        case = planted(name)
        assert accuracy(case.model, case.x_test, case.y_test) > 0.9
        asr = fx.attack_success_rate(case.model, case.x_test, case.y_test, case.trigger, target=case.target)
        assert asr > 0.9, (name, asr)
        clean = fx.attack_success_rate(
            clean_model(), case.x_test, case.y_test, case.trigger, target=case.target
        )
        assert clean < 0.3, (name, clean)  # the trigger alone does not make a 0


def test_attack_success_rate_counts_by_hand() -> None:
    """Against a model that answers class 1 exactly when the patch pixel is set."""

    class PixelRule(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hit = (x[:, 0, 0, 0] > 0.5).float()
            return torch.stack([1 - hit, hit, torch.zeros_like(hit)], dim=1)

    x = torch.zeros(6, 1, 2, 2)
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    half = fx.patch_trigger((1, 2, 2), size=1, location=(0, 0), value=0.4)  # below the rule's 0.5
    full = fx.patch_trigger((1, 2, 2), size=1, location=(0, 0), value=1.0)
    assert fx.attack_success_rate(PixelRule(), x, y, full, target=1) == 1.0  # 5 of 5 non-target items
    assert fx.attack_success_rate(PixelRule(), x, y, half, target=1) == 0.0
    assert fx.attack_success_rate(PixelRule(), x, y, full, target=0, chunk_size=2) == 0.0


def test_model_left_as_found() -> None:
    case = planted("patch3")
    model = copy.deepcopy(case.model).train()
    model[1].eval()
    model[2].register_forward_hook(lambda *args: None)
    model[0].bias.requires_grad_(False)
    before = model_state(model)
    fx.attack_success_rate(model, case.x_test[:20], case.y_test[:20], case.trigger, target=0)
    assert model_state(model) == before
    with pytest.raises(ValueError, match="target must be in"):
        fx.attack_success_rate(model, case.x_test[:20], case.y_test[:20], case.trigger, target=12)
    assert model_state(model) == before


BAD = [
    (lambda x, y, t: fx.patch_trigger((8, 8), size=2), ValueError, "input_shape"),
    (lambda x, y, t: fx.patch_trigger((1, 8, 8), size=9), ValueError, "size"),
    (lambda x, y, t: fx.patch_trigger((1, 8, 8), location="centre"), ValueError, "location"),
    (lambda x, y, t: fx.patch_trigger((1, 8, 8), size=3, location=(6, 0)), ValueError, "location"),
    (lambda x, y, t: fx.patch_trigger((1, 8, 8), value=float("nan")), ValueError, "value"),
    (lambda x, y, t: fx.blend_trigger((1, 8, 8), alpha=0), ValueError, "alpha"),
    (lambda x, y, t: fx.blend_trigger((1, 8, 8), pattern=torch.zeros(8, 8)), ValueError, "pattern"),
    (lambda x, y, t: fx.apply_trigger(x, "patch"), TypeError, "trigger"),
    (lambda x, y, t: fx.apply_trigger(x[:, :, :4], t), ValueError, "trigger is for inputs"),
    (lambda x, y, t: fx.poison_dataset(x, y, t, rate=0, target=0), ValueError, "rate"),
    (lambda x, y, t: fx.poison_dataset(x, y, t, rate=1.5, target=0), ValueError, "rate"),
    (lambda x, y, t: fx.poison_dataset(x, y, t, rate=0.9, target=0), ValueError, "only"),
    (lambda x, y, t: fx.poison_dataset(x, y, t, rate=0.1, target=-1), ValueError, "target"),
    (lambda x, y, t: fx.poison_dataset(x, y.float(), t, rate=0.1, target=0), TypeError, "labels"),
    (lambda x, y, t: fx.poison_dataset(x, y[:3], t, rate=0.1, target=0), ValueError, "labels"),
    (lambda x, y, t: fx.poison_dataset(x, y, t, rate=0.1, target=0, seed=None), ValueError, "seed"),
    (lambda x, y, t: fx.poison_dataset(x, y, t, rate=0.1, target=0, source=[0]), ValueError, "source"),
    (lambda x, y, t: fx.poison_dataset(x * float("nan"), y, t, rate=0.1, target=0), ValueError, "NaN"),
    (lambda x, y, t: fx.attack_success_rate("m", x, y, t, target=0), TypeError, "model"),
    (
        lambda x, y, t: fx.attack_success_rate(torch.nn.Flatten(), x, y, t, target=0, chunk_size=0),
        ValueError,
        "chunk_size",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_refused(call, error, message) -> None:  # type: ignore[no-untyped-def]
    x = torch.rand(10, 1, 8, 8)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 2])
    with pytest.raises(error, match=message):
        call(x, y, fx.patch_trigger((1, 8, 8)))
