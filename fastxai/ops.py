"""The fused ops: one public function each, validated here, run by the selected backend.

Every op has the signature of its reference in ``fastxai.reference.ops`` plus a keyword
``backend`` (``None`` = the choice in force, see ``fastxai.backends()``). Inputs are checked
and made contiguous here, so backends receive exactly the layout they document.
"""

from __future__ import annotations

import importlib
import math
import struct
from collections.abc import Callable, Sequence
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
        return importlib.import_module("fastxai._triton")  # fastxai.kernels, traceable
    raise ValueError(f"unknown backend {backend!r}")


def _dispatch(op: str, backend: str | None, anchor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    name = _backends.resolve(backend, anchor.device, anchor.dtype)
    return getattr(_implementation(name), op)(*args, **kwargs)


def _unchecked(op: str, backend: str | None, anchor: torch.Tensor) -> Callable[..., Any]:
    """Private fast path: the implementation of ``op`` that ``_dispatch`` would call for tensors
    like ``anchor``, resolved once.

    No checks and no conversions: only for a caller that builds every argument itself, from
    inputs it has validated, in the form the public op hands on (contiguous, same dtypes and
    devices, shapes right by construction), and whose tests run it on every backend.
    Options the public op hands on as keywords (``copy_major`` of ``masked_blend`` and
    ``occlude``) are keywords of the implementation too: pass them by name.
    """
    name = _backends.resolve(backend, anchor.device, anchor.dtype)
    implementation: Callable[..., Any] = getattr(_implementation(name), op)
    return implementation


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


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


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
    if batch < 1:
        raise ValueError(f"x must have batch >= 1, got shape {tuple(x.shape)}")
    sigma_t = _nonnegative_per_row("sigma", sigma, batch, torch.float32, x.device)
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
        tensor = _nonnegative_per_row(
            name, value, batch, _accumulator_dtype(x_adv.dtype), x_adv.device, check_cuda=False
        )
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


def _check_like(name: str, tensor: object, like_name: str, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` if it is a tensor of ``like``'s shape, dtype and device, else an error naming it."""
    tensor = _floating(name, tensor)
    if tensor.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}), got {tensor.dtype}")
    if tensor.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} ({tuple(like.shape)}), got {tuple(tensor.shape)}"
        )
    if tensor.device != like.device:
        raise ValueError(f"{name} is on {tensor.device}, {like_name} on {like.device}")
    return tensor


def _dispatch_in_layout(op: str, backend: str | None, tensors: Sequence[torch.Tensor], *rest: Any) -> Any:
    """``_dispatch`` for element-wise ops, in the memory order of ``tensors[0]``.

    When the first tensor is dense but not contiguous (channels-last activations), the op runs
    on every tensor permuted into its memory order (contiguous views; a tensor of another
    layout is copied into that order) and the result is permuted back: it keeps the first
    argument's layout instead of paying a layout-changing copy per argument and another for
    the result. Backends still receive contiguous tensors; element-wise ops do not care about
    the order of elements. ``rest``: the op's remaining arguments, passed on as they are."""
    first = tensors[0]
    order: tuple[int, ...] | None = None
    if first.dim() >= 2 and not first.is_contiguous():
        strides = first.stride()
        order = tuple(sorted(range(first.dim()), key=lambda d: (-strides[d], d)))
        if not first.permute(order).is_contiguous():
            order = None  # not dense (e.g. broadcast): the contiguous path
    if order is None:
        return _dispatch(op, backend, first, *(t.contiguous() for t in tensors), *rest)
    out = _dispatch(op, backend, first, *(t.permute(order).contiguous() for t in tensors), *rest)
    return out.permute(sorted(range(len(order)), key=order.__getitem__))


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _nonnegative_per_row(
    name: str, value: object, batch: int, dtype: torch.dtype, device: torch.device, check_cuda: bool = True
) -> torch.Tensor:
    """A number or a [B] tensor of finite values >= 0, as [B] of ``dtype``: a NaN would pass
    every comparison in the kernels and spread through the result without an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    tensor = torch.as_tensor(value, dtype=dtype, device=device)
    if tensor.dim() == 0:
        tensor = tensor.expand(batch)
    if tensor.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},), got {tuple(tensor.shape)}")
    # A tensor's values cost a device sync to read: done on the CPU, and on CUDA where asked (not
    # in the attack loop's pgd_step, whose callers check eps once; never inside a graph capture).
    read = device.type == "cpu" or (check_cuda and not torch.cuda.is_current_stream_capturing())
    if isinstance(value, torch.Tensor) and read and not bool((torch.isfinite(tensor) & (tensor >= 0)).all()):
        raise ValueError(
            f"{name} must be finite and >= 0, got values in [{float(tensor.min())}, {float(tensor.max())}]"
        )
    return tensor


def _check_real(name: str, value: object, dtype: torch.dtype, minimum: float | None = None) -> float:
    """A finite real number (within float32's range unless ``dtype`` is float64, since kernels round it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    too_large = dtype != torch.float64 and abs(value) > _FLOAT32_MAX
    if not math.isfinite(value) or too_large or (minimum is not None and value < minimum):
        bound = f" and >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be finite{bound} (within float32's range for {dtype}), got {value}")
    return value


def lrp_divide(
    relevance: torch.Tensor, z: torch.Tensor, eps: float, *, backend: str | None = None
) -> torch.Tensor:
    """The stabilised division of LRP: ``relevance / (z + eps * sign0(z))``, 0 where that is 0 / 0.

    ``sign0(z)`` is +1 where ``z >= 0``, else -1. relevance, z: same shape ([N, *]) and dtype;
    eps: finite, >= 0. Computed in float32 (float64 for float64); returns relevance's shape and dtype.
    See ``fastxai.reference.lrp.lrp_divide``.

    >>> s = fastxai.ops.lrp_divide(relevance_out, z, 1e-6)
    """
    relevance = _floating("relevance", relevance)
    z = _check_like("z", z, "relevance", relevance)
    eps = _check_real("eps", eps, relevance.dtype, 0.0)
    return _dispatch_in_layout("lrp_divide", backend, (relevance, z), eps)


def lrp_product(
    activation: torch.Tensor,
    c: torch.Tensor,
    c_neg: torch.Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The last step of an LRP rule: ``activation * c``, or ``activation * (alpha * c - beta * c_neg)``.

    activation, c, c_neg: same shape and dtype; alpha and beta (finite) apply only with c_neg.
    Computed in float32 (float64 for float64); returns activation's shape and dtype.
    See ``fastxai.reference.lrp.lrp_product``.

    >>> relevance_in = fastxai.ops.lrp_product(a, c_pos, c_neg, alpha=2.0, beta=1.0)
    """
    activation = _floating("activation", activation)
    c = _check_like("c", c, "activation", activation)
    alpha = _check_real("alpha", alpha, activation.dtype)
    beta = _check_real("beta", beta, activation.dtype)
    if c_neg is None:
        if alpha != 1.0 or beta != 0.0:
            raise ValueError(
                f"alpha and beta apply only with c_neg: without it the product is activation * c "
                f"(got alpha={alpha}, beta={beta})"
            )
        return _dispatch_in_layout("lrp_product", backend, (activation, c), None, alpha, beta)
    c_neg = _check_like("c_neg", c_neg, "activation", activation)
    return _dispatch_in_layout("lrp_product", backend, (activation, c, c_neg), alpha, beta)


def masked_blend(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    feature_mask: torch.Tensor,
    keep: torch.Tensor,
    *,
    copy_major: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Perturbed copies ``baselines[b] + keep[b, p, mask[i]] * (inputs[b] - baselines[b])`` -> [B, P, *F].

    inputs, baselines: [B, *F], same dtype; feature_mask: int64 group ids in [0, M), shape [*F]
    (shared) or [B, *F]; keep: [B, P, M] floating (1 keeps the input, 0 takes the baseline),
    used as float32 (float64 for float64 inputs). ``copy_major=True`` returns the same copies as
    [P, B, *F] (copy ``p`` of every input consecutive, what a model batch of whole copies of the
    batch wants), written in that layout: equal to ``masked_blend(...).transpose(0, 1).contiguous()``.
    See ``fastxai.reference.perturbation.masked_blend``.

    >>> perturbed = fastxai.ops.masked_blend(x, torch.zeros_like(x), mask, keep)  # [B, P, *F]
    """
    inputs = _floating("inputs", inputs)
    if inputs.dim() < 1:
        raise ValueError("inputs must have a batch dimension, got a 0-d tensor")
    baselines = _check_like("baselines", baselines, "inputs", inputs)
    if not isinstance(feature_mask, torch.Tensor):
        raise TypeError(f"feature_mask must be a torch.Tensor, got {type(feature_mask).__name__}")
    if feature_mask.dtype != torch.int64:
        raise TypeError(f"feature_mask must be an int64 tensor of group ids, got {feature_mask.dtype}")
    if feature_mask.shape not in (inputs.shape[1:], inputs.shape):
        raise ValueError(
            f"feature_mask must have shape {tuple(inputs.shape[1:])} (shared) or {tuple(inputs.shape)} "
            f"(per input), got {tuple(feature_mask.shape)}"
        )
    if feature_mask.device != inputs.device:
        raise ValueError(f"feature_mask is on {feature_mask.device}, inputs on {inputs.device}")
    keep = _floating("keep", keep)
    if keep.dim() != 3 or keep.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"keep must have shape ({inputs.shape[0]}, P, M) (batch, perturbations, groups), "
            f"got {tuple(keep.shape)}"
        )
    if keep.device != inputs.device:
        raise ValueError(f"keep is on {keep.device}, inputs on {inputs.device}")
    _check_bool("copy_major", copy_major)
    groups = keep.shape[2]
    if feature_mask.numel() > 0:
        low, high = (int(v) for v in torch.aminmax(feature_mask))
        if low < 0 or high >= groups:
            raise ValueError(
                f"feature_mask values must be group ids in [0, {groups}) (keep has {groups} groups), "
                f"got values in [{low}, {high}]"
            )
    keep = keep.to(_accumulator_dtype(inputs.dtype)).contiguous()
    return _dispatch(
        "masked_blend",
        backend,
        inputs,
        inputs.contiguous(),
        baselines.contiguous(),
        feature_mask.contiguous(),
        keep,
        copy_major=copy_major,
    )


def _int_tuple(name: str, value: object, length: int) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a tuple of {length} ints, got {type(value).__name__}")
    items = tuple(value)
    if len(items) != length or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
        raise ValueError(
            f"{name} must be a tuple of {length} ints (one per feature dimension), got {value!r}"
        )
    if any(v < 1 for v in items):
        raise ValueError(f"{name} must hold positive sizes, got {items}")
    return items


def _window_counts(
    shape: Sequence[int], window: object, strides: object
) -> tuple[tuple[int, ...], tuple[int, ...], list[int]]:
    """Validated window and strides for feature shape ``shape``, and the positions per dimension."""
    window_t = _int_tuple("window", window, len(shape))
    strides_t = _int_tuple("strides", strides, len(shape))
    if any(w > size for w, size in zip(window_t, shape, strict=True)):
        raise ValueError(f"window {window_t} is larger than the input's features {tuple(shape)}")
    counts = [(size - w) // s + 1 for size, w, s in zip(shape, window_t, strides_t, strict=True)]
    return window_t, strides_t, counts


def occlusion_window_count(shape: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> int:
    """How many windows ``occlude`` slides over features of ``shape``: ``prod_d ((F_d - w_d) // s_d + 1)``.

    ``shape`` is the feature shape ``F`` (``inputs.shape[1:]``); window and strides have one
    entry per feature dimension.

    >>> fastxai.ops.occlusion_window_count((3, 8, 8), (3, 4, 4), (3, 2, 2))  # 9
    """
    if not isinstance(shape, Sequence) or any(isinstance(v, bool) or not isinstance(v, int) for v in shape):
        raise TypeError(f"shape must be a tuple of ints (the feature shape), got {shape!r}")
    if any(v < 0 for v in shape):
        raise ValueError(f"shape must hold sizes >= 0, got {tuple(shape)}")
    return math.prod(_window_counts(tuple(shape), window, strides)[2])


def occlude(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    window: tuple[int, ...],
    strides: tuple[int, ...],
    start: int,
    count: int,
    *,
    copy_major: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Occlusion: [B, *F] -> [B, count, *F]; copy ``p`` takes window ``start + p`` from baselines.

    Along feature dimension ``d`` windows start at ``k * strides[d]``, ``k = 0 .. (F_d - window[d]) //
    strides[d]``, numbered row-major; ``occlusion_window_count`` gives their number W, and
    ``0 <= start <= start + count <= W``. This is Captum's ``Occlusion`` grid when every
    ``F_d - window[d]`` is a multiple of ``strides[d]``; otherwise Captum adds one clipped window
    at the edge, which ``fastxai.occlusion`` builds with ``masked_blend`` instead.
    ``copy_major=True`` returns the same copies as [count, B, *F] (copy ``p`` of every input
    consecutive), written in that layout: equal to ``occlude(...).transpose(0, 1).contiguous()``.
    See ``fastxai.reference.perturbation.occlude``.

    >>> copies = fastxai.ops.occlude(x, torch.zeros_like(x), (1, 4, 4), (1, 4, 4), 0, 8)
    """
    inputs = _floating("inputs", inputs)
    if inputs.dim() < 2:
        raise ValueError(
            f"inputs must be [B, *F] with at least one feature dimension, got {tuple(inputs.shape)}"
        )
    baselines = _check_like("baselines", baselines, "inputs", inputs)
    window_t, strides_t, counts = _window_counts(tuple(inputs.shape[1:]), window, strides)
    total = math.prod(counts)
    _check_int("start", start, 0, total + 1)
    _check_int("count", count, 0, total - start + 1)
    _check_bool("copy_major", copy_major)
    return _dispatch(
        "occlude",
        backend,
        inputs,
        inputs.contiguous(),
        baselines.contiguous(),
        list(window_t),
        list(strides_t),
        start,
        count,
        copy_major=copy_major,
    )


def _rescale_scalars(eps: object, negative_slope: object, dtype: torch.dtype) -> tuple[float, float]:
    """The Rescale ops' ``eps`` (finite, > 0 also once rounded to the kernels' float32) and slope."""
    eps = _check_real("eps", eps, dtype, 0.0)
    slope = _check_real("negative_slope", negative_slope, dtype)
    rounded = eps if dtype == torch.float64 else struct.unpack("f", struct.pack("f", eps))[0]
    if not rounded > 0:  # a positive eps that rounds to 0 in float32 would leave 0 / 0 where a == b
        raise ValueError(f"eps must be > 0 (in float32 for {dtype}), got {eps}")
    return eps, slope


def rescale_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    reference: torch.Tensor,
    eps: float,
    negative_slope: float = 0.0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """DeepLIFT's Rescale rule for ``relu`` / ``leaky_relu``: ``grad`` times each pair's multiplier.

    grad, x, reference: the same shape and dtype (``x`` the nonlinearity's argument in the
    inputs' pass, ``reference`` the same element in the baselines' pass). With ``a = x[i]``,
    ``b = reference[i]`` and ``f(v) = v if v > 0 else negative_slope * v``, the multiplier is
    ``m = (f(a) - f(b)) / (a - b)``, or ``f'(a) = (1 if a > 0 else negative_slope)`` where
    ``|a - b| < eps``; returns ``grad * m`` (grad's shape and dtype), computed in float32 (float64
    for float64). eps: finite, > 0. Shrikumar et al. 2017; see ``fastxai.reference.rescale``.

    >>> g = fastxai.ops.rescale_backward(grad_out, pre, pre_baseline, 1e-10)
    """
    grad = _floating("grad", grad)
    x = _check_like("x", x, "grad", grad)
    reference = _check_like("reference", reference, "grad", grad)
    eps, negative_slope = _rescale_scalars(eps, negative_slope, grad.dtype)
    return _dispatch_in_layout("rescale_backward", backend, (grad, x, reference), eps, negative_slope)


def relu_rescale(
    x: torch.Tensor,
    reference: torch.Tensor,
    eps: float,
    negative_slope: float = 0.0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``relu(x)`` (``leaky_relu`` with ``negative_slope``) whose backward is DeepLIFT's Rescale rule:
    the gradient with respect to ``x`` is ``rescale_backward(grad, x, reference, eps, negative_slope)``.

    x, reference: the same shape and dtype (the pre-activations of the inputs' and the baselines'
    passes); eps > 0 (in float32 for other dtypes than float64). Returns x's shape and dtype; no
    gradient flows to ``reference``. The native backend runs it as one C++ autograd op (no
    Python per call or in the backward); the others as an autograd function around their
    ``rescale_backward``. This is what ``fastxai.deeplift`` applies to every relu.

    >>> y = fastxai.ops.relu_rescale(pre.requires_grad_(), pre_baseline, 1e-10)
    """
    x = _floating("x", x)
    reference = _check_like("reference", reference, "x", x)
    eps, negative_slope = _rescale_scalars(eps, negative_slope, x.dtype)
    out: torch.Tensor = _dispatch("relu_rescale", backend, x, x, reference, eps, negative_slope)
    return out


__all__ = [
    "gaussian_perturb",
    "lrp_divide",
    "lrp_product",
    "masked_blend",
    "moment_accumulate",
    "occlude",
    "occlusion_window_count",
    "path_points",
    "pgd_step",
    "relu_rescale",
    "rescale_backward",
    "weighted_path_accumulate",
]
