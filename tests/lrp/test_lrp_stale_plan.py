"""LRP's cached plan (traced graph + rules) goes stale when ``forward`` branches on a Python
attribute the trace read as a constant (issue 21): each call checks that the plan's forward
output equals the model's own on the batch and retraces when it does not."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastxai.lrp import Composite, lrp, rules

LRP_0 = Composite([(nn.Linear, rules.Epsilon(0.0))], stabilizer=0.0)  # conserves exactly: no biases


class Switch(nn.Module):
    """Two bias-free heads; ``use_b`` picks one (a Python attribute: fx bakes it in)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU())
        self.a = nn.Linear(8, 3, bias=False)
        self.b = nn.Linear(8, 3, bias=False)
        self.use_b = False
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.body(x)
        return (self.b(hidden) if self.use_b else self.a(hidden)) * self.scale


def _conservation_error(model: nn.Module, x: torch.Tensor, target: int) -> float:
    relevance = lrp(model, x, target=target, composite=LRP_0)
    logits = model(x)[:, target]
    return float(((relevance.sum(1) - logits).abs() / logits.abs()).max())


@pytest.mark.parametrize("change", ["branch", "constant"])
def test_switching_a_python_attribute_retraces(change: str) -> None:
    model = Switch().double().eval()
    x = torch.rand(4, 6, dtype=torch.float64) + 0.1
    assert _conservation_error(model, x, 1) < 1e-6  # traces the branch in force
    if change == "branch":
        model.use_b = True
    else:
        model.scale = -2.5
    # lrp on a fresh copy (no cache) is the oracle; conservation is the textbook check
    assert _conservation_error(model, x, 1) < 1e-6
    torch.testing.assert_close(
        lrp(model, x, target=1, composite=LRP_0), lrp(copy.deepcopy(model), x, target=1, composite=LRP_0)
    )
    model.use_b, model.scale = False, 1.0  # and back again
    assert _conservation_error(model, x, 1) < 1e-6


class Counting(nn.Module):
    """A forward the trace cannot follow: Python state that changes at every call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * self.calls


def test_a_forward_that_changes_at_every_call_is_explained_as_checked() -> None:
    """Python state that changes at every call: the trace puts the counter back (it leaves the
    model as found), so a plan always matches the model's own forward that checks it, and the
    relevance is that forward's. The first call traces at ``calls == 0`` and checks at 1 (its
    trace's constant is 1); the second finds the cached plan stale (the check runs at 2),
    traces again (constant 3, put back to 2) and checks at 3."""
    model = Counting().eval()
    x = torch.rand(2, 4)
    first = lrp(model, x, target=0)
    assert model.calls == 1  # the check's forward only, not the trace's
    second = lrp(model, x, target=0)
    assert model.calls == 3
    torch.testing.assert_close(second, 3 * first)
