"""Captum's statistics for ``Summarizer`` / ``ClassSummarizer``
(``fastxai.compat._captum_summarizer``): ``Count``, ``Mean``, ``MSE``, ``Var``, ``StdDev``,
``Min``, ``Max``, ``Sum``, ``CommonStats()`` and their base ``Stat``.

With ``n`` observations ``x_1 .. x_n`` (elementwise): ``mean = sum x_i / n``,
``mse = sum (x_i - mean)^2`` (Welford's running form; a block of rows is merged exactly as
``sum (x_i - mean_before)(x_i - mean_after)``), ``Var(order) = mse / (n - order)`` (order 0: the
population variance, order 1: the sample variance; zero while ``n <= order``),
``StdDev(order) = sqrt(Var(order))``; ``Min`` / ``Max`` / ``Sum`` fold their function over the
observations. Results have Captum's dtypes: ``Mean``, ``MSE``, ``Sum`` that of the input (float64
for integer inputs' ``Mean`` / ``MSE``), ``Var`` and ``StdDev`` float64 once ``n > order`` (zeros
of the mean's dtype before), ``Count`` an int. Half-precision inputs are accumulated in float32.

    summarizer = Summarizer([Mean(), Var(order=1), StdDev(order=1)])   # keys: "mean",
    # "sample_variance", "sample_std_dev"; Var() is "variance", StdDev() "std_dev"

A statistic of one's own subclasses ``Stat`` (``update(x)``, ``get()``, and ``requires()`` /
``init()`` for those it reads); a summarizer updates it after those, row by row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, Union

import torch

from fastxai.compat._captum_targets import check_int_at_least

if TYPE_CHECKING:
    from fastxai.compat._captum_summarizer import SummarizerSingleTensor

__all__ = ["MSE", "CommonStats", "Count", "Max", "Mean", "Min", "Stat", "StatValue", "StdDev", "Sum", "Var"]

StatValue = Union[torch.Tensor, int, float]  # noqa: UP007 (a runtime alias, as Captum's)
_S = TypeVar("_S", bound="Stat")


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums of half-precision values are kept in float32, of integers (for means) in float64."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype if dtype.is_floating_point else torch.float64


class Stat:
    """A statistic updated one observation at a time (Captum's ``Stat``).

    Subclasses define ``update(x)`` and ``get()``; one that reads another statistic lists it in
    ``requires()`` and fetches it in ``init()`` with ``self._get_stat(Mean())``. Two statistics
    are equal when their class and ``params`` (the keyword arguments) are: a summarizer keeps one
    of each. ``name`` is the key in a summary: the given one, or the class name in lower case.
    """

    batched = False  # True: _update_rows takes a block of observations at once

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        self.params: dict[str, Any] = kwargs
        self._name = name
        self._other_stats: SummarizerSingleTensor | None = None

    def requires(self) -> list[Stat]:
        """The statistics this one reads (a summarizer adds and updates them first)."""
        return []

    def init(self) -> None:
        """Called once the summarizer holds every statistic: fetch the ones this one reads."""

    def _get_stat(self, stat: _S) -> _S | None:
        if self._other_stats is None:
            raise RuntimeError(f"{type(self).__name__} is not part of a summarizer yet")
        return self._other_stats.get(stat)  # type: ignore[return-value]

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _update_rows(self, rows: torch.Tensor) -> None:
        for row in rows:
            self.update(row)

    def get(self) -> StatValue | None:
        raise NotImplementedError

    def __hash__(self) -> int:
        return hash((type(self), frozenset(self.params.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stat) and (type(self), self.params) == (type(other), other.params)

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        default = type(self).__name__.lower()
        return f"{default}({self.params})" if self.params else default


class _BlockStat(Stat):
    """A statistic that takes a block of observations [k, *F] in one step."""

    batched = True

    def update(self, x: torch.Tensor) -> None:
        self._update_rows(torch.as_tensor(x).unsqueeze(0))

    def _update_rows(self, rows: torch.Tensor) -> None:
        raise NotImplementedError


def _required(owner: Stat, stat: _S) -> _S:
    found = owner._get_stat(stat)
    if found is None:
        raise RuntimeError(f"{type(owner).__name__} needs {type(stat).__name__} in its summarizer")
    return found


class Count(_BlockStat):
    """The number of observations (an int; None before the first)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.n: int | None = None

    def _update_rows(self, rows: torch.Tensor) -> None:
        self.n = (self.n or 0) + rows.shape[0]

    def get(self) -> int | None:
        return self.n


class Mean(_BlockStat):
    """The running mean ``mean += sum_i (x_i - mean) / n`` over each block's rows."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.n: Count | None = None
        self._mean: torch.Tensor | None = None  # in the accumulator's dtype
        self._dtype = torch.float64  # the result's: the first input's, float64 for integers

    def requires(self) -> list[Stat]:
        return [Count()]

    def init(self) -> None:
        self.n = _required(self, Count())

    def _update_rows(self, rows: torch.Tensor) -> None:
        values = rows.to(_accumulator_dtype(rows.dtype))
        if self._mean is None:
            self._dtype = rows.dtype if rows.dtype.is_floating_point else torch.float64
            self._mean = values.mean(0)
        else:
            assert self.n is not None and self.n.n is not None  # init() and Count ran first
            self._mean = self._mean + (values - self._mean).sum(0) / self.n.n

    def get(self) -> torch.Tensor | None:
        return None if self._mean is None else self._mean.to(self._dtype)


class MSE(_BlockStat):
    """The sum of squared deviations from the mean, ``sum_i (x_i - mean)^2`` (Welford)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.mean: Mean | None = None
        self._prev_mean: torch.Tensor | None = None
        self._squares: torch.Tensor | None = None

    def requires(self) -> list[Stat]:
        return [Mean()]

    def init(self) -> None:
        self.mean = _required(self, Mean())

    def _update_rows(self, rows: torch.Tensor) -> None:
        assert self.mean is not None and self.mean._mean is not None  # Mean ran first
        after = self.mean._mean
        before = after if self._prev_mean is None else self._prev_mean
        values = rows.to(after.dtype)
        # sum (x - before)(x - after) is the exact increment for a whole block, not only one row
        increment = ((values - before) * (values - after)).sum(0)
        self._squares = increment if self._squares is None else self._squares + increment
        self._prev_mean = after

    def get(self) -> torch.Tensor | None:
        if self._squares is None or self.mean is None:
            return None
        return self._squares.to(self.mean._dtype)


class _OrderStat(_BlockStat):
    """A statistic of the variance family (``order`` 0: population, 1: sample), read from the
    statistics it requires, named after its order by default."""

    _names: tuple[str, str, str]  # order 0, order 1, any other (formatted with the order)

    def __init__(self, name: str | None = None, order: int = 0) -> None:
        order = check_int_at_least(order, "order", 0)
        if name is None:
            name = self._names[order] if order < 2 else self._names[2].format(order=order)
        super().__init__(name=name, order=order)
        self.order = order

    def _update_rows(self, rows: torch.Tensor) -> None:
        pass  # nothing of its own: read from the statistics it requires


class Var(_OrderStat):
    """The variance ``mse / (n - order)``: ``order=0`` population, ``order=1`` sample variance."""

    _names = ("variance", "sample_variance", "variance({order})")
    mse_stat: MSE | None = None
    n_stat: Count | None = None

    def requires(self) -> list[Stat]:
        return [MSE(), Count()]

    def init(self) -> None:
        self.mse_stat = _required(self, MSE())
        self.n_stat = _required(self, Count())

    def get(self) -> torch.Tensor | None:
        assert self.mse_stat is not None and self.n_stat is not None  # set by init()
        mse, squares, n = self.mse_stat.get(), self.mse_stat._squares, self.n_stat.n
        if mse is None or squares is None or n is None:
            return None
        if n <= self.order:
            return torch.zeros_like(mse)  # Captum's: zeros in the mean's dtype
        return squares.to(torch.float64) / (n - self.order)


class StdDev(_OrderStat):
    """The standard deviation ``sqrt(Var(order))``."""

    # "std_dev2)" is Captum's key for order 2, kept so that code reading it still works
    _names = ("std_dev", "sample_std_dev", "std_dev{order})")
    var_stat: Var | None = None

    def requires(self) -> list[Stat]:
        return [Var(order=self.order)]

    def init(self) -> None:
        self.var_stat = _required(self, Var(order=self.order))

    def get(self) -> torch.Tensor | None:
        assert self.var_stat is not None  # set by init()
        variance = self.var_stat.get()
        return None if variance is None else variance.sqrt()


Fold = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _sum_rows(rows: torch.Tensor) -> torch.Tensor:
    dtype = _accumulator_dtype(rows.dtype) if rows.dtype.is_floating_point else rows.dtype
    return rows.sum(0, dtype=dtype)


_BLOCK_FOLDS: dict[object, Callable[[torch.Tensor], torch.Tensor]] = {
    torch.min: lambda rows: rows.amin(0),
    torch.max: lambda rows: rows.amax(0),
    torch.add: _sum_rows,
}
"""Captum's default folds, each with the reduction that folds a block of rows in one call."""


class _FoldStat(_BlockStat):
    """``result = fn(result, x)`` over the observations; Captum's own ``fn`` folds a block at once."""

    def __init__(self, fn: Fold, name: str | None, argument: str) -> None:
        if not callable(fn):
            raise TypeError(f"{argument} must be a function of two tensors, got {type(fn).__name__}")
        super().__init__(name=name)
        self.fn = fn
        self.result: torch.Tensor | None = None
        self._dtype: torch.dtype | None = None

    def _update_rows(self, rows: torch.Tensor) -> None:
        if self._dtype is None:
            self._dtype = rows.dtype
        block_fold = _BLOCK_FOLDS.get(self.fn)
        for block in [block_fold(rows)] if block_fold is not None else rows:
            self.result = block.clone() if self.result is None else self.fn(self.result, block)

    def get(self) -> torch.Tensor | None:
        return None if self.result is None else self.result.to(self._dtype)


class Min(_FoldStat):
    """The elementwise minimum (``min_fn(result, x)``, default ``torch.min``)."""

    def __init__(self, name: str | None = None, min_fn: Fold = torch.min) -> None:
        super().__init__(min_fn, name, "min_fn")


class Max(_FoldStat):
    """The elementwise maximum (``max_fn(result, x)``, default ``torch.max``)."""

    def __init__(self, name: str | None = None, max_fn: Fold = torch.max) -> None:
        super().__init__(max_fn, name, "max_fn")


class Sum(_FoldStat):
    """The elementwise sum (``add_fn(result, x)``, default ``torch.add``), in the input's dtype."""

    def __init__(self, name: str | None = None, add_fn: Fold = torch.add) -> None:
        super().__init__(add_fn, name, "add_fn")


def CommonStats() -> list[Stat]:
    """Mean, sample variance, sample standard deviation, min and max."""
    return [Mean(), Var(order=1), StdDev(order=1), Min(), Max()]
