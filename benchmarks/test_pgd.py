"""PGD: floor (steps x forward+backward of the batch) vs fastxai per backend vs torchattacks,
and the common cases where early stopping pays: an undefended digits CNN, robust accuracy."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
from conftest import implementations
from models import PairedFloor, case

import fastxai as fx

STEPS = 10
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pgd_floor(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        leaf = x.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(leaf), y, reduction="sum")
        torch.autograd.grad(loss, leaf)


class PairedPgdFloor(PairedFloor):
    """The PGD floor timed in alternation with the implementation (see models.PairedFloor)."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(model, x, y, STEPS)

    def run(self) -> None:
        pgd_floor(self.model, self.x, self.target, self.points)


@functools.lru_cache(maxsize=1)
def digits_case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    return train_digits_cnn(x_train, y_train).to(DEVICE), x_test[:256].to(DEVICE), y_test[:256].to(DEVICE)


def _implementations() -> list[str]:
    names = [name for name in implementations() if name != "captum"]
    if DEVICE == "cuda":
        names.append("fastxai-cuda-graph")  # the auto backend with the step loop captured
    if importlib.util.find_spec("torchattacks") is not None:
        names.append("torchattacks")
    return names


def _sync(function):  # type: ignore[no-untyped-def]
    if DEVICE != "cuda":
        return function
    return lambda: (function(), torch.cuda.synchronize())


@pytest.mark.parametrize("implementation", _implementations())
@pytest.mark.parametrize("model_name", ["resnet", "digits"])
def test_pgd(benchmark, model_name: str, implementation: str) -> None:
    if model_name == "digits":
        pytest.importorskip("sklearn")
        model, x, y = digits_case()
    else:
        model, x, y = case(model_name)
        model, x, y = model.to(DEVICE), x.to(DEVICE), y.to(DEVICE)
        x = x.repeat(4, 1, 1, 1)[:32]
        y = y.repeat(4)[:32]
    benchmark.group = f"pgd-{model_name}"
    kwargs = dict(eps=8 / 255, alpha=2 / 255, steps=STEPS)
    if implementation == "floor":
        function = lambda: pgd_floor(model, x, y, STEPS)  # noqa: E731
    elif implementation == "torchattacks":
        import torchattacks

        attack = torchattacks.PGD(model, random_start=True, **kwargs)
        function = lambda: attack(x, y)  # noqa: E731
    elif implementation == "fastxai-cuda-graph":
        function = lambda: fx.pgd(model, x, y, seed=0, cuda_graph=True, **kwargs)  # noqa: E731
    else:
        backend = implementation.removeprefix("fastxai-")
        function = lambda: fx.pgd(model, x, y, seed=0, backend=backend, **kwargs)  # noqa: E731
    paired = PairedPgdFloor(model, x, y)
    benchmark.pedantic(
        _sync(function), setup=paired, rounds=5 if model_name == "resnet" else 20, warmup_rounds=1
    )
    benchmark.extra_info["paired_floor_median"] = paired.median


@pytest.mark.parametrize(
    "variant", ["floor", "pgd", "pgd-early-stop", "pgd-4-restarts-early-stop", "robust-accuracy"]
)
def test_pgd_common_cases(benchmark, variant: str) -> None:
    """An undefended model (digits CNN, eps 0.3): most samples fall in a few steps."""
    pytest.importorskip("sklearn")
    model, x, y = digits_case()
    benchmark.group = "pgd-digits-undefended-eps0.3"
    kwargs = dict(eps=0.3, alpha=0.05, steps=STEPS, seed=0)
    functions = {
        "floor": lambda: pgd_floor(model, x, y, STEPS),
        "pgd": lambda: fx.pgd(model, x, y, **kwargs),
        "pgd-early-stop": lambda: fx.pgd(model, x, y, early_stop=True, **kwargs),
        "pgd-4-restarts-early-stop": lambda: fx.pgd(model, x, y, early_stop=True, restarts=4, **kwargs),
        "robust-accuracy": lambda: fx.robust_accuracy(model, (x, y), **kwargs),
    }
    benchmark.pedantic(_sync(functions[variant]), rounds=5, warmup_rounds=1)
