"""The digits CNN shared by the fragility and detection tests: trained once per test run."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn


@functools.cache
def _trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    from fastxai.digits import load_digits, train_digits_cnn

    (x_train, y_train), (x_test, y_test) = load_digits()
    return train_digits_cnn(x_train, y_train, epochs=5), x_test, y_test


def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model in eval mode, x_test, y_test); skips when scikit-learn is absent."""
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    return _trained()
