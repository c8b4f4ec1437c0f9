"""The checks every ``dtype=`` test file runs on its table of calls: ``dtype=None`` is the call
without it, bit for bit; with a half dtype the model runs in it and is left as found; a bad dtype
is refused before the model runs. Each call is ``call(model, dtype=...)`` on a ``DtypeSpy`` or a
``CountingModel`` and returns a tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn

HALF = [torch.bfloat16, torch.float16]
BAD = [(torch.float64, ValueError), (torch.int8, ValueError), ("bfloat16", TypeError)]
BAD_IDS = ["float64", "int8", "string"]

Call = Callable[..., Any]


class DtypeSpy(nn.Module):
    """small_cnn, recording the dtypes of its input and of its first convolution's output (the
    dtype= tests: does the model run in the dtype asked for)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn(seed=2)
        self.seen: set[tuple[torch.dtype, torch.dtype]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.inner[0](x)
        self.seen.add((x.dtype, hidden.dtype))
        return self.inner[1:](hidden)


class CountingModel(nn.Module):
    """small_cnn, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = small_cnn(seed=2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def assert_none_is_the_call_without_it(call: Call) -> None:
    model = DtypeSpy().eval()
    assert torch.equal(call(model, dtype=None), call(model))


def assert_runs_in_the_dtype_and_leaves_the_model(
    call: Call, dtype: torch.dtype, points: str, evaluated_in_float32: bool = False
) -> None:
    """``points``: the dtype of the points the method feeds the model, ``"dtype"`` (built in the
    half dtype), ``"float32"`` (float32 inputs that autocast rounds where a convolution reads
    them) or ``"both"``; ``evaluated_in_float32``: float32 passes of the model are expected too
    (a result checked by the float32 model) and ignored."""
    model = DtypeSpy().train()  # train(): the methods' eval mode must be undone
    before = model_state(model)
    result = call(model, dtype=dtype)
    assert result.dtype == torch.float32 and bool(torch.isfinite(result).all())
    seen = model.seen
    if evaluated_in_float32:
        seen = {pair for pair in seen if pair != (torch.float32, torch.float32)}
    if points == "dtype":
        assert seen == {(dtype, dtype)}  # the points are half precision, and so is the convolution
    elif points == "both":
        assert seen == {(torch.float32, dtype), (dtype, dtype)}
    else:
        assert points == "float32"
        assert seen == {(torch.float32, dtype)}  # float32 points, the convolution under autocast
    assert_same_state(before, model_state(model))


def assert_a_bad_dtype_is_refused_before_the_model_runs(call: Call, bad: object, error: type) -> None:
    model = CountingModel().train()
    before = model_state(model)
    with pytest.raises(error, match="dtype"):
        call(model, dtype=bad)
    assert model.calls == 0
    assert_same_state(before, model_state(model))
