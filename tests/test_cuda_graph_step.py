"""``cuda_graph=True`` on the gradient methods: the per-chunk step captured once and replayed.

On a CPU the graph itself cannot exist, so the bookkeeping around it (the fixed buffers, the
running sums found by their version counters and copied back, cloned outputs, the calls that
fall back to the eager step) is checked with a stand-in capture that replays by running the
step again on the buffers: a method with ``cuda_graph=True`` must then equal its eager run bit
for bit, which it only does if every argument that changes between chunks reaches the graph
as a buffer. The ``gpu``-marked tests run real CUDA graphs (``scripts/gpu_check.sh``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from models import assert_same_state, model_state, small_cnn

import fastxai as fx
from fastxai import _graphs

X = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([1, 2, 3, 4, 5])
BACKGROUND = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))

# chunk_size 4 with 5 inputs: full chunks replay the graph, the ragged last one runs eagerly
CALLS: dict[str, Callable[..., torch.Tensor]] = {
    "saliency": lambda m, x, y, **k: fx.saliency(m, x, target=y, chunk_size=4, **k),
    "input_x_gradient": lambda m, x, y, **k: fx.input_x_gradient(m, x, target=y, chunk_size=4, **k),
    "integrated_gradients": lambda m, x, y, **k: fx.integrated_gradients(
        m, x, target=y, n_steps=6, chunk_size=8, **k
    ),
    "smoothgrad": lambda m, x, y, **k: fx.smoothgrad(
        m, x, target=y, n_samples=5, seed=3, nt_type="vargrad", chunk_size=8, **k
    ),
    "gradient_shap": lambda m, x, y, **k: fx.gradient_shap(
        m, x, target=y, baselines=BACKGROUND.to(x.device), n_samples=4, seed=2, chunk_size=8, **k
    ),
}


class RerunCapture(_graphs.Capture):
    """Replays by running the step again on the buffers (what a graph does, without CUDA)."""

    def __init__(self) -> None:
        self.records = 0

    def record(self, run: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
        self.records += 1
        outputs = run()
        holder = [outputs]

        def replay() -> None:
            fresh = run()
            # a graph rewrites the captured outputs in place
            for old, new in zip(_tensors(holder[0]), _tensors(fresh), strict=True):
                old.copy_(new)

        return replay, outputs


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    return []


@pytest.fixture
def cpu_capture(monkeypatch: pytest.MonkeyPatch) -> list[RerunCapture]:
    made: list[RerunCapture] = []

    def capture() -> RerunCapture:
        made.append(RerunCapture())
        return made[-1]

    monkeypatch.setattr(_graphs, "_graphable", lambda device: True)
    monkeypatch.setattr(_graphs, "Capture", capture)
    return made


@pytest.mark.parametrize("name", list(CALLS))
def test_a_graphed_step_equals_the_eager_step(name: str, cpu_capture: list[RerunCapture]) -> None:
    model = small_cnn(seed=4).double().train()
    x, y = X.double(), Y
    before = model_state(model)
    want = CALLS[name](model, x, y)
    got = CALLS[name](model, x, y, cuda_graph=True)
    assert torch.equal(got, want)
    assert [c.records for c in cpu_capture] == [1]  # captured once per call
    assert_same_state(before, model_state(model))


def test_the_step_keeps_its_buffers_and_copies_back_what_it_writes() -> None:
    calls = []

    def step(scale: float, x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        acc.add_(x * scale)
        return x.sum(1)

    graphed = _graphs.GraphedStep(step, RerunCapture())
    acc = torch.zeros(2, 3)
    for value in (1.0, 2.0):
        x = torch.full((2, 3), value)
        out = graphed(0.5, x, acc)
        assert torch.equal(out, torch.full((2,), 3 * value))
    assert torch.equal(acc, torch.full((2, 3), 1.5))  # 0.5 * (1 + 2), written back each time
    assert graphed.written == [1]  # acc, not x
    kept = out.clone()
    graphed(0.5, torch.ones(2, 3), acc)
    assert torch.equal(out, kept)  # an output is the caller's: a later replay does not change it
    # another shape, or another constant: the step runs as it is, not the graph
    calls.clear()
    graphed(0.5, torch.ones(1, 3), acc[:1])
    graphed(0.25, torch.ones(2, 3), acc)
    assert calls == [1, 2]


def test_a_step_that_cannot_be_captured_is_refused_naming_cuda_graph() -> None:
    class Refuses(_graphs.Capture):
        def record(self, run: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
            raise RuntimeError("operation not permitted when stream is capturing")

    graphed = _graphs.GraphedStep(lambda x: x * 2, Refuses())
    with pytest.raises(RuntimeError, match=r"cuda_graph=True: .*cannot be captured.*not permitted"):
        graphed(torch.ones(2))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m: fx.saliency(m, X, target=Y, cuda_graph="yes"), TypeError, "cuda_graph must be a bool"),
        (lambda m: fx.smoothgrad(m, X, target=Y, cuda_graph=True), ValueError, "CUDA device"),
        (
            lambda m: fx.integrated_gradients(m, X, target=Y, cuda_graph=True, method="adaptive"),
            ValueError,
            "CUDA device",
        ),
        (
            lambda m: fx.gradient_shap(m, X, target=Y, baselines=BACKGROUND, cuda_graph=True),
            ValueError,
            "CUDA device",
        ),
    ],
)
def test_bad_cuda_graph_arguments_are_refused_before_the_model_runs(call, error, match) -> None:  # type: ignore[no-untyped-def]
    calls = []
    model = small_cnn(seed=4).eval()
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=match):
        call(model)
    assert not calls


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda m: fx.integrated_gradients(m, X, target=Y, cuda_graph=True, compile=True),
            "cannot be combined",
        ),
        (lambda m: fx.saliency(m, X, target=Y, cuda_graph=True, layer="4"), "layer="),
        (
            lambda m: fx.integrated_gradients(m, X, target=Y, cuda_graph=True, method="adaptive"),
            "fixed rules",
        ),
        (
            lambda m: fx.gradient_shap(
                m, X, target=Y, baselines=BACKGROUND, cuda_graph=True, method="adaptive"
            ),
            "method='sampled'",
        ),
    ],
)
def test_combinations_a_graph_cannot_serve_are_refused(call, match: str, cpu_capture: list) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        call(small_cnn(seed=4).eval())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(CALLS))
def test_cuda_graphs_equal_the_eager_run_on_a_gpu(name: str) -> None:
    model = small_cnn(seed=4).cuda().eval()
    x, y = X.cuda(), Y.cuda()
    want = CALLS[name](model, x, y)
    got = CALLS[name](model, x, y, cuda_graph=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_a_model_that_synchronises_is_refused_on_a_gpu() -> None:
    class Syncs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = small_cnn(seed=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.sum().item()) > -1e9:  # a host synchronisation: not capturable
                return self.inner(x)
            return -self.inner(x)

    model = Syncs().cuda().eval()
    with pytest.raises(RuntimeError, match="cuda_graph=True"):
        fx.saliency(model, X.cuda(), target=Y.cuda(), cuda_graph=True, chunk_size=4)
