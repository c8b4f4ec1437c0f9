"""Captum's ``DataLoaderAttribution`` (and ``InputRole``) on ``fastxai.dataset_feature_ablation``:
feature ablation of a metric over a whole ``DataLoader``, same arguments, same numbers, same
calls to ``reduce`` and ``to_metric``. Swap the import, keep the code::

    from fastxai.compat.captum import DataLoaderAttribution, FeatureAblation
    attr = DataLoaderAttribution(FeatureAblation(model)).attribute(loader, input_roles=(0, 2),
                                                                   reduce=count_correct)

What differs from Captum, on purpose:

- ``perturbations_per_pass`` changes memory and traversals, never results. Captum's default 1
  means fastxai's automatic schedule: one traversal of the data for the unperturbed data and
  every group together (fewer when their reduced states would pass
  ``dataset_ablation.STATE_BYTES``), Captum traverses it ``M + 2`` times. A larger value keeps
  Captum's schedule (a first batch read, one unperturbed pass, ``ceil(M / n)`` passes of at
  most ``n`` groups). Either way a model call holds several ablated copies of a batch (a
  forward that aggregates the batch is called copy by copy).
- A model call of several copies gets every attributed element in its ablated dtype (Captum
  passes an element a group leaves alone as given); floating inputs keep their dtype (Captum
  makes float16 / bfloat16 copies float32), integer ones become the default float dtype as in
  Captum.
- Batches that are one tensor work (Captum's loop takes their rows for elements); ``reduce``
  gets a tuple of one element.
- ``feature_mask`` and ``baselines`` entries may be any shape that broadcasts to ``(1, *F)``
  (Captum wants a first dim of 1); one number (or 0-d tensor) applies to every attributed
  element; a metric of integers minus a float ablated metric is cast (Captum raises).
- ``DataLoaderAttribution`` takes fastxai's ``FeatureAblation`` and Captum's own (it only reads
  ``forward_func`` and ``use_weights``), nothing else: a subclass raises as in Captum.
- Bad arguments raise ``CaptumArgumentError`` / ``CaptumTypeError`` (``ValueError`` /
  ``TypeError`` that are also ``AssertionError``, Captum's type) naming the argument, before
  any model call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai.attribution._dataset_layout import Layout, check_roles, layout
from fastxai.attribution.dataset_ablation import DatasetAblation, check_callable, open_data
from fastxai.compat._captum_games import Progress
from fastxai.compat._captum_perturbation import FeatureAblation
from fastxai.compat._captum_targets import CaptumArgumentError, CaptumTypeError, check_int_at_least
from fastxai.compat.captum import Attribution


class InputRole:
    """Captum's roles of a batch's elements: attributed, passed to the model only, not passed."""

    need_attr = 0
    need_forward = 1
    no_forward = 2


def _is_feature_ablation(method: object) -> bool:
    kind = type(method)
    if kind is FeatureAblation:
        return True
    return kind.__name__ == "FeatureAblation" and kind.__module__ == "captum.attr._core.feature_ablation"


def _checked(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` with fastxai's argument errors raised as Captum's."""
    try:
        return function(*args)
    except (CaptumArgumentError, CaptumTypeError):
        raise
    except ValueError as error:
        raise CaptumArgumentError(str(error)) from None
    except TypeError as error:
        raise CaptumTypeError(str(error)) from None


class DataLoaderAttribution(Attribution):
    """Captum's ``DataLoaderAttribution(FeatureAblation(forward_func))``: the drop of a metric
    of the whole data when each feature group is ablated in every example (see the module
    docstring and ``fastxai.dataset_feature_ablation``)."""

    def __init__(self, attr_method: Any) -> None:
        if not _is_feature_ablation(attr_method):
            raise CaptumTypeError(
                f"attr_method: DataloaderAttribution does not support {type(attr_method)}, only "
                "FeatureAblation (fastxai's or Captum's)"
            )
        super().__init__(attr_method.forward_func)
        self.attr_method = attr_method

    def attribute(
        self,
        dataloader: Any,
        input_roles: tuple[int, ...] | None = None,
        baselines: Any = None,
        feature_mask: Any = None,
        reduce: Callable[..., Any] | None = None,
        to_metric: Callable[[Any], torch.Tensor] | None = None,
        perturbations_per_pass: int = 1,
        show_progress: bool = False,
        return_input_shape: bool = True,
    ) -> Any:
        """Attributions ``[K, *F_k]`` per attributed element (a tensor for one-tensor batches, a
        tuple otherwise), or ``[K, M]`` with ``return_input_shape=False``; K: the metric's
        number of elements, M: the largest group id + 1."""
        per_pass = check_int_at_least(perturbations_per_pass, "perturbations_per_pass", 1)
        roles = _checked(check_roles, input_roles)
        _checked(check_callable, "reduce", reduce)
        _checked(check_callable, "to_metric", to_metric)
        first, iterator = open_data(dataloader)
        shape: Layout = _checked(layout, first, roles, feature_mask, baselines)
        run = DatasetAblation(self.forward_func, dataloader, first, iterator, shape)
        progress = Progress(show_progress, "DataLoader")

        def work() -> torch.Tensor:
            with torch.no_grad():
                chosen = None if per_pass == 1 else per_pass
                return run.attribute(reduce, to_metric, chosen, None, progress.update)

        try:
            values = self._run(work)
        finally:
            progress.close()
        if getattr(self.attr_method, "use_weights", False):
            values = values.float()  # Captum divides by the count of ablations, 1 each
        flat = values.reshape(-1, shape.n_ids)
        if not return_input_shape:
            return flat
        parts = shape.to_input_shapes(flat)
        return parts if shape.is_tuple else parts[0]


__all__ = ["DataLoaderAttribution", "InputRole"]
