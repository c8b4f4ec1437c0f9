"""Captum's ``DeepLift`` and ``DeepLiftShap`` on ``fastxai.deeplift`` / ``fastxai.deeplift_shap``.

Differences from Captum, on purpose: every nonlinearity is rescaled, also functional calls
(``torch.relu``, ``F.relu``) and modules used several times (Captum leaves functional ones
with their gradient and raises ``RuntimeError`` on a reused module); softmax and overlapping
max-pool windows follow exact rules (see ``fastxai.attribution._rescale``); ``DeepLiftShap``
also takes a single baseline; ``attribute_future`` returns a completed future (Captum raises
``NotImplementedError``); ``target=None`` on a [B, C] output is the predicted class.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastxai import _model
from fastxai.attribution.deeplift import deeplift, deeplift_shap
from fastxai.compat._captum_attribution import GradientAttribution
from fastxai.compat._captum_inputs import PackedInputs, chunk_rows
from fastxai.compat.captum import baseline_distribution

Forward = Callable[[torch.Tensor], torch.Tensor]


class BaselineDistributionError(ValueError, TypeError, AssertionError):
    """DeepLiftShap's baselines are not a distribution of tensors. Also an ``AssertionError``,
    which is what Captum raises there (code written against Captum catches it unchanged)."""


def _target_form(packed: PackedInputs, probe: Forward, forward: Forward, target: Any) -> tuple[Forward, Any]:
    """Captum's target tuples (an index into an output with more than two dimensions, one for
    all examples or a list with one per example) as a class index of the flattened output;
    ``probe`` (a forward of its own) runs one example to read the output's shape."""
    per_example = isinstance(target, list) and len(target) > 0 and all(isinstance(t, tuple) for t in target)
    if not isinstance(target, tuple) and not per_example:

        def one_score(rows: torch.Tensor) -> torch.Tensor:
            # Captum reads an output [N, 1, ..., 1] as one score per example.
            output = forward(rows)
            if output.dim() > 2 and output[0].numel() == 1:
                return output.reshape(rows.shape[0], 1)
            return output

        return one_score, target
    indices = target if per_example else [target]
    if per_example and len(indices) != packed.batch:
        raise ValueError(f"target must have one tuple per example ({packed.batch}), got {len(indices)}")
    with torch.no_grad():
        shape = tuple(probe(packed.flat[:1]).shape[1:])
    flat = []
    for index in indices:
        if len(index) != len(shape) or not all(
            isinstance(i, int) and 0 <= i < n for i, n in zip(index, shape, strict=True)
        ):
            raise ValueError(f"target {index} does not index the model's output of shape (batch, *{shape})")
        position = 0
        for i, n in zip(index, shape, strict=True):
            position = position * n + i
        flat.append(position)

    def flattened(rows: torch.Tensor) -> torch.Tensor:
        return forward(rows).reshape(rows.shape[0], -1)

    return flattened, (flat if per_example else flat[0])


def _zeros(packed: PackedInputs) -> Any:
    return (0.0,) * len(packed.sizes) if packed.is_tuple else 0.0


def _custom(
    function: Callable[..., Any], multipliers: Any, inputs: Any, baselines: Any
) -> tuple[torch.Tensor, ...]:
    """Captum's ``custom_attribution_func(multipliers[, inputs[, baselines]])``, tuples in and out."""
    if not callable(function):
        raise TypeError(f"custom_attribution_func must be callable, got {type(function).__name__}")
    count = len(inspect.signature(function).parameters)
    if not 1 <= count <= 3:
        raise ValueError(f"custom_attribution_func must take 1 to 3 arguments, takes {count}")
    result = function(*(multipliers, inputs, baselines)[:count])
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


class DeepLift(GradientAttribution):
    """Captum's ``DeepLift`` (Rescale rule): ``attribute`` returns ``m * (x - x')`` (or the
    multipliers ``m`` with ``multiply_by_inputs=False``, or ``custom_attribution_func(m, x, x')``)."""

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True, eps: float = 1e-10) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__(model)
        self.model = model
        self.eps = eps
        self._multiply_by_inputs = multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def _forward(
        self, packed: PackedInputs, additional_forward_args: Any, target: Any
    ) -> tuple[Forward, Any, int | None]:
        """The model on flat rows (a flattened output for a target tuple), the target, and
        ``chunk_size`` in model rows (whole copies of the batch where extra arguments need it)."""
        packed_forward = packed.forward(self.model, additional_forward_args)
        probe = packed.forward(self.model, additional_forward_args)
        forward, target = _target_form(packed, probe, packed_forward, target)
        # no extra argument with one row per example: equal baselines give equal rows
        forward._fastxai_rows_independent = not packed_forward.has_per_example_args  # type: ignore[attr-defined]
        pairs = chunk_rows(None, packed.flat, whole_batches=packed_forward.has_per_example_args)
        return forward, target, None if pairs is None else 2 * pairs

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        packed = PackedInputs(inputs)
        reference = packed.pack(_zeros(packed) if baselines is None else baselines, name="baselines")
        if reference.shape[0] not in (1, packed.batch):
            raise ValueError(f"baselines must have 1 or {packed.batch} rows, got {reference.shape[0]}")
        reference = reference.expand(packed.batch, -1)
        forward, flat_target, chunk = self._forward(packed, additional_forward_args, target)
        multiply = self._multiply_by_inputs and custom_attribution_func is None
        result = self._run(
            lambda: deeplift(
                forward,
                packed.flat,
                flat_target,
                reference,
                multiply_by_inputs=multiply,
                chunk_size=chunk,
                eps=self.eps,
            )
        )
        attributions = packed.format(result)
        if custom_attribution_func is not None:
            parts = _custom(
                custom_attribution_func,
                packed.unpack(result),
                packed.unpack(packed.flat),
                packed.unpack(reference),
            )
            attributions = parts if packed.is_tuple else parts[0]
        if not return_convergence_delta:
            return attributions
        baselines_form = packed.format(reference) if baselines is not None else 0.0
        delta = self.compute_convergence_delta(
            attributions, baselines_form, inputs, target, additional_forward_args
        )
        return attributions, delta

    def compute_convergence_delta(
        self,
        attributions: Any,
        start_point: Any,
        end_point: Any,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """Captum's ``compute_convergence_delta``: ``sum(attributions) - (f(end) - f(start))`` per example."""
        packed = PackedInputs(end_point, name="end_point")
        start = packed.pack(
            _zeros(packed) if start_point is None else start_point, name="start_point"
        ).expand(packed.batch, -1)
        sums = PackedInputs(attributions, name="attributions")
        if sums.features != packed.features or sums.batch != packed.batch:
            raise ValueError("attributions must be shaped like end_point")
        forward, flat_target, _ = self._forward(packed, additional_forward_args, target)

        def scores() -> torch.Tensor:
            with torch.no_grad():
                output = _model.logits(forward, torch.cat([packed.flat, start]))
            target_t = _model.check_target(flat_target, packed.batch, packed.device)
            if target_t is None:
                target_t = output[: packed.batch].argmax(1)
            return output.gather(1, target_t.repeat(2).view(-1, 1)).squeeze(1)

        both = self._run(scores)
        total = sum(part.reshape(packed.batch, -1).sum(1) for part in sums.unpack(sums.flat))
        return total - (both[: packed.batch] - both[packed.batch :])


class DeepLiftShap(DeepLift):
    """Captum's ``DeepLiftShap``: DeepLIFT against each baseline of a distribution ``[K, *F]``
    (tensors, a tuple of them, or a callable returning them), averaged over the baselines."""

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True) -> None:
        super().__init__(model, multiply_by_inputs=multiply_by_inputs)

    def attribute(  # type: ignore[override]
        self,
        inputs: Any,
        baselines: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        custom_attribution_func: Callable[..., Any] | None = None,
    ) -> Any:
        packed = PackedInputs(inputs)
        drawn = baseline_distribution(baselines, inputs)
        for index, part in enumerate(drawn if isinstance(drawn, tuple) else (drawn,)):
            if not isinstance(part, torch.Tensor):
                raise BaselineDistributionError(
                    f"baselines[{index}] must be a tensor [K, *F] of baselines to average over, got "
                    f"{type(part).__name__} (use DeepLift for a single or scalar baseline)"
                )
        distribution = packed.pack(drawn, name="baselines", allow_scalar=False)
        forward, flat_target, chunk = self._forward(packed, additional_forward_args, target)
        batch, count = packed.batch, distribution.shape[0]
        if custom_attribution_func is None:
            result, delta = self._run(
                lambda: deeplift_shap(
                    forward,
                    packed.flat,
                    flat_target,
                    distribution,
                    multiply_by_inputs=self._multiply_by_inputs,
                    return_convergence_delta=True,
                    chunk_size=chunk,
                    eps=self.eps,
                )
            )
            attributions = packed.format(result)
            return (attributions, delta) if return_convergence_delta else attributions
        # Custom: the per-pair multipliers, baseline-major as the model runs them (whole copies
        # of the batch), handed to the function input-major as Captum does, then averaged.
        pairs_x = packed.flat.repeat(count, 1)
        pairs_ref = distribution.repeat_interleave(batch, dim=0)
        target_t = _model.check_target(flat_target, batch, packed.device)
        pair_target = None if target_t is None else target_t.repeat(count)
        multipliers = self._run(
            lambda: deeplift(
                forward,
                pairs_x,
                pair_target,
                pairs_ref,
                multiply_by_inputs=False,
                chunk_size=chunk,
                eps=self.eps,
            )
        )

        def input_major(flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return packed.unpack(flat.view(count, batch, -1).transpose(0, 1).reshape(batch * count, -1))

        parts = _custom(
            custom_attribution_func, input_major(multipliers), input_major(pairs_x), input_major(pairs_ref)
        )
        per_pair = torch.cat([part.reshape(batch * count, -1) for part in parts], dim=1)
        result = per_pair.view(batch, count, -1).mean(1)
        attributions = packed.format(result)
        if not return_convergence_delta:
            return attributions
        flat_sums = per_pair.sum(1)
        with torch.no_grad():
            both = self._run(lambda: _model.logits(forward, torch.cat([pairs_x, pairs_ref])))
        pair_target_t = pair_target if pair_target is not None else both[: batch * count].argmax(1)
        scores = both.gather(1, pair_target_t.repeat(2).view(-1, 1)).squeeze(1)
        difference = (scores[: batch * count] - scores[batch * count :]).view(count, batch).t().reshape(-1)
        return attributions, flat_sums - difference


__all__ = ["DeepLift", "DeepLiftShap"]
