"""Argument checks and conversions the surrogate models share."""

from __future__ import annotations

import numpy as np
import torch

from fastxai import _model


def as_matrix(value: object, *, name: str = "inputs") -> np.ndarray:
    """A tensor or array [N, *F] with N >= 1, finite, as a float64 numpy matrix [N, prod(F)]."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        array = value.detach().cpu().double().numpy()
    elif isinstance(value, np.ndarray):
        array = value.astype(np.float64)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a numpy array, got {type(value).__name__}")
    if array.ndim < 1 or array.shape[0] < 1:
        raise ValueError(f"{name} must be [N, ...] with N >= 1, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinity")
    return array.reshape(len(array), -1)


def as_features(value: object, *, name: str = "inputs") -> torch.Tensor:
    """A floating-point tensor [N, *F] (checked like a method's inputs) as [N, prod(F)]."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    try:
        tensor = _model.check_inputs(value)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("inputs", name, 1)) from None
    return tensor.detach().reshape(len(tensor), -1)
