"""Digits CNNs with a planted backdoor, shared by the backdoor tests: each trained once per run
(15 epochs, seed 0, under a second on the CPU)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import pytest
import torch
from torch import nn

from fastxai import backdoor as bd

# The planted scenarios: a 3x3 white patch on 5% of the training set (a third of the target
# class; the regime of Tran et al. and Chen et al.), and a 2x2 patch on 10%, small enough for
# Neural Cleanse to tell the target apart on 8x8 images.
SCENARIOS = {
    "patch3": (lambda: bd.patch_trigger((1, 8, 8), size=3), 0.05, 0),
    "patch2": (lambda: bd.patch_trigger((1, 8, 8), size=2), 0.10, 7),
    "blend": (lambda: bd.blend_trigger((1, 8, 8), alpha=0.2, seed=1), 0.05, 0),
}


class Planted(NamedTuple):
    model: nn.Module
    trigger: bd.Trigger
    target: int
    poisoned: bd.PoisonedData
    x_test: torch.Tensor
    y_test: torch.Tensor


@functools.cache
def _data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from fastxai.digits import load_digits

    return load_digits()


@functools.cache
def _planted(name: str) -> Planted:
    from fastxai.digits import train_digits_cnn

    make_trigger, rate, target = SCENARIOS[name]
    (x_train, y_train), (x_test, y_test) = _data()
    trigger = make_trigger()
    poisoned = bd.poison_dataset(x_train, y_train, trigger, rate=rate, target=target, seed=0)
    return Planted(
        train_digits_cnn(poisoned.inputs, poisoned.labels), trigger, target, poisoned, x_test, y_test
    )


@functools.cache
def _clean(seed: int) -> nn.Module:
    from fastxai.digits import train_digits_cnn

    (x_train, y_train), _ = _data()
    return train_digits_cnn(x_train, y_train, seed=seed)


def planted(name: str) -> Planted:
    """The model trained on the poisoned training set of scenario ``name``; skips without scikit-learn."""
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    return _planted(name)


def clean_model(seed: int = 0) -> nn.Module:
    """A digits CNN trained on the clean training set with ``seed``."""
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    return _clean(seed)


def digits() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    return _data()


def model_state(model: nn.Module) -> tuple[list[bool], list[bool], list[int]]:
    """Training flags, requires_grad flags and hook counts: what a method must leave as found."""
    hooks = [
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    ]
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], hooks
