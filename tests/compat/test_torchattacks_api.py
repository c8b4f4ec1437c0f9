"""The torchattacks ``Attack`` API on fastxai's compat classes: modes, targets, training-mode
attacks, normalisation, devices, repr, save/load; beside torchattacks where it is deterministic."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state, small_cnn

from fastxai.compat import torchattacks as fta


def _setup() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=0, channels=3).eval()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_modes_and_supported_modes_as_torchattacks() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, _, _ = _setup()
    for name in fta.__all__:
        if name in ("Attack", "MultiAttack"):  # MultiAttack takes a list of attacks
            continue
        extra = ([],) if name == "LGV" else ()  # LGV also needs a training data loader
        ours, theirs = getattr(fta, name)(model, *extra), getattr(torchattacks, name)(model, *extra)
        assert ours.supported_mode == theirs.supported_mode, name
        assert ours.get_mode() == "default" and ours.device == theirs.device
    attack = fta.PGD(model)
    for setter, mode in [
        (lambda: attack.set_mode_targeted_random(quiet=True), "targeted(random)"),
        (lambda: attack.set_mode_targeted_least_likely(2), "targeted(least-likely)"),
        (lambda: attack.set_mode_targeted_by_function(lambda x, y: (y + 1) % 10), "targeted(custom)"),
        (lambda: attack.set_mode_targeted_by_label(), "targeted(label)"),
        (attack.set_mode_default, "default"),
    ]:
        setter()
        assert attack.get_mode() == mode and attack.targeted == (mode != "default")
    with pytest.raises(ValueError, match="kth_min"):
        attack.set_mode_targeted_least_likely(0)


def test_targets_of_every_mode() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _setup()
    ours, theirs = fta.PGD(model), torchattacks.PGD(model)
    for attack in (ours, theirs):
        attack.set_mode_targeted_least_likely(kth_min=2, quiet=True)
    assert torch.equal(ours.get_target_label(x, y), theirs.get_target_label(x, y))
    ours.set_mode_targeted_by_function(lambda inputs, labels: (labels + 3) % 10)
    assert torch.equal(ours.get_target_label(x, y), (y + 3) % 10)
    ours.set_mode_targeted_random(seed=5)
    first = torch.cat([ours.get_target_label(x, y) for _ in range(20)])
    assert (first != y.repeat(20)).all() and len(first.unique()) >= 9  # never the label, the others all drawn
    ours.set_mode_targeted_random(seed=5)
    assert torch.equal(torch.cat([ours.get_target_label(x, y) for _ in range(20)]), first)
    x_adv = ours(x, y)
    assert (x_adv - x).abs().max() <= ours.eps + 1e-6


def test_training_mode_attack_runs_in_train_mode_and_puts_the_model_back() -> None:
    model, x, y = _setup()
    seen: list[tuple[bool, bool]] = []
    model[0].register_forward_hook(
        lambda module, inputs, output: seen.append((module.training, model[1].training))
    )
    model.eval()
    model[1].train()  # a mixed state, to be restored exactly
    before = model_state(model)
    attack = fta.PGD(model, steps=2)
    attack.set_model_training_mode(model_training=True, batchnorm_training=True)
    attack(x, y)
    assert seen and all(conv and bn for conv, bn in seen)
    assert_same_state(before, model_state(model))  # also the BatchNorm statistics
    seen.clear()
    attack.set_model_training_mode(model_training=True)  # BatchNorm kept in eval mode
    attack(x, y)
    assert all(conv and not bn for conv, bn in seen)
    attack.set_model_training_mode()
    seen.clear()
    attack(x, y)
    assert all(not conv and not bn for conv, bn in seen)
    assert_same_state(before, model_state(model))


def test_get_logits_normalisation_device_and_repr() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, _ = _setup()
    ours, theirs = fta.FGSM(model), torchattacks.FGSM(model)
    for attack in (ours, theirs):
        attack.set_normalization_used([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    torch.testing.assert_close(ours.get_logits(x), theirs.get_logits(x))
    assert repr(ours) == repr(theirs)
    ours.set_device("cpu")
    assert ours.device == torch.device("cpu")
    with pytest.raises(ValueError, match="bounds"):  # torchattacks clamps; fastxai refuses
        fta.FGSM(model)(x + 2, None)


def test_save_and_load_as_torchattacks(tmp_path) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _setup()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    results = {}
    kwargs = dict(eps=0.5, alpha=0.1, steps=10, random_start=False)
    for name, attack in (("ours", fta.PGD(model, **kwargs)), ("theirs", torchattacks.PGD(model, **kwargs))):
        path = str(tmp_path / f"{name}.pt")
        results[name] = attack.save(
            loader,
            save_path=path,
            verbose=False,
            return_verbose=True,
            save_predictions=True,
            save_clean_inputs=True,
            save_type="int",
        )
        results[name + "-file"] = torch.load(path)
    assert results["ours"][:2] == pytest.approx(results["theirs"][:2], rel=1e-5)
    for key in ("adv_inputs", "labels", "preds", "clean_inputs", "save_type"):
        mine, theirs = results["ours-file"][key], results["theirs-file"][key]
        assert mine == theirs if key == "save_type" else torch.equal(mine, theirs), key
    batch = next(iter(fta.Attack.load(str(tmp_path / "ours.pt"), batch_size=6, load_predictions=True)))
    assert len(batch) == 3 and torch.equal(batch[1], y)


@pytest.mark.parametrize("name", ["FAB", "Square", "PGD", "CW"])
def test_targeted_random_mode_of_the_new_classes(name: str) -> None:
    model, x, y = _setup()
    kwargs = {"Square": dict(n_queries=200), "FAB": dict(steps=5, eps=1.0), "CW": dict(steps=5)}.get(name, {})
    attack = getattr(fta, name)(model, **kwargs)
    attack.set_mode_targeted_random(quiet=True)
    before = model_state(model)
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    assert_same_state(before, model_state(model))
