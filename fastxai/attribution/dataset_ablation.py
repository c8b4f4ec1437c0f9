"""Feature ablation over a whole data set: how much a metric of the data set changes when one
group of input features is replaced by a baseline in every example (Captum's
``DataLoaderAttribution(FeatureAblation)``; accuracy drop per feature group, for instance).

    a[..., m] = metric(D) - metric(D with group m ablated in every example)
    metric(D) = to_metric(reduce(... reduce(reduce(None, f(d_1), d_1), f(d_2), d_2) ..., f(d_n), d_n))

over the batches ``d_1 .. d_n`` of ``data``: ``reduce`` folds each batch's model output into a
state, ``to_metric`` turns the final state into the tensor attributed; without them the metric
is every output concatenated (``a`` is then feature ablation of every example and output).

How it is fast, with the same calls to ``reduce`` and ``to_metric`` as Captum:

- one traversal of the data scores the unperturbed data and many ablated copies at once (Captum
  traverses it once per ``perturbations_per_pass`` copies, one by default: ``M + 2`` times);
- each model call holds several whole ablated copies of a batch (copy-major, ``k * B`` rows,
  up to the automatic ``chunk_size``), built by two PyTorch ops from the batch itself
  (``_perturbation.ablate``: exact, the kept features bit for bit); Captum calls the model once
  per batch and copy. A forward whose output does not have one row per example (an aggregate
  over the batch) is called copy by copy, as it must be.

Memory: one batch at a time, never the data set, plus the reduced states of the copies of a
pass. The automatic pass holds every group unless the states would pass ``STATE_BYTES``,
estimated from the unperturbed state after the first batch times ``len(data)`` (a state that
grows with the batches, like the default concatenation); ``perturbations_per_pass=n`` bounds
them to ``n`` and takes Captum's schedule of traversals. Data of unknown length (an iterable
dataset): pass ``perturbations_per_pass`` to bound them yourself. One traversal also means a
one-shot iterator (a generator) works when every group fits in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from fastxai import _model, _precision, _scheduling
from fastxai.attribution import _perturbation
from fastxai.attribution._dataset_layout import (
    ATTRIBUTED,
    FORWARD_ONLY,
    Layout,
    check_roles,
    layout,
)

STATE_BYTES = 1 << 30
"""The automatic pass keeps its copies' reduced states under this many bytes (estimated)."""

Reduce = Callable[[Any, Any, tuple[Any, ...]], Any]


def state_bytes(state: object, depth: int = 0) -> int:
    """Bytes of the tensors in a reduced state (nested in dicts, lists, tuples, sets)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if depth >= 4 or not isinstance(state, (dict, list, tuple, set)):
        return 0
    items = state.values() if isinstance(state, dict) else state
    return sum(state_bytes(item, depth + 1) for item in items)


def check_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")


def open_data(data: object) -> tuple[Any, Iterator[Any]]:
    """The first batch of ``data`` and the iterator that read it."""
    if isinstance(data, torch.Tensor):
        raise TypeError(
            "data must be an iterable of batches (a DataLoader), got a tensor: wrap it, e.g. "
            "DataLoader(TensorDataset(x), batch_size=64)"
        )
    try:
        iterator = iter(data)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"data must be an iterable of batches (a DataLoader), got {type(data).__name__}"
        ) from None
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError("data yields no batches") from None
    return first, iterator


def _repeat(value: Any, count: int, rows: int) -> Any:
    """A forward-only element for ``count`` copies of a batch: per-example tensors repeated."""
    if count > 1 and isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows:
        return value.repeat(count, *(1,) * (value.dim() - 1))
    return value


class _Scorer:
    """Scores copies of a batch (copy 0: the batch as given, copy g + 1: group g ablated) and
    folds each copy's output into its state."""

    def __init__(
        self,
        forward: Callable[..., Any],
        layout: Layout,
        reduce: Reduce | None,
        chunk: int,
        first: tuple[Any, ...],
        progress: Callable[[int], None] | None,
    ) -> None:
        self.forward, self.layout, self.reduce, self.chunk = forward, layout, reduce, chunk
        self.progress = progress
        # stacking copies needs every forward-only element to be a per-example tensor or a constant
        self.stack = all(
            isinstance(first[i], (torch.Tensor, int, float, str, bool, type(None)))
            for i, role in enumerate(layout.roles)
            if role == FORWARD_ONLY
        )
        self.checked = False

    def _arguments(
        self, elements: tuple[Any, ...], parts: list[torch.Tensor] | None, copy: int, count: int, rows: int
    ) -> list[Any]:
        args, k = [], 0
        # one copy alone: the elements its group leaves alone go to the model as given (Captum's)
        touched = self.layout.touches[copy - 1] if parts is not None and count == 1 else None
        for position, role in enumerate(self.layout.roles):
            if role == ATTRIBUTED:
                exact = parts is None or (touched is not None and k not in touched)
                args.append(elements[position] if exact else parts[k])  # type: ignore[index]
                k += 1
            elif role == FORWARD_ONLY:
                args.append(_repeat(elements[position], count, rows))
        return args

    def _outputs(self, args: list[Any], count: int, rows: int) -> list[Any] | None:
        """The model's output for ``count`` copies, one per copy; None when it has no row per
        example (then the copies must be scored one by one)."""
        output = self.forward(*args)
        if not self.checked:  # the first call: one copy of the batch as given
            self.checked = True
            if not (isinstance(output, torch.Tensor) and output.dim() >= 1 and output.shape[0] == rows):
                self.stack = False
        if count == 1:
            return [output]
        if isinstance(output, torch.Tensor) and output.dim() >= 1 and output.shape[0] == count * rows:
            return list(output.split(rows))
        return None

    def _inputs(
        self, elements: tuple[Any, ...], parts: list[torch.Tensor] | None, copy: int, index: int, rows: int
    ) -> tuple[Any, ...]:
        """What ``reduce`` sees for one copy: every element, the ablated ones as ablated."""
        if parts is None or copy == 0:
            return elements
        result = list(elements)
        for k in self.layout.touches[copy - 1]:
            result[self.layout.attributed[k]] = parts[k][index * rows : (index + 1) * rows]
        return tuple(result)

    def _fold(self, state: Any, output: Any, inputs: tuple[Any, ...]) -> Any:
        if self.reduce is not None:
            return self.reduce(state, output, inputs)
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"forward_func returned a {type(output).__name__}; without reduce the outputs are "
                "concatenated and must be tensors"
            )
        state = [] if state is None else state
        state.append(output.reshape(1) if output.dim() == 0 else output)
        return state

    def score(
        self, elements: tuple[Any, ...], packed: torch.Tensor, start: int, stop: int, states: dict[int, Any]
    ) -> None:
        """Copies ``start .. stop - 1`` of one batch, ``packed`` [B, N]: outputs folded into ``states``."""
        rows = packed.shape[0]
        perturb = None
        copy = start
        while copy < stop:
            count = min(stop - copy, max(1, self.chunk // rows)) if self.stack else 1
            parts = None
            if copy > 0 or count > 1:
                if perturb is None:
                    base = self.layout.baseline.to(packed.device)
                    perturb = _perturbation.ablate(packed, base, self.layout.dense.to(packed.device))
                parts = self.layout.unpack(perturb(copy, copy + count, 0, rows).view(count * rows, -1))
            try:
                outputs = self._outputs(self._arguments(elements, parts, copy, count, rows), count, rows)
            except torch.cuda.OutOfMemoryError:
                if count == 1:
                    raise
                self.chunk = count // 2 * rows  # nothing of these copies was folded yet: redo them
                torch.cuda.empty_cache()
                continue
            if outputs is None:  # no row per example: an aggregate over the batch, copy by copy
                self.stack = False
                continue
            for index, output in enumerate(outputs):
                inputs = self._inputs(elements, parts, copy + index, index, rows)
                states[copy + index] = self._fold(states.get(copy + index), output, inputs)
            if self.progress is not None:
                self.progress(count)
            copy += count


class DatasetAblation:
    """One run over ``data``: its layout, first batch and the iterator that read it (see the
    module docstring for the passes)."""

    def __init__(
        self, forward: Callable[..., Any], data: Any, first: Any, iterator: Iterator[Any], layout: Layout
    ) -> None:
        self.forward, self.data, self.first, self.layout = forward, data, first, layout
        self.iterator: Iterator[Any] | None = iterator

    def attribute(
        self,
        reduce: Reduce | None,
        to_metric: Callable[[Any], Any] | None,
        per_pass: int | None,
        chunk_size: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """``metric(D) - metric(D with group m ablated)`` [*S, n_ids] (S: the metric's shape; ids
        absent from the mask: 0). Run under ``torch.no_grad``."""
        layout, groups = self.layout, self.layout.groups
        elements, packed = layout.pack(self.first, 0)
        chunk = _scheduling.auto_chunk_size(chunk_size, packed, forward_only=True)
        scorer = _Scorer(self.forward, layout, reduce, chunk, elements, progress)
        metrics: dict[int, torch.Tensor] = {}
        iterator, self.iterator = self.iterator, None
        if per_pass is None:  # one pass from the first batch on: the data as given with the groups
            states: dict[int, Any] = {}
            scorer.score(elements, packed, 0, 1, states)
            per_pass = self._auto_per_pass(states[0])
            scorer.score(elements, packed, 1, per_pass + 1, states)
            for index, batch in enumerate(iterator, start=1):  # type: ignore[arg-type]
                scorer.score(*layout.pack(batch, index), 0, per_pass + 1, states)
            self._finish(states, range(per_pass + 1), reduce, to_metric, metrics)
            done = per_pass
        else:  # Captum's schedule: the data as given in a pass of its own, then the groups
            del iterator
            self._pass(scorer, 0, 1, reduce, to_metric, metrics)
            done = 0
        for start in range(done, groups, per_pass):
            self._pass(scorer, start + 1, min(groups, start + per_pass) + 1, reduce, to_metric, metrics)
        return self._values(metrics)

    def _auto_per_pass(self, state: Any) -> int:
        try:
            batches = len(self.data)
        except TypeError:
            batches = 1
        need = state_bytes(state) * max(1, batches)
        groups = self.layout.groups
        return groups if need == 0 else max(1, min(groups, STATE_BYTES // need))

    def _pass(
        self,
        scorer: _Scorer,
        start: int,
        stop: int,
        reduce: Reduce | None,
        to_metric: Callable[[Any], Any] | None,
        metrics: dict[int, torch.Tensor],
    ) -> None:
        states: dict[int, Any] = {}
        for index, batch in enumerate(self.data):
            scorer.score(*self.layout.pack(batch, index), start, stop, states)
        self._finish(states, range(start, stop), reduce, to_metric, metrics)

    @staticmethod
    def _finish(
        states: dict[int, Any],
        copies: range,
        reduce: Reduce | None,
        to_metric: Callable[[Any], Any] | None,
        metrics: dict[int, torch.Tensor],
    ) -> None:
        for copy in copies:
            if copy not in states:
                raise ValueError(
                    "data yielded no batches on a later pass over it: it must be re-iterable (a "
                    "DataLoader, a list), not a one-shot iterator, when the groups take several passes"
                )
            state = torch.cat(states.pop(copy)) if reduce is None else states.pop(copy)
            metric = to_metric(state) if to_metric is not None else state
            if not isinstance(metric, torch.Tensor):
                source = "to_metric" if to_metric is not None else "reduce"
                raise TypeError(f"{source} must give a tensor to attribute, got {type(metric).__name__}")
            metrics[copy] = metric

    def _values(self, metrics: dict[int, torch.Tensor]) -> torch.Tensor:
        base = metrics[0]
        ids = self.layout.ids
        for group in range(ids.numel()):
            if metrics[group + 1].numel() != base.numel():
                raise ValueError(
                    f"the metric has shape {tuple(metrics[group + 1].shape)} with group {int(ids[group])} "
                    f"ablated but {tuple(base.shape)} for the data as given: it must not change shape"
                )
        ablated = torch.stack(
            [metrics[group + 1].reshape(-1).to(base.device) for group in range(ids.numel())]
        )
        values = torch.zeros(base.numel(), self.layout.n_ids, dtype=base.dtype, device=base.device)
        values[:, ids.to(base.device)] = (base.reshape(1, -1) - ablated).T.to(base.dtype)
        return values.view(*base.shape, self.layout.n_ids)


def _widened(output: Any) -> Any:
    """A half-precision output (the model under autocast) in float32, a tuple's or a list's
    tensors too: ``reduce`` folds float32 values, as without ``dtype``."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.dtype in _precision.MODEL_DTYPES else output
    if type(output) in (tuple, list):
        return type(output)(_widened(value) for value in output)
    return output


def _half_forward(model: Callable[..., Any], dtype: torch.dtype, device_type: str) -> Callable[..., Any]:
    """``model`` under autocast in ``dtype`` (``_precision.autocast_model``), its outputs ``_widened``."""
    scored = _precision.autocast_model(model, dtype, device_type)

    def run(*args: Any) -> Any:
        return _widened(scored(*args))

    return run


def dataset_feature_ablation(
    model: Callable[..., Any],
    data: Iterable[Any],
    *,
    input_roles: tuple[int, ...] | list[int] | None = None,
    feature_mask: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    baselines: float | torch.Tensor | tuple[float | torch.Tensor, ...] | None = None,
    reduce: Reduce | None = None,
    to_metric: Callable[[Any], torch.Tensor] | None = None,
    perturbations_per_pass: int | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Feature ablation of a data-set metric: ``a[..., m] = metric(D) - metric(D, group m ablated)``.

    ``data``: an iterable of batches (a ``DataLoader``), each a tensor or a tuple / list of
    elements; ``input_roles`` gives each element's role (0 attributed, 1 passed to the model
    only, 2 not passed; default: all 0); the model is called as ``model(*elements)`` (roles 0
    and 1, in order). ``reduce(state, output, batch_elements) -> state`` (first ``state``:
    None) and ``to_metric(state) -> tensor`` make the metric; default: the outputs
    concatenated. ``feature_mask``: group ids >= 0, one integer tensor per attributed element
    broadcasting to ``(1, *F_k)``, a group may span elements (None: every feature its own
    group, numbered across elements); ``baselines``: None (0), a number, or one number / tensor
    broadcasting to ``(1, *F_k)`` per element. ``perturbations_per_pass``: None (automatic,
    usually one traversal of the data) or at most that many groups per traversal; ``chunk_size``:
    rows per model call (whole copies of a batch). The model runs in eval mode, under no_grad.
    ``dtype=torch.bfloat16`` (or ``torch.float16``): every model call runs under autocast in
    that dtype (``fastxai._precision``), and its half-precision outputs (tensors, or the tensors
    of a tuple or list) reach ``reduce`` in float32.

    Returns [*S, M] in the metric's dtype, S the metric's shape, M = max id + 1 (ids absent
    from the mask: 0). With every feature its own group, ``a[..., mask]`` is per feature.

    >>> correct = lambda n, out, batch: (0 if n is None else n) + (out.argmax(1) == batch[1]).sum()
    >>> drop = fastxai.dataset_feature_ablation(model, loader, input_roles=(0, 2), reduce=correct)  # [64]
    """
    _model.check_model(model)
    roles = check_roles(input_roles)
    check_callable("reduce", reduce)
    check_callable("to_metric", to_metric)
    per_pass = perturbations_per_pass
    if per_pass is not None:
        per_pass = _perturbation.check_count("perturbations_per_pass", per_pass, 1)
    chunk = _scheduling.check_chunk_size(chunk_size)
    first, iterator = open_data(data)
    elements = first if isinstance(first, (tuple, list)) else (first,)
    device = next((e.device for e in elements if isinstance(e, torch.Tensor)), torch.device("cpu"))
    model_dtype = _precision.check_dtype(dtype, device)  # before the model, after reading a batch
    forward = model if model_dtype is None else _half_forward(model, model_dtype, device.type)
    run = DatasetAblation(forward, data, first, iterator, layout(first, roles, feature_mask, baselines))
    with _model.inference_state(model), torch.no_grad():
        return run.attribute(reduce, to_metric, per_pass, chunk)


__all__ = ["STATE_BYTES", "DatasetAblation", "dataset_feature_ablation", "open_data"]
