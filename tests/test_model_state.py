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


def test_a_removed_hook_comes_back_when_no_hook_was_added() -> None:
    """The guard walks the hook dictionaries again only when a hook was registered inside the
    block; a hook removed without any registration must still come back, in its place."""
    model = _model_under_test()
    first = model[0].register_forward_hook(lambda *args: None)
    second = model[0].register_forward_hook(lambda *args: None)
    before = _state(model)
    with _model.preserved_state(model, eval_mode=False):
        first.remove()
        second.remove()
    assert _state(model) == before
    with _model.preserved_state(model):  # a tensor hook moves the handle counter: the full walk
        torch.zeros(1, requires_grad=True).register_hook(lambda grad: grad)
        first.remove()
        model[2][1].register_forward_hook(lambda *args: None)
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


@pytest.mark.parametrize("raises", [False, True])
def test_inference_state_restores_modes_and_touches_nothing_else(raises: bool) -> None:
    """The guard of the no-grad, hook-free methods: eval inside, every training flag back after
    (mixed modes included, also on error); grad flags and hooks are neither changed nor saved."""
    model = _model_under_test()
    model[2][1].register_forward_hook(lambda *args: None)
    before = _state(model)
    with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
        with _model.inference_state(model):
            assert not any(m.training for m in model.modules())
            assert [p.requires_grad for p in model.parameters()] == before[1]
            if raises:
                raise RuntimeError("inside the block")
    assert _state(model) == before


def test_inference_state_passes_plain_callables() -> None:
    with _model.inference_state(torch.relu):
        pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_all_finite_exact_despite_overflowing_sums(dtype: torch.dtype) -> None:
    """The one-reduction shortcut must not decide wrongly: a sum that overflows (finite, huge
    elements) falls back to the element check; a NaN or an infinity anywhere is caught."""
    huge = torch.finfo(dtype).max / 2
    values = torch.full((1000,), huge, dtype=dtype)
    assert _model.all_finite(values)
    assert _model.all_finite(torch.zeros(0, dtype=dtype))
    for bad in (float("nan"), float("inf"), float("-inf")):
        spoiled = values.clone()
        spoiled[617] = bad
        assert not _model.all_finite(spoiled)
        assert not _model.all_finite(torch.tensor([bad, 1.0], dtype=dtype))


@pytest.mark.parametrize("raises", [False, True])
def test_gradient_state_puts_back_running_statistics_and_touches_nothing_else(raises: bool) -> None:
    """The guard of the one-pass gradient classes: the model runs in its own mode; the running
    statistics a training BatchNorm folds in come back (also on error); modes, grad flags and
    hooks are neither changed nor recorded, and input gradients leave no parameter gradient."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).train()
    model[2].bias.requires_grad_(False)
    model[0].register_forward_hook(lambda *args: None)
    before = _state(model)
    statistics = [tensor.clone() for tensor in model[1].buffers()]
    x = torch.randn(5, 4, requires_grad=True)
    with pytest.raises(RuntimeError) if raises else contextlib.nullcontext():
        with _model.gradient_state(model):
            assert _state(model) == before  # train mode, grad flags as found
            torch.autograd.grad(model(x)[:, 0].sum(), x)
            assert not torch.equal(model[1].running_mean, statistics[0])
            if raises:
                raise RuntimeError("inside the block")
    assert _state(model) == before
    assert all(torch.equal(a, b) for a, b in zip(model[1].buffers(), statistics, strict=True))
    assert all(parameter.grad is None for parameter in model.parameters())
