"""``cuda_graph=True``: the captured step loop gives the eager loop's examples, leaves the model as
found, and refuses what a graph cannot serve (the refusals are checked on the CPU too)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
from models import assert_same_state, model_state, small_cnn

import fastxai as fx

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def _setup(device: str = "cpu") -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=4, channels=3).eval().to(device)
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 8, 8, generator=generator).to(device)
    y = torch.randint(0, 10, (6,), generator=generator).to(device)
    return model, x, y


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """cuDNN's default backward kernels may add in any order; the comparison needs one order."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"cuda_graph": 1}, TypeError, "cuda_graph must be a bool"),
        ({"cuda_graph": True}, ValueError, "cuda_graph=True needs inputs on a CUDA device"),
        ({"cuda_graph": True, "early_stop": True}, ValueError, "cannot be combined with early_stop"),
    ],
)
def test_refused_before_any_work(change: dict, error: type, message: str) -> None:
    model, x, y = _setup()
    calls = []
    model.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=message):
        fx.pgd(model, x, y, **change)
    assert not calls


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"norm": "linf", "loss": "ce"}, id="linf-ce"),
        pytest.param({"norm": "l2", "eps": 0.5, "alpha": 0.1, "loss": "margin"}, id="l2-margin"),
        pytest.param({"norm": "linf", "restarts": 3, "targeted": True}, id="restarts-targeted"),
    ],
)
@pytest.mark.gpu
@needs_cuda
def test_pgd_graph_replays_the_eager_iterates(kwargs: dict) -> None:
    model, x, y = _setup("cuda")
    with _deterministic():
        eager = fx.pgd(model, x, y, steps=7, seed=3, **kwargs)
        graphed = fx.pgd(model, x, y, steps=7, seed=3, cuda_graph=True, **kwargs)
    torch.testing.assert_close(graphed, eager)


@pytest.mark.parametrize("attack", [fx.bim, fx.mifgsm])
@pytest.mark.gpu
@needs_cuda
def test_bim_and_momentum_graph_replay_the_eager_iterates(attack: Callable[..., torch.Tensor]) -> None:
    model, x, y = _setup("cuda")
    with _deterministic():
        eager = attack(model, x, y, steps=6)
        graphed = attack(model, x, y, steps=6, cuda_graph=True)
    torch.testing.assert_close(graphed, eager)


@pytest.mark.gpu
@needs_cuda
def test_model_left_as_found_and_uncapturable_models_named() -> None:
    model, x, y = _setup("cuda")
    model.train()
    before = model_state(model)
    fx.pgd(model, x, y, steps=3, cuda_graph=True)
    assert_same_state(before, model_state(model))
    assert all(parameter.grad is None for parameter in model.parameters())

    class Syncing(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            if float(inputs.sum()) < 0:  # a host synchronisation: not capturable
                raise AssertionError("unreachable")
            return self.inner(inputs)

    syncing = Syncing(model)
    with pytest.raises(RuntimeError, match="could not be captured"):
        fx.pgd(syncing, x, y, steps=3, cuda_graph=True)
    assert_same_state(before, model_state(model))


@pytest.mark.gpu
@needs_cuda
def test_robust_accuracy_with_cuda_graph_drops_early_stopping() -> None:
    model, x, y = _setup("cuda")
    with _deterministic():
        eager = fx.robust_accuracy(model, (x, y), eps=0.1, alpha=0.03, steps=4, early_stop=False)
        graphed = fx.robust_accuracy(model, (x, y), eps=0.1, alpha=0.03, steps=4, cuda_graph=True)
    assert graphed == eager
