"""The fused ops: one public function each, validated here, run by the selected backend.

Every op has the signature of its reference in ``fastxai.reference.ops`` plus a keyword
``backend`` (``None`` = the choice in force, see ``fastxai.backends()``). Inputs are checked
and made contiguous here, so backends receive exactly the layout they document.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch

from fastxai import _backends

_SEED_LIMIT = 2**63


def _implementation(backend: str) -> ModuleType:
    if backend == "reference":
        from fastxai import reference

        return reference
    if backend == "native":
        from fastxai import _native

        return _native
    if backend == "triton":
        return importlib.import_module("fastxai.kernels")
    raise ValueError(f"unknown backend {backend!r}")


def _dispatch(op: str, backend: str | None, anchor: torch.Tensor, *args: Any) -> Any:
    name = _backends.resolve(backend, anchor.device, anchor.dtype)
    return getattr(_implementation(name), op)(*args)


def _floating(name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    return tensor


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_accumulator(name: str, acc: object, shape: torch.Size, values: torch.Tensor) -> torch.Tensor:
    acc = _floating(name, acc)
    expected = _accumulator_dtype(values.dtype)
    if acc.dtype != expected:
        raise TypeError(f"{name} must be {expected} for {values.dtype} values, got {acc.dtype}")
    if acc.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(acc.shape)}")
    if acc.device != values.device:
        raise ValueError(f"{name} is on {acc.device}, values on {values.device}")
    if not acc.is_contiguous():
        raise ValueError(f"{name} must be contiguous: it is updated in place")
    return acc


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value >= maximum):
        bound = f"[{minimum}, {maximum})" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def gaussian_perturb(
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    seed: int,
    sample_offset: int = 0,
    n_samples: int = 1,
    batch_offset: int = 0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Noisy copies ``x[b] + sigma[b] * z``: [B, *F] -> [n_samples, B, *F], noise from Philox.

    ``z`` for sample ``sample_offset + s``, row ``batch_offset + b``, element ``j`` is a
    pure function of (seed, sample, row, element): see ``fastxai.reference.philox``.
    """
    x = _floating("x", x)
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    batch = x.shape[0]
    sigma_t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma_t.dim() == 0:
        sigma_t = sigma_t.expand(batch)
    if sigma_t.shape != (batch,):
        raise ValueError(f"sigma must be a scalar or have shape ({batch},), got {tuple(sigma_t.shape)}")
    _check_int("seed", seed, 0, _SEED_LIMIT)
    _check_int("sample_offset", sample_offset, 0, 2**32)
    _check_int("n_samples", n_samples, 1)
    _check_int("batch_offset", batch_offset, 0, 2**32)
    if sample_offset + n_samples > 2**32 or batch_offset + batch > 2**32:
        raise ValueError("sample and batch indices must stay below 2**32")
    if x[0].numel() > 2**34:
        raise ValueError("one input may hold at most 2**34 elements")
    sigma_t = sigma_t.to(torch.float32).contiguous()
    return _dispatch(
        "gaussian_perturb", backend, x, x.contiguous(), sigma_t, seed, sample_offset, n_samples, batch_offset
    )


def moment_accumulate(
    values: torch.Tensor,
    total: torch.Tensor,
    total_sq: torch.Tensor | None = None,
    multiplier: torch.Tensor | None = None,
    *,
    backend: str | None = None,
) -> None:
    """In place ``total += sum_s a_s``, ``total_sq += sum_s a_s**2``, ``a_s = values[s] (* multiplier[s])``.

    values, multiplier: [n, B, *F]; total, total_sq: [B, *F] float32 (float64 for float64).
    """
    values = _floating("values", values)
    if values.dim() < 2:
        raise ValueError(f"values must be [n, B, ...], got shape {tuple(values.shape)}")
    _check_accumulator("total", total, values.shape[1:], values)
    if total_sq is not None:
        _check_accumulator("total_sq", total_sq, values.shape[1:], values)
    if multiplier is not None:
        multiplier = _floating("multiplier", multiplier)
        if multiplier.shape != values.shape or multiplier.dtype != values.dtype:
            raise ValueError(
                f"multiplier must match values ({tuple(values.shape)}, {values.dtype}), "
                f"got {tuple(multiplier.shape)}, {multiplier.dtype}"
            )
        multiplier = multiplier.contiguous()
    _dispatch("moment_accumulate", backend, values, values.contiguous(), total, total_sq, multiplier)


def path_points(
    x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Points on the straight path: ``baseline[b] + alphas[k] * (x[b] - baseline[b])`` -> [K, B, *F].

    Positions are float32 (float64 for float64 inputs), as is the arithmetic.
    """
    x = _floating("x", x)
    baseline = _floating("baseline", baseline)
    if baseline.shape != x.shape or baseline.dtype != x.dtype:
        raise ValueError(
            f"baseline must match x ({tuple(x.shape)}, {x.dtype}), "
            f"got {tuple(baseline.shape)}, {baseline.dtype}"
        )
    alphas = _floating("alphas", alphas)
    if alphas.dim() != 1 or alphas.numel() < 1:
        raise ValueError(f"alphas must be a non-empty 1-d tensor, got shape {tuple(alphas.shape)}")
    alphas = alphas.to(device=x.device, dtype=_accumulator_dtype(x.dtype)).contiguous()
    return _dispatch("path_points", backend, x, x.contiguous(), baseline.contiguous(), alphas)


def weighted_path_accumulate(
    grads: torch.Tensor, weights: torch.Tensor, acc: torch.Tensor, *, backend: str | None = None
) -> None:
    """In place ``acc[b] += sum_k weights[k, b] * grads[k, b]`` (steps in order).

    grads: [K, B, *F]; weights: [K] or [K, B]; acc: [B, *F] float32 (float64 for float64).
    """
    grads = _floating("grads", grads)
    if grads.dim() < 2:
        raise ValueError(f"grads must be [K, B, ...], got shape {tuple(grads.shape)}")
    steps, batch = grads.shape[0], grads.shape[1]
    _check_accumulator("acc", acc, grads.shape[1:], grads)
    weights = _floating("weights", weights).to(device=grads.device, dtype=_accumulator_dtype(grads.dtype))
    if weights.dim() == 1 and weights.shape[0] == steps:
        weights = weights.view(steps, 1).expand(steps, batch)
    if weights.shape != (steps, batch):
        raise ValueError(
            f"weights must have shape ({steps},) or ({steps}, {batch}), got {tuple(weights.shape)}"
        )
    _dispatch("weighted_path_accumulate", backend, grads, grads.contiguous(), weights.contiguous(), acc)


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    step_size: torch.Tensor | float,
    eps: torch.Tensor | float,
    lower: float = float("-inf"),
    upper: float = float("inf"),
    norm: str = "linf",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """One PGD step: ascend along sign(grad) (``linf``) or grad / ||grad|| (``l2``) by
    ``step_size``, project onto the ``eps``-ball around ``x_orig``, clamp to [lower, upper].

    x_adv, grad, x_orig: [B, *F]; step_size, eps: scalars or [B]; returns [B, *F].
    """
    x_adv = _floating("x_adv", x_adv)
    if x_adv.dim() < 1 or x_adv.shape[0] < 1:
        raise ValueError(f"x_adv must be [B, ...] with B >= 1, got shape {tuple(x_adv.shape)}")
    for name, tensor in (("grad", grad), ("x_orig", x_orig)):
        tensor = _floating(name, tensor)
        if tensor.shape != x_adv.shape or tensor.dtype != x_adv.dtype or tensor.device != x_adv.device:
            raise ValueError(
                f"{name} must match x_adv ({tuple(x_adv.shape)}, {x_adv.dtype}, {x_adv.device}), "
                f"got {tuple(tensor.shape)}, {tensor.dtype}, {tensor.device}"
            )
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if not float(lower) <= float(upper):
        raise ValueError(f"lower must be <= upper, got {lower} > {upper}")
    batch = x_adv.shape[0]
    per_sample = []
    for name, value in (("step_size", step_size), ("eps", eps)):
        tensor = torch.as_tensor(value, dtype=_accumulator_dtype(x_adv.dtype), device=x_adv.device)
        if tensor.dim() == 0:
            tensor = tensor.expand(batch)
        if tensor.shape != (batch,):
            raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(tensor.shape)}")
        per_sample.append(tensor.contiguous())
    return _dispatch(
        "pgd_step",
        backend,
        x_adv,
        x_adv.contiguous(),
        grad.contiguous(),
        x_orig.contiguous(),
        per_sample[0],
        per_sample[1],
        float(lower),
        float(upper),
        norm,
    )


__all__ = ["gaussian_perturb", "moment_accumulate", "path_points", "pgd_step", "weighted_path_accumulate"]
