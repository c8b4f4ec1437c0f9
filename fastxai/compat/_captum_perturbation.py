"""Captum-shaped perturbation attributions: ``Occlusion``, ``FeatureAblation``, ``KernelShap``,
``Lime`` and ``ShapleyValueSampling`` with Captum's constructors and ``attribute`` signatures,
computed by fastxai's batched methods. Swap the import, keep the code::

    from fastxai.compat.captum import Occlusion   # was: from captum.attr import Occlusion
    attr = Occlusion(model).attribute(x, sliding_window_shapes=(1, 4, 4), strides=2, target=y)

What differs from Captum, on purpose:

- ``perturbations_per_eval`` is honoured as the batching: a model batch holds at most
  ``perturbations_per_eval`` copies of the inputs. Captum's default 1 is slow; larger is faster
  and gives the same numbers.
- ``target=None`` means the predicted class (fastxai's convention); a model returning one
  score per example ([B] or [B, 1]) needs no target, as in Captum.
- The model runs as given: no switch to eval mode (Captum does not switch either).
- Sampled methods draw their coalitions from ``seed`` (an extra keyword of ``attribute``),
  not from torch's global generator, so numbers match Captum in distribution, not sample by
  sample. KernelShap enforces efficiency exactly and enumerates every coalition when
  ``2**M - 2 <= n_samples`` (exact Shapley values); Lime's Lasso is solved to optimality.
- Feature-mask ids with gaps are renumbered (attributions per element do not depend on the
  numbering); with ``return_input_shape=False`` ids must be 0..M-1.
- Accepted but not honoured is refused: ``show_progress=True``, a custom ``similarity_func``
  or ``perturb_func``, an interpretable model other than Captum's ``SkLearnLasso`` /
  ``SkLearnLinearRegression`` raise ``NotImplementedError``. Tuple inputs are packed into one
  flat tensor; ``Occlusion`` occludes each input of a tuple in turn, the others as given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai import _model
from fastxai.attribution.integrated_gradients import check_baselines
from fastxai.attribution.lime import lime
from fastxai.attribution.perturbation import check_grid, feature_ablation, occlusion
from fastxai.attribution.shapley import kernel_shap, shapley_value_sampling
from fastxai.compat._captum_inputs import PackedInputs
from fastxai.compat.captum import check_target, module_of


def _check_perturbations_per_eval(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"perturbations_per_eval must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"perturbations_per_eval must be >= 1, got {value}")
    return value


def _refuse_progress(show_progress: object) -> None:
    if show_progress:
        raise NotImplementedError("show_progress=True is not supported: fastxai shows no progress bar")


class _PerturbationAttribution:
    """What the five classes share: the forward function, packing tuple inputs, baselines, masks."""

    def __init__(self, forward_func: Callable[..., torch.Tensor]) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def has_convergence_delta(self) -> bool:
        return False

    def _call(self, method: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run ``method`` leaving the user's module as found, in the mode it is in (as Captum)."""
        module = module_of(self.forward_func)
        if module is None:
            return method(*args, **kwargs)
        with _model.preserved_state(module, eval_mode=False):
            return method(*args, **kwargs)

    def _baselines(self, packed: PackedInputs, inputs: Any, baselines: Any) -> torch.Tensor | float:
        if baselines is None:
            return 0.0
        if not packed.is_tuple and isinstance(baselines, torch.Tensor):
            # one tensor: Captum's broadcasting rules for a baseline of that input
            return check_baselines(baselines, inputs).reshape(packed.batch, -1)
        flat = packed.pack(baselines, name="baselines")
        if flat.shape[0] not in (1, packed.batch):
            raise ValueError(
                f"baselines must have 1 or {packed.batch} rows (one per example), got {flat.shape[0]}"
            )
        return flat

    def _feature_mask(self, packed: PackedInputs, feature_mask: Any, keep_ids: bool) -> torch.Tensor | None:
        """Captum's mask (a tensor or tuple like the inputs) as one flat mask [1 or B, N], ids 0..M-1."""
        if feature_mask is None:
            return None
        parts = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
        if len(parts) != len(packed.shapes):
            raise ValueError(
                f"feature_mask must have {len(packed.shapes)} entries like inputs, got {len(parts)}"
            )
        flat_parts = []
        for index, (part, shape) in enumerate(zip(parts, packed.shapes, strict=True)):
            label = f"feature_mask[{index}]" if packed.is_tuple else "feature_mask"
            if not isinstance(part, torch.Tensor):
                raise TypeError(f"{label} must be an integer torch.Tensor, got {type(part).__name__}")
            if part.is_floating_point() or part.is_complex() or part.dtype == torch.bool:
                raise TypeError(f"{label} must hold integer group ids, got {part.dtype}")
            if part.dim() == len(shape):
                part = part.unsqueeze(0)
            try:
                rows = part.shape[0] if part.dim() == len(shape) + 1 else -1
                if rows not in (1, packed.batch):
                    raise RuntimeError
                expanded = part.expand(rows, *shape)
            except RuntimeError:
                raise ValueError(
                    f"{label} must have shape {shape}, (1, *{shape}) or ({packed.batch}, *{shape}), "
                    f"size-1 dims broadcasting; got {tuple(part.shape)}"
                ) from None
            flat_parts.append(expanded.reshape(rows, -1).to(device=packed.device, dtype=torch.int64))
        rows = max(part.shape[0] for part in flat_parts)
        mask = torch.cat([part.expand(rows, -1) for part in flat_parts], dim=1)
        ids, renumbered = torch.unique(mask, return_inverse=True)
        if int(ids[0]) < 0:
            raise ValueError(f"feature_mask ids must be >= 0, got {int(ids[0])}")
        if ids.numel() != int(ids[-1]) + 1:
            if keep_ids:
                raise ValueError(
                    "feature_mask ids must be 0..M-1 without gaps when return_input_shape=False "
                    f"(got {ids.numel()} distinct ids up to {int(ids[-1])})"
                )
            mask = renumbered
        return mask

    def _run(
        self,
        method: Callable[..., torch.Tensor],
        inputs: Any,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        feature_mask: Any,
        perturbations_per_eval: object,
        show_progress: object,
        *,
        return_input_shape: bool = True,
        **options: Any,
    ) -> Any:
        _refuse_progress(show_progress)
        per_eval = _check_perturbations_per_eval(perturbations_per_eval)
        packed = PackedInputs(inputs)
        forward = packed.forward(self.forward_func, additional_forward_args)
        options["feature_mask"] = self._feature_mask(packed, feature_mask, keep_ids=not return_input_shape)
        if not return_input_shape:
            options["return_input_shape"] = False
        flat_attr = self._call(
            method,
            forward,
            packed.flat,
            check_target(target),
            baselines=self._baselines(packed, inputs, baselines),
            chunk_size=per_eval * packed.batch,
            **options,
        )
        return packed.format(flat_attr) if return_input_shape else flat_attr


class Occlusion(_PerturbationAttribution):
    """Captum's ``Occlusion(forward_func)`` on ``fastxai.occlusion``: same windows, same numbers."""

    def attribute(
        self,
        inputs: torch.Tensor,
        sliding_window_shapes: tuple[int, ...],
        strides: int | tuple[int, ...] | None = None,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Any:
        if isinstance(inputs, tuple):
            if len(inputs) != 1:
                return self._several(
                    inputs, sliding_window_shapes, strides, baselines, target, additional_forward_args,
                    perturbations_per_eval, show_progress,
                )  # fmt: skip
            window = sliding_window_shapes
            if isinstance(window, tuple) and len(window) == 1 and isinstance(window[0], tuple):
                window = window[0]
            stride = strides[0] if isinstance(strides, tuple) and len(strides) == 1 else strides
            base = baselines[0] if isinstance(baselines, tuple) and len(baselines) == 1 else baselines
            result = self.attribute(
                inputs[0],
                window,
                stride,
                base,
                target,
                additional_forward_args,
                perturbations_per_eval,
                show_progress,
            )
            return (result,)
        _refuse_progress(show_progress)
        per_eval = _check_perturbations_per_eval(perturbations_per_eval)
        packed = PackedInputs(inputs)
        forward = packed.forward(self.forward_func, additional_forward_args)

        def model(x: torch.Tensor) -> torch.Tensor:
            return forward(x.reshape(x.shape[0], -1))

        return self._call(
            occlusion,
            model,
            inputs,
            check_target(target),
            sliding_window_shapes=sliding_window_shapes,
            strides=strides,
            baselines=baselines,
            chunk_size=per_eval * packed.batch,
        )

    def _several(
        self,
        inputs: tuple[torch.Tensor, ...],
        sliding_window_shapes: Any,
        strides: Any,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        perturbations_per_eval: object,
        show_progress: object,
    ) -> tuple[torch.Tensor, ...]:
        """Captum's occlusion of a tuple of inputs: each input occluded window by window with the
        others as given, one attribution per input. Runs ``fastxai.occlusion`` once per input on a
        forward that puts the other inputs (and the extra arguments) beside each model batch."""
        _refuse_progress(show_progress)
        per_eval = _check_perturbations_per_eval(perturbations_per_eval)
        packed = PackedInputs(inputs)
        count = len(inputs)
        windows = _per_input("sliding_window_shapes", sliding_window_shapes, count, allow_shared=False)
        stride_list = _per_input("strides", strides, count)
        base_list = _per_input("baselines", baselines, count)
        for index, tensor in enumerate(inputs):  # every input's arguments, before any model call
            check_grid(tensor, windows[index], stride_list[index], label=f"[{index}]")
            if base_list[index] is not None:
                check_baselines(base_list[index], tensor)
        forward = packed.forward(self.forward_func, additional_forward_args)
        target_t = check_target(target)

        def beside(index: int) -> Callable[[torch.Tensor], torch.Tensor]:
            def model(rows: torch.Tensor) -> torch.Tensor:
                copies, left = divmod(rows.shape[0], packed.batch)
                if left:
                    raise NotImplementedError(
                        f"Occlusion of inputs[{index}] called the model on {rows.shape[0]} rows, not whole "
                        f"copies of the {packed.batch} examples"
                    )
                parts = [
                    rows.reshape(rows.shape[0], -1)
                    if other == index
                    else packed.flat[:, start:stop].repeat(copies, 1)
                    for other, (start, stop) in enumerate(packed.spans)
                ]
                return forward(torch.cat(parts, dim=1))

            return model

        return tuple(
            self._call(
                occlusion,
                beside(index),
                inputs[index],
                target_t,
                sliding_window_shapes=windows[index],
                strides=stride_list[index],
                baselines=base_list[index],
                chunk_size=per_eval * packed.batch,
            )
            for index in range(count)
        )


def _per_input(name: str, value: Any, count: int, *, allow_shared: bool = True) -> list[Any]:
    """A Captum argument for a tuple of ``count`` inputs: a tuple with one entry per input, or
    (``allow_shared``) one value (None, a number) for all of them."""
    if isinstance(value, tuple) and len(value) == count:
        return list(value)
    if allow_shared and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))):
        return [value] * count
    raise ValueError(
        f"{name} must be a tuple with one entry per input ({count})"
        + (", or one number for all" if allow_shared else "")
        + f", got {value!r}"
    )


class FeatureAblation(_PerturbationAttribution):
    """Captum's ``FeatureAblation(forward_func)`` on ``fastxai.feature_ablation``: same numbers."""

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Any:
        return self._run(
            feature_ablation,
            inputs,
            baselines,
            target,
            additional_forward_args,
            feature_mask,
            perturbations_per_eval,
            show_progress,
        )


class ShapleyValueSampling(_PerturbationAttribution):
    """Captum's ``ShapleyValueSampling(forward_func)`` on ``fastxai.shapley_value_sampling``."""

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        seed: int | None = None,
    ) -> Any:
        return self._run(
            shapley_value_sampling,
            inputs,
            baselines,
            target,
            additional_forward_args,
            feature_mask,
            perturbations_per_eval,
            show_progress,
            n_samples=n_samples,
            seed=seed,
        )


class KernelShap(_PerturbationAttribution):
    """Captum's ``KernelShap(forward_func)`` on ``fastxai.kernel_shap`` (exact efficiency)."""

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool = False,
        *,
        seed: int | None = None,
    ) -> Any:
        return self._run(
            kernel_shap,
            inputs,
            baselines,
            target,
            additional_forward_args,
            feature_mask,
            perturbations_per_eval,
            show_progress,
            return_input_shape=return_input_shape,
            n_samples=n_samples,
            seed=seed,
        )


def _surrogate_choice(interpretable_model: object) -> tuple[str, float]:
    """Captum's interpretable model as fastxai's (name, alpha)."""
    if interpretable_model is None:
        return "lasso", 0.01
    kind = type(interpretable_model).__name__
    kwargs = dict(getattr(interpretable_model, "construct_kwargs", {}) or {})
    if kind == "SkLearnLasso" and set(kwargs) <= {"alpha"}:
        alpha = kwargs.get("alpha", 1.0)  # sklearn's Lasso default
        return "lasso", float(alpha)
    if kind == "SkLearnLinearRegression" and not kwargs:
        return "linear", 0.0
    raise NotImplementedError(
        "interpretable_model must be None, captum's SkLearnLasso(alpha=...) or SkLearnLinearRegression(), "
        f"got {kind} with {kwargs}"
    )


class Lime(_PerturbationAttribution):
    """Captum's ``Lime(forward_func, interpretable_model=None, similarity_func=None, perturb_func=None)``
    on ``fastxai.lime``: Bernoulli(1/2) samples, exponential cosine kernel of width 1, Lasso(0.01)."""

    def __init__(
        self,
        forward_func: Callable[..., torch.Tensor],
        interpretable_model: Any = None,
        similarity_func: Any = None,
        perturb_func: Any = None,
    ) -> None:
        super().__init__(forward_func)
        if similarity_func is not None:
            raise NotImplementedError(
                "similarity_func is not supported: fastxai.lime has the exponential kernel on the cosine "
                "or euclidean distance (distance_mode, kernel_width)"
            )
        if perturb_func is not None:
            raise NotImplementedError("perturb_func is not supported: samples are Bernoulli(1/2) per group")
        self.interpretable_model, self.alpha = _surrogate_choice(interpretable_model)

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool = False,
        *,
        seed: int | None = None,
    ) -> Any:
        return self._run(
            lime,
            inputs,
            baselines,
            target,
            additional_forward_args,
            feature_mask,
            perturbations_per_eval,
            show_progress,
            return_input_shape=return_input_shape,
            n_samples=n_samples,
            seed=seed,
            interpretable_model=self.interpretable_model,
            alpha=self.alpha,
        )


__all__ = ["FeatureAblation", "KernelShap", "Lime", "Occlusion", "ShapleyValueSampling"]
