"""The native backend: C++ (CPU) and CUDA kernels in the compiled extension ``fastxai._C``.

Importing ``fastxai._C`` registers the operators ``torch.ops.fastxai.*`` (sources in ``csrc/``).
It is loaded lazily, once, on the first call of :func:`available` or of an op, so importing
fastxai never requires it and never touches CUDA. The functions here have the signatures of
``fastxai.reference.ops`` and expect what ``fastxai.ops`` passes them: validated, contiguous
tensors of dtype float32, float16 or bfloat16.

Build the extension from a source checkout with ``pip install --no-build-isolation -e .``.
"""

from __future__ import annotations

import importlib
import sys
import threading
import warnings
from types import ModuleType
from typing import Any

import torch

BUILD_INSTRUCTIONS = (
    "build it from the source checkout with `pip install --no-build-isolation -e .` "
    "(needs cmake >= 3.18, a C++20 compiler and torch installed; nvcc for the CUDA kernels)"
)

_lock = threading.RLock()
_attempted = False
_module: ModuleType | None = None
_error = ""
_fakes_registered = False


def _load() -> ModuleType | None:
    """Import ``fastxai._C`` once; remember the module or why it failed."""
    global _attempted, _module, _error
    if _attempted:
        return _module
    with _lock:
        if not _attempted:
            try:
                module = importlib.import_module("fastxai._C")
            except Exception as exc:  # ImportError, or an OSError/RuntimeError from loading the library
                _error = f"{type(exc).__name__}: {exc}"
            else:
                try:
                    _register_fakes()
                except Exception as exc:  # the ops still run eagerly; only tracing needs the fakes
                    warnings.warn(
                        f"fastxai: could not register fake implementations of the native ops "
                        f"({type(exc).__name__}: {exc}); torch.compile cannot trace them",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                _module = module
            _attempted = True
    return _module


def available() -> tuple[bool, str]:
    """Whether the extension loads, and if not, why and how to build it."""
    if _load() is not None:
        return True, ""
    return False, f"the compiled extension fastxai._C is missing or broken ({_error}); {BUILD_INSTRUCTIONS}"


def cuda_available() -> bool:
    """Whether the extension was built with its CUDA kernels (says nothing about a GPU being present)."""
    module = _load()
    return module is not None and bool(module.with_cuda())


def _ops() -> Any:
    if _load() is None:
        raise RuntimeError(available()[1])
    return torch.ops.fastxai


def gaussian_perturb(
    x: torch.Tensor,
    sigma: torch.Tensor,
    seed: int,
    sample_offset: int,
    n_samples: int,
    batch_offset: int = 0,
) -> torch.Tensor:
    """Noisy copies ``out[s, b] = x[b] + sigma[b] * N(seed; sample_offset + s, batch_offset + b, j)``.

    Returns [n_samples, B, *F] in x's dtype.
    """
    out: torch.Tensor = _ops().gaussian_perturb(x, sigma, seed, sample_offset, n_samples, batch_offset)
    return out


def moment_accumulate(
    values: torch.Tensor,
    total: torch.Tensor,
    total_sq: torch.Tensor | None = None,
    multiplier: torch.Tensor | None = None,
) -> None:
    """In place: ``total += sum_s a_s``, ``total_sq += sum_s a_s**2``; ``a_s = values[s] (* multiplier[s])``.

    ``total_sq`` and ``multiplier`` are optional.
    """
    _ops().moment_accumulate(values, total, total_sq, multiplier)


def path_points(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``out[k, b] = baseline[b] + alphas[k] * (x[b] - baseline[b])``: [K, B, *F]."""
    out: torch.Tensor = _ops().path_points(x, baseline, alphas)
    return out


def weighted_path_accumulate(grads: torch.Tensor, weights: torch.Tensor, acc: torch.Tensor) -> None:
    """In place: ``acc[b] += sum_k weights[k, b] * grads[k, b]``, steps in order."""
    _ops().weighted_path_accumulate(grads, weights, acc)


def pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    step_size: torch.Tensor,
    eps: torch.Tensor,
    lower: float,
    upper: float,
    norm: str,
) -> torch.Tensor:
    """One projected gradient step (``norm`` ``"linf"`` or ``"l2"``), clamped to [lower, upper]: [B, *F].

    step_size, eps: [B] float32.
    """
    out: torch.Tensor = _ops().pgd_step(x_adv, grad, x_orig, step_size, eps, lower, upper, norm)
    return out


def lrp_divide(relevance: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``relevance / (z + eps * sign0(z))``, 0 where that denominator is 0: relevance's shape and dtype."""
    out: torch.Tensor = _ops().lrp_divide(relevance, z, eps)
    return out


def rescale_backward(
    grad: torch.Tensor, x: torch.Tensor, reference: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    """``grad`` times DeepLIFT's Rescale multiplier of each pair ``(x, reference)`` (grad's dtype)."""
    out: torch.Tensor = _ops().rescale_backward(grad, x, reference, eps, negative_slope)
    return out


def relu_rescale(
    x: torch.Tensor, reference: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    """``relu(x)`` (``leaky_relu`` with ``negative_slope``) whose backward is ``rescale_backward``: one
    C++ autograd op (``csrc/relu_rescale.cpp``), no Python per call or in its backward."""
    out: torch.Tensor = _ops().relu_rescale(x, reference, eps, negative_slope)
    return out


def lrp_product(
    activation: torch.Tensor,
    c: torch.Tensor,
    c_neg: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
) -> torch.Tensor:
    """``activation * c``, or ``activation * (alpha * c - beta * c_neg)`` when c_neg is given."""
    out: torch.Tensor = _ops().lrp_product(activation, c, c_neg, alpha, beta)
    return out


def masked_blend(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    feature_mask: torch.Tensor,
    keep: torch.Tensor,
    *,
    copy_major: bool = False,
) -> torch.Tensor:
    """``baselines[b] + keep[b, p, mask] * (inputs[b] - baselines[b])``: [B, P, *F] ([P, B, *F] with
    ``copy_major``); keep float32."""
    out: torch.Tensor = _ops().masked_blend(inputs, baselines, feature_mask, keep, copy_major)
    return out


def occlude(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    window: list[int],
    strides: list[int],
    start: int,
    count: int,
    *,
    copy_major: bool = False,
) -> torch.Tensor:
    """[B, *F] -> [B, count, *F] ([count, B, *F] with ``copy_major``): copy ``p`` has window
    ``start + p`` taken from baselines."""
    out: torch.Tensor = _ops().occlude(inputs, baselines, window, strides, start, count, copy_major)
    return out


def _gaussian_perturb(
    x: torch.Tensor, sigma: torch.Tensor, seed: int, sample_offset: int, n_samples: int, batch_offset: int
) -> torch.Tensor:
    return x.new_empty((n_samples, *x.shape))


def _moment_accumulate(
    values: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor | None, multiplier: torch.Tensor | None
) -> None:
    return None


def _path_points(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    return x.new_empty((alphas.shape[0], *x.shape))


def _pgd_step(
    x_adv: torch.Tensor,
    grad: torch.Tensor,
    x_orig: torch.Tensor,
    step_size: torch.Tensor,
    eps: torch.Tensor,
    lower: float,
    upper: float,
    norm: str,
) -> torch.Tensor:
    return x_adv.new_empty(x_adv.shape)


def _weighted_path_accumulate(grads: torch.Tensor, weights: torch.Tensor, acc: torch.Tensor) -> None:
    return None


def _lrp_divide(relevance: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    return relevance.new_empty(relevance.shape)


def _lrp_product(
    activation: torch.Tensor, c: torch.Tensor, c_neg: torch.Tensor | None, alpha: float, beta: float
) -> torch.Tensor:
    return activation.new_empty(activation.shape)


def _masked_blend(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    feature_mask: torch.Tensor,
    keep: torch.Tensor,
    copy_major: bool = False,
) -> torch.Tensor:
    copies = (keep.shape[1], inputs.shape[0]) if copy_major else (inputs.shape[0], keep.shape[1])
    return inputs.new_empty((*copies, *inputs.shape[1:]))


def _occlude(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    window: list[int],
    strides: list[int],
    start: int,
    count: int,
    copy_major: bool = False,
) -> torch.Tensor:
    copies = (count, inputs.shape[0]) if copy_major else (inputs.shape[0], count)
    return inputs.new_empty((*copies, *inputs.shape[1:]))


def _rescale_backward(
    grad: torch.Tensor, x: torch.Tensor, reference: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    return grad.new_empty(grad.shape)


FAKES = {
    "gaussian_perturb": _gaussian_perturb,
    "moment_accumulate": _moment_accumulate,
    "path_points": _path_points,
    "pgd_step": _pgd_step,
    "weighted_path_accumulate": _weighted_path_accumulate,
    "lrp_divide": _lrp_divide,
    "lrp_product": _lrp_product,
    "masked_blend": _masked_blend,
    "occlude": _occlude,
    "rescale_backward": _rescale_backward,
}
"""Each op's fake (shape-only) implementation, for torch.compile / FakeTensor: outputs of the op's
shape and dtype, in-place ops return None. Defined here, the module ``fastxai._C`` names for them
(``set_python_module``); ``fastxai._triton`` registers them for its operators too."""


def _register_fakes() -> None:
    """Register ``FAKES`` for the operators ``fastxai::*``, so they trace under torch.compile.

    ``fastxai._C`` names this module as the home of its fake implementations
    (``set_python_module``), so torch imports it when it needs them.
    """
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    for name, fake in FAKES.items():
        torch.library.register_fake(f"fastxai::{name}")(fake)


# torch imports this module when it needs the fake implementations of ops that fastxai._C
# registered (it named this module): register them then. Nothing is probed otherwise.
if "fastxai._C" in sys.modules:
    _load()
