"""Captum-shaped perturbation attributions: ``Occlusion``, ``FeatureAblation``, ``KernelShap``,
``Lime`` and ``ShapleyValueSampling`` with Captum's constructors and ``attribute`` signatures,
computed by fastxai's batched methods. Swap the import, keep the code::

    from fastxai.compat.captum import Occlusion   # was: from captum.attr import Occlusion
    attr = Occlusion(model).attribute(x, sliding_window_shapes=(1, 4, 4), strides=2, target=y)

Captum's forms are all taken (see ``_captum_games``): tuple inputs, integer and bool inputs,
forwards returning a number or a tensor aggregated over the batch, ``target=None`` on several
outputs per example (attributions per output, Captum's shapes), futures (``FeatureAblation``,
``ShapleyValueSampling``), ``show_progress`` (a tqdm bar), Lime's pluggable parts
(``_captum_lime``). What differs from Captum, on purpose:

- ``perturbations_per_eval`` changes memory, never results: Captum's default 1 means
  fastxai's automatic chunking (many copies of the batch per forward pass); a larger value is
  a ceiling on the copies per pass. A forward that aggregates the batch is called once per
  perturbed copy, as it must be (and ``perturbations_per_eval > 1`` raises, as in Captum).
- The model runs as given: no switch to eval mode (Captum does not switch either).
- Sampled methods draw from ``seed`` (an extra keyword of ``attribute``; None draws one from
  torch's global generator), not sample by sample as Captum does: the numbers match Captum's in
  distribution, not draw for draw. Shapley sampling pairs each order with its reverse
  (antithetic, still unbiased, exact for two groups); KernelShap enforces efficiency exactly,
  enumerates every coalition when ``2**M - 2 <= n_samples`` (exact Shapley values) and takes
  the minimum-norm fit below M + 1 samples; Lime's Lasso is solved to optimality.
- Feature-mask ids with gaps are renumbered (attributions per element do not depend on the
  numbering); with ``return_input_shape=False`` ids must be 0..M-1.
- ``Occlusion`` of a forward that aggregates the batch raises ``NotImplementedError``.
- Errors Captum raises as ``AssertionError`` (a window that does not fit, an aggregate with
  ``perturbations_per_eval > 1``) are ``ValueError`` subclasses that are also ``AssertionError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai.attribution._perturbation import check_count, check_seed
from fastxai.attribution.integrated_gradients import check_baselines
from fastxai.attribution.perturbation import check_grid, feature_ablation, occlusion
from fastxai.attribution.shapley import kernel_shap, shapley_value_sampling
from fastxai.compat._captum_games import (
    AggregateOutputError,
    Game,
    PerturbationAttribution,
    flat_baselines,
    output_dtype,
)
from fastxai.compat._captum_lime_base import LimeBase


class GroupAttribution(PerturbationAttribution):
    """Feature ablation, Shapley sampling and KernelSHAP: a method over the groups of a mask."""

    def _groups(
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
    ) -> tuple[Game, torch.Tensor]:
        """The method's flat result: ``[B, N]`` (``[B, M]`` without the input shape) per example,
        ``[K, N]`` (``[K, M]``) over the batch (see ``Game``)."""
        game = Game(
            self, inputs, baselines, target, additional_forward_args, perturbations_per_eval, show_progress
        )
        mask = game.feature_mask(feature_mask, keep_ids=not return_input_shape)
        base = flat_baselines(game.packed, game.inputs, game.baselines)
        if "seed" in options:
            options["seed"] = check_seed(options["seed"])  # one seed for every output's run
        if "n_samples" in options:  # checked before the forward pass that tells the output mode
            check_count("n_samples", options["n_samples"], 1)
        if not return_input_shape:
            options["return_input_shape"] = False
        self._games = [game]  # the call's game, for hooks that need the user's input form

        def work() -> torch.Tensor:
            game.start()
            if game.per_example:
                return method(
                    game.model(), game.packed.flat, game.target, baselines=base, feature_mask=mask,
                    chunk_size=game.chunk_size(), **options,
                )  # fmt: skip
            return game.over_batch(method, mask, baselines=game.virtual(base), **options)

        return game, self._call(work, game)

    def _one_model(self, game: Game, flat: torch.Tensor, return_input_shape: bool) -> Any:
        """Lime and KernelSHAP (Captum's ``LimeBase``): one surrogate per example, or one for
        the batch when the forward returns one number for it; float32 results."""
        if not game.per_example and game.output.numel() != 1:
            raise AggregateOutputError(
                "forward_func must return one score per example or one for the whole batch; got "
                f"{tuple(game.output.shape)} for {game.packed.batch} examples"
            )
        flat = flat if flat.is_floating_point() and flat.dtype == torch.float64 else flat.float()
        if not return_input_shape:
            return flat
        return game.packed.format(flat) if game.per_example else format_rows(game, flat)


def format_rows(game: Game, rows: torch.Tensor, lead: tuple[int, ...] | None = None) -> Any:
    """Over-batch results ``[K, N]`` as Captum's tensors ``[*lead, *F_k]`` (lead: ``(K,)``)."""
    parts = game.user_parts(rows)
    if lead is not None:
        parts = tuple(part.reshape(*lead, *part.shape[1:]) for part in parts)
    return parts if game.is_tuple else parts[0]


def float_result(game: Game, values: torch.Tensor) -> torch.Tensor:
    """Captum's float attributions (float64 kept for a float64 output)."""
    return values if game.output.dtype == torch.float64 else values.float()


class Occlusion(PerturbationAttribution):
    """Captum's ``Occlusion(forward_func)`` on ``fastxai.occlusion``: same windows, same numbers.
    Each input of a tuple is occluded in turn with its own window, strides and baseline, the
    others as given; an input without feature dimensions ([B]) takes the window ``()``."""

    progress_name = "Occlusion"

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: Any,
        sliding_window_shapes: Any,
        strides: Any = None,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Any:
        game = Game(
            self, inputs, baselines, target, additional_forward_args, perturbations_per_eval, show_progress
        )
        count = len(game.packed.shapes)
        tensors = game.inputs if game.is_tuple else (game.inputs,)
        if isinstance(sliding_window_shapes, int) and not isinstance(sliding_window_shapes, bool):
            sliding_window_shapes = (sliding_window_shapes,)
        baselines = game.baselines
        if count == 1:  # one input: its window and strides as tuples of one (Captum's reading)
            if not (
                isinstance(sliding_window_shapes, tuple)
                and any(isinstance(w, tuple) for w in sliding_window_shapes)
            ):
                sliding_window_shapes = (sliding_window_shapes,)
            if isinstance(strides, tuple) and not any(isinstance(v, tuple) for v in strides):
                strides = (strides,)
        if not game.is_tuple:
            baselines = (baselines,)
        windows = _per_input("sliding_window_shapes", sliding_window_shapes, count, allow_shared=False)
        stride_list = _per_input("strides", strides, count)
        base_list = _per_input("baselines", baselines, count)
        # inputs without feature dimensions are occluded as [B, 1] with the window (1,)
        shaped = [t if t.dim() > 1 else t.unsqueeze(1) for t in tensors]
        for index, tensor in enumerate(shaped):  # every input's arguments, before any model call
            if tensors[index].dim() == 1:
                windows[index] = _scalar_window("sliding_window_shapes", windows[index], index)
                stride_list[index] = 1 if stride_list[index] in ((), None) else stride_list[index]
            try:
                check_grid(tensor, windows[index], stride_list[index], label=f"[{index}]")
            except (TypeError, ValueError) as error:
                raise _GridError(str(error)) from None
            if isinstance(base_list[index], torch.Tensor):
                base_list[index] = check_baselines(base_list[index], tensors[index]).reshape(tensor.shape)

        def work() -> tuple[torch.Tensor, ...]:
            game.start()
            if not game.per_example:
                raise NotImplementedError(
                    "Occlusion of a forward_func that does not return one score per example (an aggregate "
                    "over the batch, or target=None on several outputs per example) is not implemented"
                )
            model, chunk = game.model(), game.chunk_size()
            return tuple(
                occlusion(
                    _beside(game, index, model), shaped[index], game.target,
                    sliding_window_shapes=windows[index], strides=stride_list[index],
                    baselines=base_list[index], chunk_size=chunk,
                ).reshape(tensors[index].shape)
                for index in range(count)
            )  # fmt: skip

        result = tuple(float_result(game, part) for part in self._call(work, game))
        return result if game.is_tuple else result[0]


class _GridError(ValueError, TypeError, AssertionError):
    """A window or stride that does not fit its input (Captum raises AssertionError)."""


def _scalar_window(name: str, value: Any, index: int) -> tuple[int]:
    if value in ((), None, 1, (1,)):
        return (1,)
    raise _GridError(f"{name}[{index}] must be () for an input without feature dimensions, got {value!r}")


def _beside(
    game: Game, index: int, model: Callable[[torch.Tensor], torch.Tensor]
) -> Callable[..., torch.Tensor]:
    """The forward of input ``index`` alone: its rows ``[k * B, *F]`` with the other inputs (and
    the extra arguments) repeated beside them, whole copies of the batch per model batch."""
    packed = game.packed
    if len(packed.shapes) == 1:
        return lambda rows: model(rows.reshape(rows.shape[0], -1))

    def run(rows: torch.Tensor) -> torch.Tensor:
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
        return model(torch.cat(parts, dim=1))

    return run


def _per_input(name: str, value: Any, count: int, *, allow_shared: bool = True) -> list[Any]:
    """A Captum argument for a tuple of ``count`` inputs: a tuple with one entry per input, or
    (``allow_shared``) one value (None, a number) for all of them."""
    if isinstance(value, tuple) and len(value) == count:
        return list(value)
    if allow_shared and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))):
        return [value] * count
    raise _GridError(
        f"{name} must be a tuple with one entry per input ({count})"
        + (", or one number for all" if allow_shared else "")
        + f", got {value!r}"
    )


class FeatureAblation(GroupAttribution):
    """Captum's ``FeatureAblation(forward_func)`` on ``fastxai.feature_ablation``: same numbers,
    in the output's dtype (float32 with ``use_weights``)."""

    progress_name = "Feature Ablation"
    supports_future = True

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)
        self.use_weights = False

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> Any:
        if kwargs:
            raise NotImplementedError(f"FeatureAblation.attribute: {sorted(kwargs)} not supported")
        game, flat = self._groups(
            feature_ablation, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress,
        )  # fmt: skip
        values = flat.float() if self.use_weights else output_dtype(game.output, flat)
        return game.packed.format(values) if game.per_example else format_rows(game, values)


class ShapleyValueSampling(GroupAttribution):
    """Captum's ``ShapleyValueSampling(forward_func)`` on ``fastxai.shapley_value_sampling``;
    ``target=None`` on several outputs per example gives ``[*output_shape, *F]``, as Captum."""

    progress_name = "Shapley Value Sampling"
    supports_future = True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

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
        game, flat = self._groups(
            shapley_value_sampling, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, n_samples=n_samples, seed=seed,
        )  # fmt: skip
        values = float_result(game, flat)
        if game.per_example:
            return game.packed.format(values)
        return format_rows(game, values, tuple(game.output.shape) or (1,))


class KernelShap(GroupAttribution, LimeBase):
    """Captum's ``KernelShap(forward_func)`` on ``fastxai.kernel_shap`` (exact efficiency). A
    ``LimeBase`` as in Captum (``isinstance``, properties), with its own ``attribute``."""

    perturb_interpretable_space = True
    from_interp_rep_transform = to_interp_rep_transform = None  # samples are mapped in kernel_shap

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        PerturbationAttribution.__init__(self, forward_func)

    progress_name = "Kernel Shap"

    def attribute(  # type: ignore[override]  # Captum's KernelShap has its own arguments too
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
        game, flat = self._groups(
            kernel_shap, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, return_input_shape=return_input_shape,
            n_samples=n_samples, seed=seed,
        )  # fmt: skip
        return self._one_model(game, flat, return_input_shape)


def __getattr__(name: str) -> Any:
    # Lime lives in its own module (it imports GroupAttribution from the games module, as these do)
    if name == "Lime":
        from fastxai.compat._captum_lime import Lime

        return Lime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FeatureAblation", "KernelShap", "Lime", "Occlusion", "ShapleyValueSampling"]  # noqa: F822
