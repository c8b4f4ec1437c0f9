"""Captum's ``NoiseTunnel`` composed over the classes of ``fastxai.compat.captum``."""

from __future__ import annotations

from typing import Any

import torch

from fastxai import _model, ops
from fastxai.attribution.smoothgrad import NT_TYPES, _check_seed, smoothgrad
from fastxai.compat._captum_inputs import PackedForward, PackedInputs
from fastxai.compat.captum import (
    Attribution,
    InputXGradient,
    LayerGradCam,
    Saliency,
    check_target,
    unsupported,
)


class NoiseTunnel(Attribution):
    """Captum's ``NoiseTunnel`` over any class of this module: attribute ``n`` noisy copies
    ``x + stdevs * z`` and return their mean (``smoothgrad``), mean square (``smoothgrad_sq``)
    or variance (``vargrad``).

    Fast path, one fused SmoothGrad run (``fastxai.smoothgrad``): ``Saliency`` with
    ``abs=False`` (any ``nt_type``) or with ``abs=True`` and ``smoothgrad_sq``, and
    ``InputXGradient``, when all inputs share one ``stdevs``. The other supported methods
    (``Saliency`` with ``abs=True`` otherwise, ``GuidedBackprop``, ``Deconvolution``,
    ``IntegratedGradients``, ``GradientShap``, ``GuidedGradCam``) run on
    ``nt_samples_batch_size`` noisy copies of the batch at a time, noise from
    ``fastxai.ops.gaussian_perturb``, moments summed by ``fastxai.ops.moment_accumulate``.
    ``LayerGradCam`` is refused (its output is not input-shaped). ``draw_baseline_from_distrib=True``
    draws each copy's baseline from ``baselines`` [K, *F]. ``seed`` (fastxai only) fixes the noise.
    """

    def __init__(self, attribution_method: Attribution) -> None:
        if not isinstance(attribution_method, Attribution) or isinstance(
            attribution_method, (LayerGradCam, NoiseTunnel)
        ):
            raise TypeError(
                "attribution_method must be a Saliency, InputXGradient, GuidedBackprop, Deconvolution, "
                f"IntegratedGradients, GradientShap or GuidedGradCam of fastxai.compat.captum, got "
                f"{type(attribution_method).__name__}"
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
        if kwargs.pop("return_convergence_delta", False):
            raise unsupported("return_convergence_delta inside NoiseTunnel")
        packed = PackedInputs(inputs)
        sigmas = _per_input_stdevs(stdevs, packed)
        seed = _check_seed(seed)
        target = check_target(kwargs.pop("target", None))
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
        if fast:
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
        return packed.format(
            self._composed(
                packed,
                sigmas,
                seed,
                target,
                extra,
                nt_type,
                nt_samples,
                nt_samples_batch_size or nt_samples,
                draw_baseline_from_distrib,
                kwargs,
            )
        )

    def _composed(
        self,
        packed: PackedInputs,
        sigmas: list[float],
        seed: int,
        target: object,
        extra: Any,
        nt_type: str,
        nt_samples: int,
        per_pass: int,
        draw_baseline: bool,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        flat, batch = packed.flat, packed.batch
        target_t = _model.check_target(target, batch, flat.device)
        forward = packed.forward(self.forward_func, extra)
        acc_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
        total = torch.zeros(flat.shape, dtype=acc_dtype, device=flat.device)
        total_sq = None if nt_type == "smoothgrad" else torch.zeros_like(total)
        pairs = zip(packed.sizes, sigmas, strict=True)
        columns = torch.cat([torch.full((size,), sigma, dtype=flat.dtype) for size, sigma in pairs])
        columns = columns.to(flat.device)
        generator = torch.Generator().manual_seed(seed)
        distribution = None
        if draw_baseline:
            distribution = packed.pack(kwargs["baselines"], name="baselines", allow_scalar=False)
        for start in range(0, nt_samples, per_pass):
            count = min(per_pass, nt_samples - start)
            if len(set(sigmas)) == 1:
                noisy = ops.gaussian_perturb(flat, sigmas[0], seed, start, count)
            else:
                noisy = flat + ops.gaussian_perturb(torch.zeros_like(flat), 1.0, seed, start, count) * columns
            copies = packed.unpack(noisy.reshape(count * batch, -1))
            call = dict(kwargs)
            if distribution is not None:
                rows = torch.randint(0, distribution.shape[0], (count * batch,), generator=generator)
                drawn = packed.unpack(distribution[rows.to(flat.device)])
                call["baselines"] = drawn if packed.is_tuple else drawn[0]
            elif "baselines" in call:
                call["baselines"] = _repeat_per_example(call["baselines"], batch, count)
            attributions = self.attribution_method.attribute(  # type: ignore[attr-defined]
                copies if packed.is_tuple else copies[0],
                target=None if target_t is None else target_t.repeat(count),
                additional_forward_args=_repeat_arguments(forward, count),
                **call,
            )
            values = PackedInputs(attributions, name="attributions").flat.reshape(count, batch, -1)
            ops.moment_accumulate(values, total, total_sq)
        mean = total / nt_samples
        if total_sq is None:
            return mean.to(flat.dtype)
        mean_sq = total_sq / nt_samples
        return (mean_sq if nt_type == "smoothgrad_sq" else mean_sq - mean * mean).to(flat.dtype)


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
