"""Captum's streaming summaries of attributions: ``Summarizer``, ``SummarizerSingleTensor`` and
``ClassSummarizer``, over the statistics of ``fastxai.compat._captum_stats``.

    from fastxai.compat import captum as fc
    summarizer = fc.ClassSummarizer(fc.CommonStats())
    for x, y in loader:
        summarizer.update(fc.Saliency(model).attribute(x, target=y), labels=y)
    summarizer.summary[0]["mean"], summarizer.class_summaries[3][0]["sample_std_dev"]

Each ``update`` of a ``Summarizer`` is one observation (a tensor, a number, or a tuple of them
summarised one by one); ``summary`` is ``{stat.name: value}`` (a list of dicts, one per element,
for tuple observations), None before the first update. ``ClassSummarizer.update(x, labels)``
takes a batch: row ``i`` of every tensor of ``x`` is one observation of class ``labels[i]`` (one
label for the whole batch when ``labels`` is a single value or has one entry) and of the overall
summary; both are then lists of dicts, as in Captum. Without labels it is a ``Summarizer``.

Differences from Captum, on purpose:

- ``ClassSummarizer`` updates each class with all its rows of a batch at once (and the overall
  summary with the whole batch): results agree with Captum's row-by-row updates to rounding.
- Labels from a tensor are keyed by their Python values (``class_summaries[3]``); Captum keys
  them by tensor objects, so every row became a class of its own.
- Observations are detached (no autograd graph is kept across updates) and copied, never aliased.
- An observation whose shape differs from the first one's, a tuple of another length, two
  statistics with the same name, or an argument of the wrong type raise an error naming the
  argument (a ``ValueError`` / ``TypeError`` that is also Captum's ``AssertionError``).
- Statistics that are not Captum's (a ``Stat`` subclass) are accepted; Captum's ``Summarizer``
  refuses them. The summary lists the statistics in the order given.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from fastxai.compat._captum_stats import Stat, StatValue
from fastxai.compat._captum_targets import CaptumArgumentError, CaptumTypeError

__all__ = ["ClassSummarizer", "Summarizer", "SummarizerSingleTensor"]


def _with_dependencies(stats: Sequence[Stat]) -> list[Stat]:
    """Every statistic once (equal ones merged, the first kept), each after those it requires."""
    ordered: dict[Stat, Stat] = {}

    def visit(stat: Stat) -> None:
        if stat not in ordered:
            for needed in stat.requires():
                visit(needed)
            ordered.setdefault(stat, stat)

    for stat in stats:
        visit(stat)
    return list(ordered)


def _check_stats(stats: object) -> list[Stat]:
    if isinstance(stats, Stat) or not isinstance(stats, (list, tuple)):
        raise CaptumTypeError(f"stats must be a list of Stat objects, got {type(stats).__name__}")
    for stat in stats:
        if not isinstance(stat, Stat):
            raise CaptumTypeError(f"stats must hold only Stat objects, got a {type(stat).__name__}")
    return list(stats)


def _check_names(stats: Sequence[Stat]) -> None:
    seen: dict[str, Stat] = {}
    for stat in stats:
        other = seen.setdefault(stat.name, stat)
        if other is not stat:
            raise CaptumArgumentError(
                f"stats: {type(other).__name__} and {type(stat).__name__} are both named {stat.name!r}; "
                "a summary needs one name per statistic"
            )


class SummarizerSingleTensor:
    """The statistics of one tensor (Captum's ``SummarizerSingleTensor``; use ``Summarizer``).

    ``stats``: the statistics to update (their dependencies are added, and the order fixed, if
    missing); ``summary_stats_indices``: the positions in ``stats`` of those ``summary`` shows.
    """

    def __init__(self, stats: list[Stat], summary_stats_indices: Sequence[int]) -> None:
        given = _check_stats(stats)
        if not isinstance(summary_stats_indices, Sequence) or not all(
            isinstance(i, int) and not isinstance(i, bool) and -len(given) <= i < len(given)
            for i in summary_stats_indices
        ):
            raise CaptumArgumentError(
                f"summary_stats_indices must be positions in stats (0 to {len(given) - 1}), "
                f"got {summary_stats_indices!r}"
            )
        self._stats = _with_dependencies(given)
        self._stat_to_stat = {stat: stat for stat in self._stats}
        shown = (self._stat_to_stat[given[i]] for i in summary_stats_indices)
        self._summary_stats = list({id(stat): stat for stat in shown}.values())
        _check_names(self._summary_stats)
        self._batched = all(stat.batched for stat in self._stats)
        self._shape: torch.Size | None = None
        for stat in self._stats:
            stat._other_stats = self
            stat.init()

    def update(self, x: torch.Tensor) -> None:
        """Adds one observation ``x``."""
        if not isinstance(x, torch.Tensor):
            raise CaptumTypeError(f"x must be a tensor, got {type(x).__name__}")
        self._update_rows(x.detach().unsqueeze(0))

    def _check_shape(self, rows: torch.Tensor) -> None:
        if self._shape is not None and rows.shape[1:] != self._shape:
            raise CaptumArgumentError(
                f"x has shape {tuple(rows.shape[1:])} but the first observation had {tuple(self._shape)}"
            )

    def _update_rows(self, rows: torch.Tensor) -> None:
        self._check_shape(rows)
        self._shape = rows.shape[1:]
        if self._batched:
            for stat in self._stats:
                stat._update_rows(rows)
            return
        for row in rows:  # a statistic that takes one row at a time sees the others row by row
            for stat in self._stats:
                stat.update(row)

    def get(self, stat: Stat) -> Stat | None:
        """This summarizer's statistic equal to ``stat`` (same class and params), or None."""
        return self._stat_to_stat.get(stat)

    @property
    def summary(self) -> dict[str, StatValue | None]:
        return {stat.name: stat.get() for stat in self._summary_stats}


def _observation(value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(value, dtype=torch.float32)
    raise CaptumTypeError(f"x must be a tensor, a number or a tuple of them, got {type(value).__name__}")


class Summarizer:
    """Statistics of a stream of tensors, or of tuples of tensors (Captum's ``Summarizer``).

    >>> summarizer = Summarizer([Mean(), Var(order=1)])
    >>> for attribution in attributions: summarizer.update(attribution)
    >>> summarizer.summary["mean"], summarizer.summary["sample_variance"]   # shape of one update
    """

    def __init__(self, stats: list[Stat]) -> None:
        given = _check_stats(stats)
        self._stats = _with_dependencies(given)
        index = {stat: position for position, stat in enumerate(self._stats)}
        self._summary_stats_indices = list(dict.fromkeys(index[stat] for stat in given))
        _check_names([self._stats[i] for i in self._summary_stats_indices])
        self._summarizers: list[SummarizerSingleTensor] = []
        self._is_inputs_tuple: bool | None = None

    def update(self, x: torch.Tensor | float | tuple[torch.Tensor | float, ...]) -> None:
        """Adds one observation: a tensor or number, or a tuple of them (each summarised apart)."""
        parts = x if isinstance(x, tuple) else (x,)
        rows = tuple(_observation(part).unsqueeze(0) for part in parts)
        self._update_rows(rows, isinstance(x, tuple))

    def _check_rows(self, rows: tuple[torch.Tensor, ...], is_tuple: bool) -> None:
        """Refuses a block that does not continue the stream, before anything is updated."""
        if self._is_inputs_tuple is not None and self._is_inputs_tuple != is_tuple:
            expected = "a tuple" if self._is_inputs_tuple else "a single tensor or number"
            raise CaptumArgumentError(f"x must be {expected}, like the first update")
        if self._summarizers and len(rows) != len(self._summarizers):
            raise CaptumArgumentError(
                f"x has {len(rows)} elements but the first update had {len(self._summarizers)}"
            )
        for summarizer, block in zip(self._summarizers, rows, strict=False):  # none yet: nothing to check
            summarizer._check_shape(block)

    def _update_rows(self, rows: tuple[torch.Tensor, ...], is_tuple: bool) -> None:
        """Adds a block of observations: ``rows[i]`` [k, *F_i] for the i-th input."""
        self._check_rows(rows, is_tuple)
        self._is_inputs_tuple = is_tuple
        if not self._summarizers:
            self._summarizers = [
                SummarizerSingleTensor(copy.deepcopy(self._stats), self._summary_stats_indices) for _ in rows
            ]
        for summarizer, block in zip(self._summarizers, rows, strict=True):
            summarizer._update_rows(block)

    @property
    def summary(self) -> dict[str, StatValue | None] | list[dict[str, StatValue | None]] | None:
        """``{name: value}`` (a list of them, one per element, for tuple updates); None before any."""
        if not self._summarizers:
            return None
        summaries = [summarizer.summary for summarizer in self._summarizers]
        return summaries if self._is_inputs_tuple else summaries[0]


def _row_labels(labels: object, batch: int) -> list[Hashable]:
    """One label per row, or a single one for the whole batch."""
    if isinstance(labels, torch.Tensor):
        if labels.dim() > 1:
            raise CaptumArgumentError(f"labels must be a 1-D tensor, got shape {tuple(labels.shape)}")
        labels = labels.tolist()  # Python values: class 3 of a tensor is class 3 of a list
    if not isinstance(labels, list):
        labels = [labels]
    if len(labels) not in (1, batch):
        raise CaptumArgumentError(
            f"labels has {len(labels)} entries for a batch of {batch}: give one label or one per row"
        )
    for label in labels:
        if not isinstance(label, Hashable):
            raise CaptumTypeError(f"labels must be hashable (dict keys), got a {type(label).__name__}")
    return labels


class ClassSummarizer(Summarizer):
    """A ``Summarizer`` of all observations plus one per class (Captum's ``ClassSummarizer``).

    >>> summarizer = ClassSummarizer(CommonStats())
    >>> summarizer.update(attributions, labels=y)      # [B, *F] and B labels (or one)
    >>> summarizer.class_summaries[3]                  # [{name: value}] for class 3
    """

    def __init__(self, stats: list[Stat]) -> None:
        super().__init__(stats)
        self.summaries: defaultdict[Hashable, Summarizer] = defaultdict(lambda: Summarizer(stats))

    def update(self, x: Any, labels: Any = None) -> None:
        """Adds a batch: row ``i`` of each tensor of ``x`` [B, ...] to class ``labels[i]``.

        ``labels``: a list or 1-D tensor of B labels, or one label (or a one-entry list) for the
        whole batch. Without labels ``x`` is one observation of the overall summary only.
        """
        if labels is None:
            super().update(x)
            return
        parts = x if isinstance(x, tuple) else (x,)
        for part in parts:
            if not isinstance(part, torch.Tensor) or part.dim() == 0:
                raise CaptumTypeError("x must be a tensor [B, ...] or a tuple of them when labels are given")
        batch = parts[0].shape[0]
        if any(part.shape[0] != batch for part in parts):
            raise CaptumArgumentError(
                f"x's tensors must share the batch dimension, got {[part.shape[0] for part in parts]}"
            )
        per_row = _row_labels(labels, batch)
        if batch == 0:
            return
        rows = tuple(part.detach() for part in parts)
        self._check_rows(rows, True)  # every class's stream has the overall one's shapes
        if len(per_row) == 1:
            self.summaries[per_row[0]]._update_rows(rows, True)
        else:
            members: dict[Hashable, list[int]] = {}
            for position, label in enumerate(per_row):
                members.setdefault(label, []).append(position)
            device = rows[0].device
            for label, positions in members.items():
                index = torch.tensor(positions, device=device)
                self.summaries[label]._update_rows(tuple(part.index_select(0, index) for part in rows), True)
        self._update_rows(rows, True)

    @property
    def class_summaries(
        self,
    ) -> dict[Hashable, dict[str, StatValue | None] | list[dict[str, StatValue | None]] | None]:
        """``{label: summary}``: each a list of ``{name: value}``, one per element of ``x``."""
        return {label: summarizer.summary for label, summarizer in self.summaries.items()}
