"""``_model.preserved_state``: what a method changes inside the block is undone, also on error."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from fastxai import _model


def _model_under_test() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    model.train()
    model[2].eval()  # mixed modes must come back as they were, not as one flag
    model[0].bias.requires_grad_(False)
    return model


def _state(model: nn.Module) -> tuple[list[bool], list[bool], list[tuple[str, list[int]]]]:
    hooks = [
        (f"{name}.{attr}", list(getattr(module, attr).keys()))
        for name, module in model.named_modules()
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    ]
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()], hooks


@pytest.mark.parametrize("raises", [False, True])
def test_modes_grad_flags_and_hooks_restored(raises: bool) -> None:
    model = _model_under_test()
    kept = model[2][1].register_forward_hook(lambda *args: None)  # the user's own hook stays
    before = _state(model)
    with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
        with _model.preserved_state(model):
            assert not any(m.training for m in model.modules())
            assert not any(p.requires_grad for p in model.parameters())
            model[0].register_forward_pre_hook(lambda *args: None)
            model[2][0].register_full_backward_hook(lambda *args: None)
            kept.remove()  # a method must not lose the user's hook either
            model[2][1].register_forward_hook(lambda *args: None)
            if raises:
                raise RuntimeError("inside the block")
    assert _state(model) == before


def test_eval_mode_false_keeps_modes() -> None:
    model = _model_under_test()
    with _model.preserved_state(model, eval_mode=False):
        assert model.training and not model[2].training
    assert model.training


def test_plain_callables_pass_through() -> None:
    def function(x: torch.Tensor) -> torch.Tensor:
        return x

    with _model.preserved_state(function):
        pass

