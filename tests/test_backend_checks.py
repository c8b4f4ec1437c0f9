"""A backend that cannot run a call is refused before the model runs, in LRP, the attacks, the
evaluation measures and randomised smoothing: one that is not available on this machine, and
one that is available but cannot run the inputs' dtype (native and Triton take float32/16 and
bfloat16). Availability is patched, so each case runs whatever this machine has built; the
attribution methods' cases are in test_bad_input.py."""

from __future__ import annotations

import pytest
import torch
from models import mlp, small_cnn
from torch import nn

import fastxai as fx
from fastxai import _backends
from fastxai import evaluation as ev


class Counting(nn.Module):
    """Counts forward calls, so a test can prove that nothing ran before the error."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.eval()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


X = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
V = torch.rand(2, 20, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([1, 2])
NATIVE_ON_CPU = _backends.BackendInfo("native", True, ("cpu",), "")

CALLS = {
    "lrp_fx": (small_cnn, X, lambda m, x, b: fx.lrp(m, x, Y, backend=b, engine="fx")),
    "lrp_gradient": (mlp, V, lambda m, x, b: fx.lrp(m, x, Y, backend=b, engine="gradient")),
    "pgd": (small_cnn, X, lambda m, x, b: fx.pgd(m, x, Y, eps=0.1, alpha=0.01, steps=2, backend=b)),
    "apgd": (small_cnn, X, lambda m, x, b: fx.apgd(m, x, Y, eps=0.1, steps=2, backend=b)),
    "robust_accuracy": (
        small_cnn,
        X,
        lambda m, x, b: fx.robust_accuracy(m, (x, Y), eps=0.1, alpha=0.01, steps=1, backend=b),
    ),
    "interpretation_attack": (
        small_cnn,
        X,
        lambda m, x, b: ev.interpretation_attack(m, x, steps=1, backend=b),
    ),
    "joint_attack": (small_cnn, X, lambda m, x, b: ev.joint_attack(m, x, Y, steps=1, backend=b)),
    "deletion": (small_cnn, X, lambda m, x, b: ev.deletion(m, x, x, backend=b)),
    "infidelity": (small_cnn, X, lambda m, x, b: ev.infidelity(m, x, x, backend=b)),
    "smoothing_predict": (small_cnn, X, lambda m, x, b: fx.certify.smoothing_predict(m, x, n=4, backend=b)),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_unavailable_backend_refused_before_the_model_runs(name: str, monkeypatch) -> None:
    """Before: interpretation_attack and joint_attack ran the model (3-4 calls) before their
    first PGD step named the backend."""
    monkeypatch.setattr(
        _backends, "_native_info", lambda: _backends.BackendInfo("native", False, (), "not built here")
    )
    factory, x, call = CALLS[name]
    model = Counting(factory())
    with pytest.raises(RuntimeError, match="backend 'native' is not available: not built here"):
        call(model, x, "native")
    assert model.calls == 0


@pytest.mark.parametrize("name", list(CALLS))
def test_backend_that_cannot_run_the_dtype_refused_before_the_model_runs(name: str, monkeypatch) -> None:
    """Before: float64 inputs with backend='native' reached the first fused op after model calls
    (LRP's gradient engine, PGD, APGD, the fragility attacks, deletion, infidelity, robust_accuracy)."""
    monkeypatch.setattr(_backends, "_native_info", lambda: NATIVE_ON_CPU)
    factory, x, call = CALLS[name]
    model = Counting(factory()).double()
    with pytest.raises(TypeError, match=r"backend 'native' supports .* got torch\.float64"):
        call(model, x.double(), "native")
    assert model.calls == 0


def test_backend_chosen_by_set_backend_is_checked_too(monkeypatch) -> None:
    """The choice in force (``use_backend``) is the one resolved, not only ``backend=``."""
    monkeypatch.setattr(_backends, "_native_info", lambda: NATIVE_ON_CPU)
    model = Counting(small_cnn()).double()
    with _backends.use_backend("native"), pytest.raises(TypeError, match=r"got torch\.float64"):
        fx.pgd(model, X.double(), Y, eps=0.1, alpha=0.01, steps=1)
    assert model.calls == 0
