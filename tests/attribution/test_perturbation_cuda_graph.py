"""``cuda_graph=True`` on the perturbation methods: each model batch's build, forward and gather
captured once and replayed (``fastxai.attribution._graphed_scores``).

On a CPU the graph cannot exist, so the bookkeeping around it is checked with the stand-in
capture of ``tests/test_cuda_graph_step.py`` (a replay reruns the step on the graph's buffers):
a method with ``cuda_graph=True`` must then equal its eager run bit for bit, which it only does
if every block's copies, rows, targets and extra model arguments reach the graph through its
buffers, and if the ragged last block, scored at the captured shape, keeps only its own scores.
The ``gpu``-marked tests run real CUDA graphs (``scripts/gpu_check.sh``, stage gpu-tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from test_cuda_graph_step import RerunCapture
from torch import nn

import fastxai as fx
from fastxai import _graphs

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
Y = torch.tensor([1, 2, 3, 4, 5])
BASE = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
SHARED = (torch.arange(36).view(1, 6, 6) // 9).view(1, 1, 6, 6)  # 4 groups, shared
PER_INPUT = torch.stack([(torch.arange(36).view(1, 6, 6) + 4 * b) % 5 for b in range(5)])  # [5, 1, 6, 6]
FIXED = SHARED.clone()
FIXED[..., 0, :] = -1  # the first row of every input: no feature

Call = Callable[..., torch.Tensor]

# chunk 12 with 5 inputs: model batches of 2 copies of all 5, a ragged last one; chunk 3: one
# copy of 3 rows per batch, the last rows of every copy ragged
CALLS: dict[str, Call] = {
    "occlusion-tiles": lambda m, x, y, **k: fx.occlusion(
        m, x, y, sliding_window_shapes=(1, 2, 2), strides=2, baselines=BASE.to(x.device), **k
    ),
    "occlusion-clipped": lambda m, x, y, **k: fx.occlusion(
        m, x, y, sliding_window_shapes=(1, 3, 3), strides=2, baselines=0.25, **k
    ),
    "feature_ablation": lambda m, x, y, **k: fx.feature_ablation(m, x, y, baselines=BASE.to(x.device), **k),
    "feature_ablation-per-input-mask": lambda m, x, y, **k: fx.feature_ablation(
        m, x, y, baselines=0.5, feature_mask=PER_INPUT, **k
    ),
    "kernel_shap": lambda m, x, y, **k: fx.kernel_shap(
        m, x, y, baselines=BASE.to(x.device), feature_mask=SHARED, n_samples=9, seed=1, **k
    ),
    "kernel_shap-fixed-elements": lambda m, x, y, **k: fx.kernel_shap(
        m, x, y, feature_mask=FIXED, n_samples=9, seed=1, **k
    ),
    "lime": lambda m, x, y, **k: fx.lime(
        m, x, y, baselines=BASE.to(x.device), feature_mask=PER_INPUT, n_samples=11, seed=2, **k
    ),
    "shapley_value_sampling": lambda m, x, y, **k: fx.shapley_value_sampling(
        m, x, y, baselines=BASE.to(x.device), feature_mask=SHARED, n_samples=3, seed=3, **k
    ),
    "shapley_value_sampling-blend": lambda m, x, y, **k: fx.shapley_value_sampling(
        m,
        x,
        y,
        baselines=BASE.to(x.device),
        feature_mask=PER_INPUT,
        n_samples=2,
        seed=3,
        backend="reference",
        **k,
    ),
    "shapley_values": lambda m, x, y, **k: fx.shapley_values(
        m, x, y, baselines=BASE.to(x.device), feature_mask=PER_INPUT, **k
    ),
    "feature_permutation": lambda m, x, y, **k: fx.feature_permutation(
        m, x, y, feature_mask=SHARED, seed=4, **k
    ),
}


class CountingCapture(RerunCapture):
    """``RerunCapture`` that counts replays."""

    def __init__(self) -> None:
        super().__init__()
        self.replays = 0

    def record(self, run: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
        replay, outputs = super().record(run, device)

        def counted() -> None:
            self.replays += 1
            replay()

        return counted, outputs


class StaleCapture(RerunCapture):
    """A broken graph: its replays do not read the buffers, they return the captured block's
    scores again (what replaying a stale chunk gives)."""

    def record(self, run: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
        self.records += 1
        return (lambda: None), run()


def _use(monkeypatch: pytest.MonkeyPatch, kind: type[RerunCapture]) -> list[Any]:
    made: list[Any] = []

    def capture() -> RerunCapture:
        made.append(kind())
        return made[-1]

    monkeypatch.setattr(_graphs, "_graphable", lambda device: True)
    monkeypatch.setattr(_graphs, "Capture", capture)
    return made


@pytest.fixture
def cpu_capture(monkeypatch: pytest.MonkeyPatch) -> list[CountingCapture]:
    return _use(monkeypatch, CountingCapture)


def _model() -> nn.Module:
    return small_cnn(seed=4).double().train()  # train(): the methods' eval mode must be undone


@pytest.mark.parametrize("chunk", [12, 3], ids=["ragged-copies", "ragged-rows"])
@pytest.mark.parametrize("target", ["per-example", "predicted"])
@pytest.mark.parametrize("name", list(CALLS))
def test_a_graphed_method_equals_its_eager_run(
    name: str, target: str, chunk: int, cpu_capture: list[CountingCapture]
) -> None:
    model = _model()
    y = Y if target == "per-example" else None
    before = model_state(model)
    want = CALLS[name](model, X, y, chunk_size=chunk)
    got = CALLS[name](model, X, y, chunk_size=chunk, cuda_graph=True)
    assert torch.equal(got, want)
    assert [c.records for c in cpu_capture] == [1]  # one capture per call
    assert cpu_capture[0].replays >= 2  # every model batch after the first replays it
    assert_same_state(before, model_state(model))


class Scaled(nn.Module):
    """A model with a per-example keyword argument: ``cnn(x) * scale[:, None]``."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = small_cnn(seed=5).double()

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        return self.cnn(x) * scale[:, None] + shift


@pytest.mark.parametrize("chunk", [12, 3])
@pytest.mark.parametrize("name", ["occlusion-tiles", "feature_ablation", "lime", "shapley_value_sampling"])
def test_per_example_model_arguments_follow_every_graphed_block(
    name: str, chunk: int, cpu_capture: list[CountingCapture]
) -> None:
    model = Scaled().eval()
    kwargs = {"scale": torch.arange(1.0, 6.0, dtype=torch.float64), "shift": 0.5}
    want = CALLS[name](model, X, Y, chunk_size=chunk, forward_kwargs=kwargs)
    got = CALLS[name](model, X, Y, chunk_size=chunk, forward_kwargs=kwargs, cuda_graph=True)
    assert torch.equal(got, want)
    assert cpu_capture[0].replays >= 2


def test_token_ids_and_a_half_precision_model_graph_too(cpu_capture: list[CountingCapture]) -> None:
    torch.manual_seed(6)
    words = nn.Sequential(nn.Embedding(30, 4), nn.Flatten(), nn.Linear(4 * 7, 3)).eval()
    ids = torch.randint(1, 30, (4, 7), generator=torch.Generator().manual_seed(7))
    want = fx.feature_ablation(words, ids, 1, baselines=0, chunk_size=6)
    assert torch.equal(fx.feature_ablation(words, ids, 1, baselines=0, chunk_size=6, cuda_graph=True), want)
    model = small_cnn(seed=4).eval()
    x = X.float()
    bf16 = {"sliding_window_shapes": (1, 2, 2), "strides": 2, "dtype": torch.bfloat16, "chunk_size": 12}
    assert torch.equal(fx.occlusion(model, x, Y, **bf16, cuda_graph=True), fx.occlusion(model, x, Y, **bf16))


@pytest.mark.parametrize("name", list(CALLS))
def test_bf16_graphs_equal_the_eager_bf16_run(name: str, cpu_capture: list[CountingCapture]) -> None:
    """``dtype`` and ``cuda_graph`` together (the copies built in bf16, the model under autocast
    inside the captured step): every method's graphed bf16 run is its eager bf16 run."""
    model = small_cnn(seed=4).train()
    x = X.float()
    before = model_state(model)
    want = CALLS[name](model, x, Y, chunk_size=12, dtype=torch.bfloat16)
    got = CALLS[name](model, x, Y, chunk_size=12, dtype=torch.bfloat16, cuda_graph=True)
    assert torch.equal(got, want)
    if bool(want.any()):  # (LIME's Lasso zeroes every coefficient of 11 samples)
        assert not torch.equal(want, CALLS[name](model, x, Y, chunk_size=12))  # bf16 did run
    assert cpu_capture[0].replays >= 2
    assert_same_state(before, model_state(model))


class _Sizes(nn.Module):
    """Records the size of every model batch."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = small_cnn(seed=4).double()
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.cnn(x)


@pytest.mark.parametrize("chunk", [12, 3])
def test_the_ragged_last_block_is_scored_at_the_captured_shape(
    chunk: int, cpu_capture: list[CountingCapture]
) -> None:
    model = _Sizes().eval()
    CALLS["feature_ablation"](model, X, Y, chunk_size=chunk)
    eager = model.sizes[:]
    model.sizes.clear()
    CALLS["feature_ablation"](model, X, Y, chunk_size=chunk, cuda_graph=True)
    assert min(eager) < max(eager)  # eagerly the last block is smaller ...
    assert set(model.sizes) == {max(eager)}  # ... graphed, every block has the full shape


@pytest.mark.parametrize("name", ["occlusion-clipped", "kernel_shap", "shapley_value_sampling"])
def test_a_replay_of_a_stale_block_would_be_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above has teeth: a graph whose replays ignore the new block's buffers (a stale
    chunk replayed) gives other values than the eager run."""
    made = _use(monkeypatch, StaleCapture)
    model = _model()
    want = CALLS[name](model, X, Y, chunk_size=12)
    got = CALLS[name](model, X, Y, chunk_size=12, cuda_graph=True)
    assert [c.records for c in made] == [1]
    assert not torch.equal(got, want)


def test_a_model_that_cannot_be_captured_is_refused_and_left_as_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refuses(_graphs.Capture):
        def record(self, run: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(_graphs, "_graphable", lambda device: True)
    monkeypatch.setattr(_graphs, "Capture", Refuses)
    model = _model()
    before = model_state(model)
    with pytest.raises(RuntimeError, match=r"cuda_graph=True: .*cannot be captured.*not permitted"):
        CALLS["kernel_shap"](model, X, Y, chunk_size=12, cuda_graph=True)
    assert_same_state(before, model_state(model))


def test_running_out_of_memory_at_capture_halves_the_chunk_instead_of_refusing() -> None:
    class NoMemory(_graphs.Capture):
        def record(self, run: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    graphed = _graphs.GraphedStep(lambda x: x * 2, NoMemory())
    with pytest.raises(torch.cuda.OutOfMemoryError):
        graphed(torch.ones(2))
    assert torch.equal(graphed(torch.ones(2)), torch.full((2,), 2.0))  # then these shapes run eagerly


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize(
    "value, error, match",
    [("yes", TypeError, "cuda_graph must be a bool"), (1, TypeError, "cuda_graph must be a bool"),
     (True, ValueError, "cuda_graph=True needs inputs on a CUDA device")],
)  # fmt: skip
def test_bad_cuda_graph_arguments_are_refused_before_the_model_runs(
    name: str, value: object, error: type[Exception], match: str
) -> None:
    calls = []
    model = _model()
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=match):
        CALLS[name](model, X, Y, chunk_size=12, cuda_graph=value)
    assert not calls


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("chunk", [12, 3])
@pytest.mark.parametrize("name", list(CALLS))
def test_cuda_graphs_equal_the_eager_run_on_a_gpu(name: str, chunk: int) -> None:
    model = small_cnn(seed=4).double().cuda().eval()
    want = CALLS[name](model, X.cuda(), Y.cuda(), chunk_size=chunk)
    got = CALLS[name](model, X.cuda(), Y.cuda(), chunk_size=chunk, cuda_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(CALLS))
def test_bf16_cuda_graphs_equal_the_eager_bf16_run_on_a_gpu(name: str) -> None:
    model = small_cnn(seed=4).cuda().eval()
    x, y = X.float().cuda(), Y.cuda()
    want = CALLS[name](model, x, y, chunk_size=12, dtype=torch.bfloat16)
    got = CALLS[name](model, x, y, chunk_size=12, dtype=torch.bfloat16, cuda_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_a_model_that_synchronises_is_refused_on_a_gpu() -> None:
    class Syncs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = small_cnn(seed=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.sum().item()) > -1e9:  # a host synchronisation: not capturable
                return self.inner(x)
            return -self.inner(x)

    model = Syncs().cuda().train()
    before = model_state(model)
    with pytest.raises(RuntimeError, match="cuda_graph=True"):
        fx.occlusion(model, X.float().cuda(), Y.cuda(), sliding_window_shapes=(1, 2, 2), strides=2,
                     chunk_size=12, cuda_graph=True)  # fmt: skip
    assert_same_state(before, model_state(model))
