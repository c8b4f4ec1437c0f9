"""Captum's ``NoiseTunnel`` composed over the classes of ``fastxai.compat.captum``."""

from __future__ import annotations

from typing import Any

import torch

from fastxai import ops
from fastxai.attribution.smoothgrad import NT_TYPES, _check_seed, smoothgrad
from fastxai.compat._captum_inputs import PackedForward, PackedInputs
from fastxai.compat._captum_targets import expand_target
from fastxai.compat.captum import Attribution, InputXGradient, Saliency


class NoiseTunnel(Attribution):
    """Captum's ``NoiseTunnel`` over any attribution class of this package: attribute ``n``
    noisy copies ``x + stdevs * z`` and return their mean (``smoothgrad``), mean square
    (``smoothgrad_sq``) or variance (``vargrad``).

    Fast path, one fused SmoothGrad run (``fastxai.smoothgrad``): ``Saliency`` with
    ``abs=False`` (any ``nt_type``) or with ``abs=True`` and ``smoothgrad_sq``, and
    ``InputXGradient``, when all inputs share one ``stdevs``. Every other class (the gradient
    and path methods, Grad-CAM, the perturbation methods, LRP, ...) runs on
    ``nt_samples_batch_size`` noisy copies of the batch at a time (all of them by default),
    noise from ``fastxai.ops.gaussian_perturb``, moments summed by
    ``fastxai.ops.moment_accumulate``; per-example arguments (targets, baselines, feature
    masks, extra forward arguments) are repeated for the copies. ``draw_baseline_from_distrib=True``
    draws each copy's baseline from ``baselines`` [K, *F]. ``return_convergence_delta=True``
    returns the wrapped method's delta of every noisy copy, [B * nt_samples], example-major
    as Captum orders it (only for methods that have a delta). ``seed`` (fastxai only) fixes
    the noise.
    """

    def __init__(self, attribution_method: Attribution) -> None:
        if not isinstance(attribution_method, Attribution) or isinstance(attribution_method, NoiseTunnel):
            raise TypeError(
                "attribution_method must be an attribution class of fastxai.compat.captum (not a "
                f"NoiseTunnel), got {type(attribution_method).__name__}"
            )
        super().__init__(attribution_method.forward_func)
        self.attribution_method = attribution_method

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.attribution_method.has_convergence_delta()

    def attribute(
        self,
        inputs: Any,
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs: float | tuple[float, ...] = 1.0,
        draw_baseline_from_distrib: bool = False,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Any:
        if nt_type not in NT_TYPES:
            raise ValueError(f"nt_type must be one of {NT_TYPES}, got {nt_type!r}")
        if isinstance(nt_samples, bool) or not isinstance(nt_samples, int) or nt_samples < 1:
            raise ValueError(f"nt_samples must be an int >= 1, got {nt_samples!r}")
        if nt_samples_batch_size is not None and (
            isinstance(nt_samples_batch_size, bool)
            or not isinstance(nt_samples_batch_size, int)
            or nt_samples_batch_size < 1
        ):
            raise ValueError(
                f"nt_samples_batch_size must be None or an int >= 1, got {nt_samples_batch_size!r}"
            )
        with_delta = bool(kwargs.pop("return_convergence_delta", False)) and self.has_convergence_delta()
        packed = PackedInputs(inputs)
        sigmas = _per_input_stdevs(stdevs, packed)
        seed = _check_seed(seed)
        target = kwargs.pop("target", None)
        extra = kwargs.pop("additional_forward_args", None)
        if draw_baseline_from_distrib and "baselines" not in kwargs:
            raise ValueError("draw_baseline_from_distrib=True needs baselines to draw from")
        method = self.attribution_method
        fast_saliency = (
            type(method) is Saliency
            and set(kwargs) <= {"abs"}
            and (not kwargs.get("abs", True) or nt_type == "smoothgrad_sq")
        )
        fast = (fast_saliency or (type(method) is InputXGradient and not kwargs)) and len(set(sigmas)) == 1
        if fast and not isinstance(target, (tuple, list)):
            forward = packed.forward(method.forward_func, extra)
            per_pass = nt_samples if nt_samples_batch_size is None else nt_samples_batch_size
            chunk = per_pass * packed.batch
            result = self._run(
                lambda: smoothgrad(
                    forward,
                    packed.flat,
                    target,
                    n_samples=nt_samples,
                    stdevs=sigmas[0],
                    nt_type=nt_type,
                    multiply_by_inputs=type(method) is InputXGradient,
                    seed=seed,
                    chunk_size=chunk,
                )
            )
            return packed.format(result)
        per_pass = min(nt_samples, nt_samples_batch_size or nt_samples)
        run = _Composed(self.attribution_method, packed, sigmas, seed, target, extra, with_delta)
        attributions, delta = run(nt_type, nt_samples, per_pass, draw_baseline_from_distrib, kwargs)
        return (attributions, delta) if with_delta else attributions


class _Composed:
    """The wrapped method on copies of the batch with noise: streaming moments of its results."""

    def __init__(
        self,
        method: Attribution,
        packed: PackedInputs,
        sigmas: list[float],
        seed: int,
        target: object,
        extra: Any,
        with_delta: bool,
    ) -> None:
        self.method, self.packed, self.sigmas, self.seed = method, packed, sigmas, seed
        self.target, self.with_delta = target, with_delta
        self.forward = packed.forward(method.forward_func, extra)
        columns = torch.cat([torch.full((size,), sigma, dtype=packed.dtype) for size, sigma in
                             zip(packed.sizes, sigmas, strict=True)])
        self.columns = columns.to(packed.device)

    def noisy(self, start: int, count: int) -> torch.Tensor:
        flat = self.packed.flat
        if not flat.is_floating_point():
            flat = flat.float()
        if len(set(self.sigmas)) == 1:
            noisy = ops.gaussian_perturb(flat, self.sigmas[0], self.seed, start, count)
        else:
            unit = ops.gaussian_perturb(torch.zeros_like(flat), 1.0, self.seed, start, count)
            noisy = flat + unit * self.columns.to(flat.dtype)
        return noisy.reshape(count * self.packed.batch, -1)

    def __call__(
        self, nt_type: str, nt_samples: int, per_pass: int, draw_baseline: bool, kwargs: dict[str, Any]
    ) -> tuple[Any, torch.Tensor | None]:
        packed, batch = self.packed, self.packed.batch
        distribution = None
        if draw_baseline:
            distribution = packed.pack(kwargs["baselines"], name="baselines", allow_scalar=False)
        generator = torch.Generator().manual_seed(self.seed)
        total: torch.Tensor | None = None
        total_sq: torch.Tensor | None = None
        result: PackedInputs | None = None
        deltas: list[torch.Tensor] = []
        for start in range(0, nt_samples, per_pass):
            count = min(per_pass, nt_samples - start)
            copies = packed.unpack(self.noisy(start, count))
            call = {key: _repeat_per_example(value, batch, count) for key, value in kwargs.items()}
            if distribution is not None:
                rows = torch.randint(0, distribution.shape[0], (count * batch,), generator=generator)
                drawn = packed.unpack(distribution[rows.to(distribution.device)])
                call["baselines"] = drawn if packed.is_tuple else drawn[0]
            if self.with_delta:
                call["return_convergence_delta"] = True
            output = self.method.attribute(  # type: ignore[attr-defined]
                copies if packed.is_tuple else copies[0],
                target=expand_target(self.target, count),
                additional_forward_args=_repeat_arguments(self.forward, count),
                **call,
            )
            if self.with_delta:
                output, delta = output
                deltas.append(delta.reshape(count, batch).t().reshape(-1))
            result = PackedInputs(output, name="attributions")
            values = result.flat.reshape(count, batch, -1)
            if total is None:
                acc_dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
                total = torch.zeros(values.shape[1:], dtype=acc_dtype, device=values.device)
                total_sq = None if nt_type == "smoothgrad" else torch.zeros_like(total)
            ops.moment_accumulate(values, total, total_sq)
        assert total is not None and result is not None
        mean = total / nt_samples
        if total_sq is None:
            smoothed = mean
        else:
            mean_sq = total_sq / nt_samples
            smoothed = mean_sq if nt_type == "smoothgrad_sq" else mean_sq - mean * mean
        return result.format(smoothed.to(result.dtype)), (torch.cat(deltas) if self.with_delta else None)


def _per_input_stdevs(stdevs: object, packed: PackedInputs) -> list[float]:
    values = list(stdevs) if isinstance(stdevs, tuple) else [stdevs] * len(packed.sizes)
    if len(values) != len(packed.sizes):
        raise ValueError(f"stdevs must have one value per input ({len(packed.sizes)}), got {len(values)}")
    checked = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"stdevs must be floats >= 0, got {stdevs!r}")
        checked.append(float(value))
    return checked


def _repeat_per_example(value: Any, batch: int, count: int) -> Any:
    """Captum's expansion of per-example tensors ([B, ...]) over ``count`` copies of the batch."""
    if isinstance(value, tuple):
        return tuple(_repeat_per_example(part, batch, count) for part in value)
    if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
        return value.repeat(count, *([1] * (value.dim() - 1)))
    return value


def _repeat_arguments(forward: PackedForward, count: int) -> Any:
    if not forward.args:
        return None
    return tuple(
        _repeat_per_example(arg, forward.packed.batch, count) if index in forward.per_example else arg
        for index, arg in enumerate(forward.args)
    )


__all__ = ["NoiseTunnel"]
