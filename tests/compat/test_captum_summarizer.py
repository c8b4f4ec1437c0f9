"""Summarizer, ClassSummarizer and the statistics against Captum's own and against plain formulas
on the stacked observations: every value, key and dtype, streamed in uneven batches."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fastxai.compat import captum as fc

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat.captum")

ALL_STATS = ("Mean", "Var", "Var1", "StdDev", "StdDev1", "Min", "Max", "Sum", "Count", "MSE")


def make_stats(module: object) -> list:
    """Every statistic, built from fastxai's or Captum's classes."""
    made = []
    for name in ALL_STATS:
        if name.endswith("1"):
            made.append(getattr(module, name[:-1])(order=1))
        else:
            made.append(getattr(module, name)())
    return made


def oracle(stacked: torch.Tensor) -> dict[str, object]:
    """The statistics of observations stacked along dim 0, in float64, by textbook formulas."""
    values = stacked.double()
    mean = values.mean(0)
    return {
        "mean": mean,
        "variance": values.var(0, unbiased=False),
        "sample_variance": values.var(0, unbiased=True),
        "std_dev": values.std(0, unbiased=False),
        "sample_std_dev": values.std(0, unbiased=True),
        "min": values.amin(0),
        "max": values.amax(0),
        "sum": values.sum(0),
        "count": stacked.shape[0],
        "mse": ((values - mean) ** 2).sum(0),
    }


def assert_same_summary(ours: dict, theirs: dict, rtol: float, atol: float) -> None:
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(ours[key], torch.Tensor), key
            assert ours[key].dtype == value.dtype and ours[key].shape == value.shape, key
            torch.testing.assert_close(ours[key], value, rtol=rtol, atol=atol, msg=key)
        else:
            assert ours[key] == value, key


TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 2e-5)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3, 4)], ids=["scalar", "vector", "3x37"])
def test_every_stat_matches_captum_and_the_formulas(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(7)
    stacked = (torch.randn(23, *shape, generator=generator, dtype=torch.float64) * 3 + 1).to(dtype)
    ours, theirs = fc.Summarizer(make_stats(fc)), captum_attr.Summarizer(make_stats(captum_attr))
    assert ours.summary is None and theirs.summary is None
    for observation in stacked:
        ours.update(observation)
        theirs.update(observation)
    rtol, atol = TOLERANCES[dtype]
    assert_same_summary(ours.summary, theirs.summary, rtol, atol)
    for key, value in oracle(stacked).items():
        got = ours.summary[key]
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got.double(), value, rtol=10 * rtol, atol=10 * atol, msg=key)
        else:
            assert got == value


@pytest.mark.parametrize("count", [1, 2, 3])
def test_first_updates_match_captum(count: int) -> None:
    """Variances are zeros of the input's dtype while n <= order, float64 after (Captum's)."""
    generator = torch.Generator().manual_seed(count)
    stacked = torch.randn(count, 4, generator=generator)
    stats = lambda module: [*make_stats(module), module.Var(order=2), module.StdDev(order=2)]  # noqa: E731
    ours, theirs = fc.Summarizer(stats(fc)), captum_attr.Summarizer(stats(captum_attr))
    for observation in stacked:
        ours.update(observation)
        theirs.update(observation)
    assert "variance(2)" in ours.summary and "std_dev2)" in ours.summary  # Captum's keys
    assert_same_summary(ours.summary, theirs.summary, 1e-6, 1e-6)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float16], ids=["i64", "i32", "f16"])
def test_integer_and_half_inputs_keep_captums_dtypes(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    stacked = (torch.randn(40, 6, generator=generator) * 20).to(dtype)
    ours, theirs = fc.Summarizer(make_stats(fc)), captum_attr.Summarizer(make_stats(captum_attr))
    for observation in stacked:
        ours.update(observation)
        theirs.update(observation)
    exact = oracle(stacked)
    for key, value in theirs.summary.items():
        got = ours.summary[key]
        if not isinstance(value, torch.Tensor):
            assert got == value
            continue
        assert got.dtype == value.dtype, key
        # float32 accumulation for half inputs: at least as close to the float64 truth as Captum
        scale = exact[key].abs().max().item() + 1.0  # type: ignore[union-attr]
        ours_error = (got.double() - exact[key]).abs().max().item()  # type: ignore[operator]
        theirs_error = (value.double() - exact[key]).abs().max().item()  # type: ignore[operator]
        assert ours_error <= theirs_error + 1e-3 * scale, key


def test_numbers_and_tuples_match_captum() -> None:
    generator = torch.Generator().manual_seed(11)
    first, second = torch.randn(9, 3, 2, generator=generator), torch.randn(9, 5, generator=generator)
    ours, theirs = fc.Summarizer(fc.CommonStats()), captum_attr.Summarizer(captum_attr.CommonStats())
    for a, b in zip(first, second, strict=True):
        ours.update((a, b))
        theirs.update((a, b))
    assert isinstance(ours.summary, list) and len(ours.summary) == 2
    for mine, peer in zip(ours.summary, theirs.summary, strict=True):
        assert_same_summary(mine, peer, 1e-5, 1e-5)
    assert [key for key in ours.summary[0]] == ["mean", "sample_variance", "sample_std_dev", "min", "max"]
    ours_numbers, theirs_numbers = (
        fc.Summarizer([fc.Mean(), fc.Max()]),
        captum_attr.Summarizer([captum_attr.Mean(), captum_attr.Max()]),
    )
    for number in (2.5, -1.0, 4.0):
        ours_numbers.update(number)
        theirs_numbers.update(number)
    assert_same_summary(ours_numbers.summary, theirs_numbers.summary, 0.0, 0.0)


def feed(summarizer: object, x: object, labels: object, batches: list[int]) -> None:
    """``x`` (a tensor or tuple of tensors) and per-row ``labels`` in batches of these sizes."""
    parts = x if isinstance(x, tuple) else (x,)
    start = 0
    for size in batches:
        rows = tuple(part[start : start + size] for part in parts)
        chunk = labels[start : start + size] if isinstance(labels, (list, torch.Tensor)) else labels
        summarizer.update(rows if isinstance(x, tuple) else rows[0], chunk)  # type: ignore[attr-defined]
        start += size


def assert_same_class_summaries(ours: object, theirs: object, rtol: float) -> None:
    mine, peer = ours.class_summaries, theirs.class_summaries  # type: ignore[attr-defined]
    assert set(mine) == set(peer)
    for label, summaries in peer.items():
        assert len(mine[label]) == len(summaries)
        for a, b in zip(mine[label], summaries, strict=True):
            assert_same_summary(a, b, rtol, rtol)
    for a, b in zip(ours.summary, theirs.summary, strict=True):  # type: ignore[attr-defined]
        assert_same_summary(a, b, rtol, rtol)


UNEVEN = [3, 1, 5, 2, 7, 2]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("form", ["list", "tensor", "strings"])
def test_class_summarizer_in_uneven_batches_matches_captum(dtype: torch.dtype, form: str) -> None:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(sum(UNEVEN), 3, 4, generator=generator, dtype=dtype)
    classes = torch.randint(0, 3, (x.shape[0],), generator=generator)
    labels: object = {"list": classes.tolist(), "tensor": classes, "strings": [f"c{c}" for c in classes]}[
        form
    ]
    ours = fc.ClassSummarizer(make_stats(fc))
    theirs = captum_attr.ClassSummarizer(make_stats(captum_attr))
    feed(ours, x, labels, UNEVEN)
    # Captum keys tensor labels by tensor object (each row its own class): it gets the list
    feed(theirs, x, classes.tolist() if form == "tensor" else labels, UNEVEN)
    assert_same_class_summaries(ours, theirs, TOLERANCES[dtype][0])
    if form == "tensor":
        assert set(ours.class_summaries) == set(classes.tolist())


def test_class_summarizer_tuple_inputs_and_single_labels_match_captum() -> None:
    generator = torch.Generator().manual_seed(9)
    x = (torch.randn(12, 4, generator=generator), torch.randn(12, 2, 3, generator=generator))
    ours, theirs = (
        fc.ClassSummarizer(fc.CommonStats()),
        captum_attr.ClassSummarizer(captum_attr.CommonStats()),
    )
    for summarizer in (ours, theirs):
        feed(summarizer, x, 1, [4, 8])  # an int for the whole batch
        feed(summarizer, x, "apple", [5, 7])
        feed(summarizer, x, [2], [12])  # a one-entry list: one label too
    assert_same_class_summaries(ours, theirs, 1e-5)
    assert set(ours.class_summaries) == {1, "apple", 2}
    one = fc.ClassSummarizer([fc.Count()])
    one.update(x[0], torch.tensor([4]))  # a one-entry tensor: one label for the whole batch
    assert one.class_summaries == {4: [{"count": 12}]}


def test_class_summarizer_results_do_not_depend_on_the_batches() -> None:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(20, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (20,), generator=generator).tolist()
    whole, uneven, rows = (fc.ClassSummarizer(make_stats(fc)) for _ in range(3))
    feed(whole, x, labels, [20])
    feed(uneven, x, labels, UNEVEN)
    feed(rows, x, labels, [1] * 20)
    assert_same_class_summaries(whole, uneven, 1e-12)
    assert_same_class_summaries(whole, rows, 1e-12)


def test_class_summarizer_without_labels_is_a_summarizer() -> None:
    x = torch.randn(4, 3)
    ours, theirs = fc.ClassSummarizer([fc.Mean()]), captum_attr.ClassSummarizer([captum_attr.Mean()])
    for summarizer in (ours, theirs):
        summarizer.update(x)
    assert isinstance(ours.summary, dict) and ours.class_summaries == {}
    assert_same_summary(ours.summary, theirs.summary, 0.0, 0.0)


def test_custom_functions_and_stats() -> None:
    class Positive(fc.Stat):
        """How often each element was positive: a user statistic, updated row by row."""

        def __init__(self) -> None:
            super().__init__()
            self.count: torch.Tensor | None = None

        def update(self, x: torch.Tensor) -> None:
            self.count = (x > 0).long() if self.count is None else self.count + (x > 0).long()

        def get(self) -> torch.Tensor | None:
            return self.count

    x = torch.randn(10, 5)
    summarizer = fc.ClassSummarizer(
        [
            fc.Min(name="lowest", min_fn=torch.minimum),
            fc.Sum(add_fn=lambda a, b: a + 2 * b),
            Positive(),
            fc.Mean(),
        ]
    )
    summarizer.update(x, labels=0)
    summary = summarizer.summary[0]
    torch.testing.assert_close(summary["lowest"], x.amin(0))
    torch.testing.assert_close(summary["sum"], x[0] + 2 * x[1:].sum(0))
    assert torch.equal(summary["positive"], (x > 0).sum(0))
    torch.testing.assert_close(summary["mean"], x.mean(0))


def test_stat_names_equality_and_lookup_match_captum() -> None:
    for ours, theirs in zip(
        [*make_stats(fc), fc.Var(order=3), fc.StdDev(order=2), fc.Mean(name="m")],
        [
            *make_stats(captum_attr),
            captum_attr.Var(order=3),
            captum_attr.StdDev(order=2),
            captum_attr.Mean(name="m"),
        ],
        strict=True,
    ):
        assert ours.name == theirs.name
    assert fc.Var(order=1) == fc.Var(name="other", order=1) != fc.Var()
    assert fc.Var() != fc.StdDev() and len({fc.Mean(), fc.Mean(), fc.Count()}) == 2
    single = fc.SummarizerSingleTensor([fc.StdDev(), fc.Count()], [0])  # dependencies added here
    single.update(torch.tensor([1.0, 3.0]))
    single.update(torch.tensor([3.0, 3.0]))
    assert list(single.summary) == ["std_dev"]
    torch.testing.assert_close(single.summary["std_dev"], torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert single.get(fc.Count()).get() == 2 and single.get(fc.Min()) is None
    assert fc.CommonStats() == [fc.Mean(), fc.Var(order=1), fc.StdDev(order=1), fc.Min(), fc.Max()]


def test_observations_are_detached_and_copied() -> None:
    x = torch.randn(3, requires_grad=True)
    summarizer = fc.Summarizer([fc.Mean(), fc.Sum(), fc.Min()])
    summarizer.update(x)
    kept = x.detach().clone()
    with torch.no_grad():
        x.mul_(10)
    for value in summarizer.summary.values():
        assert value.grad_fn is None and not value.requires_grad
        torch.testing.assert_close(value, kept)


BAD: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("stats not a list", lambda: fc.Summarizer(fc.Mean()), TypeError, "stats"),
    ("a class, not a stat", lambda: fc.Summarizer([fc.Mean]), TypeError, "stats"),
    ("two stats one name", lambda: fc.Summarizer([fc.Min(name="a"), fc.Max(name="a")]), ValueError, "stats"),
    ("negative order", lambda: fc.Var(order=-1), ValueError, "order"),
    ("float order", lambda: fc.StdDev(order=1.5), TypeError, "order"),  # type: ignore[arg-type]
    ("min_fn not callable", lambda: fc.Min(min_fn=3), TypeError, "min_fn"),  # type: ignore[arg-type]
    ("name not a str", lambda: fc.Mean(name=3), TypeError, "name"),  # type: ignore[arg-type]
    ("bad indices", lambda: fc.SummarizerSingleTensor([fc.Mean()], [1]), ValueError, "summary_stats_indices"),
]


@pytest.mark.parametrize(("case", "call", "error", "argument"), BAD, ids=[case for case, *_ in BAD])
def test_bad_arguments_name_the_argument(
    case: str, call: Callable[[], object], error: type[Exception], argument: str
) -> None:
    with pytest.raises(error, match=argument):
        call()


def test_bad_updates_name_the_argument() -> None:
    summarizer = fc.Summarizer([fc.Mean()])
    with pytest.raises(TypeError, match="x must be"):
        summarizer.update("1.0")  # type: ignore[arg-type]
    summarizer.update(torch.zeros(3))
    with pytest.raises(ValueError, match=r"x has shape \(4,\)"):
        summarizer.update(torch.zeros(4))  # Captum broadcasts or fails later
    with pytest.raises(AssertionError, match="x must be a single"):  # Captum's assert, and a ValueError
        summarizer.update((torch.zeros(3),))
    pair = fc.Summarizer([fc.Mean()])
    pair.update((torch.zeros(3), torch.zeros(2)))
    with pytest.raises(ValueError, match="x has 1 elements"):
        pair.update((torch.zeros(3),))
    classes = fc.ClassSummarizer([fc.Mean()])
    with pytest.raises(ValueError, match="labels has 2 entries for a batch of 3"):
        classes.update(torch.zeros(3, 2), [0, 1])
    with pytest.raises(AssertionError, match="labels has 2 entries"):  # Captum raises AssertionError
        classes.update(torch.zeros(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be a 1-D tensor"):
        classes.update(torch.zeros(2, 2), torch.zeros(2, 1))
    with pytest.raises(TypeError, match="labels must be hashable"):
        classes.update(torch.zeros(2, 2), [[0], [1]])
    with pytest.raises(TypeError, match="x must be a tensor"):
        classes.update(1.0, 0)
    with pytest.raises(ValueError, match="share the batch dimension"):
        classes.update((torch.zeros(3, 2), torch.zeros(2, 2)), 0)
    assert classes.summary is None and classes.class_summaries == {}  # nothing was half-applied
    classes.update(torch.ones(2, 2), [0, 1])
    with pytest.raises(ValueError, match=r"x has shape \(3,\)"):
        classes.update(torch.zeros(2, 3), [2, 0])
    with pytest.raises(ValueError, match="x must be a tuple"):
        classes.update(torch.zeros(2))  # the labelled updates made the stream one of tuples
    assert set(classes.class_summaries) == {0, 1} and classes.summary[0]["mean"].tolist() == [1.0, 1.0]
    counted = fc.Summarizer([fc.Count()])
    counted.update((torch.zeros(3), torch.zeros(2)))
    with pytest.raises(ValueError, match=r"x has shape \(1,\)"):
        counted.update((torch.zeros(3), torch.zeros(1)))
    assert counted.summary == [{"count": 1}, {"count": 1}]  # the first element was not counted either
