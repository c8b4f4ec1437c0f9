"""CUDA graphs for the gradient methods' per-chunk step (``cuda_graph=True``).

A chunk's step (the points, the model's forward, its backward to the points and the fused
accumulation; the same function ``compile=True`` compiles, ``_compile.Step``) is captured once
as a CUDA graph for the shapes of the first chunk and replayed for every chunk of those shapes:
a replay launches all of the step's kernels at once, without the Python, dispatcher and launch
cost of each operation, which is what a small model on a GPU spends most of its time on.

The graph reads and writes fixed buffers. Before each replay the chunk's tensors are copied into
them; after it, the buffers the step writes in place (the running sums: found by their version
counters on a warm-up run) are copied back to the caller's tensors, and the outputs are cloned
(the next replay overwrites them). Arguments that are not tensors (the model, the fused op's
implementation, flags) are captured as constants: a call where one differs, or where a tensor's
shape, dtype or device differs (the ragged last chunk, a chunk halved after running out of
memory), runs the step eagerly. Before capture the step runs once on a side stream (PyTorch's
recipe: the caching allocator and cuDNN's algorithm choice settle there).

A graph is captured per call, for the duration of the call, and freed with it: nothing captured
can go stale between calls (a replaced parameter, a forward that branches on an attribute the
user changed). Capture costs about one extra run of the step, so a call gains when it runs many
chunks of one shape (many steps or samples, a large batch), where each replay saves the
launches of every kernel of the step. Random draws
are made outside the step (the noise of SmoothGrad and GradientSHAP is a tensor argument), so
replays do not repeat them.

What a model must allow (PyTorch's rules for graph capture): no host synchronisation in its
forward (``.item()``, printing tensors, control flow on values), no CPU tensors, no new memory
for outputs whose shape depends on values. A capture that fails is a RuntimeError naming
``cuda_graph=True`` and the reason. Autocast runs without its weight cache (``_precision``), as
PyTorch requires inside graphs.

>>> a = fastxai.integrated_gradients(model.cuda(), x.cuda(), target=y.cuda(), cuda_graph=True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree

from fastxai import _compile

WARMUP_RUNS = 1
"""Runs of the step on a side stream before capture (the allocator and cuDNN settle there)."""


def _graphable(device: torch.device) -> bool:
    """Whether a step on ``device`` can be captured (the tests of the bookkeeping widen it)."""
    return device.type == "cuda"


def check_cuda_graph(cuda_graph: object, inputs: torch.Tensor, compile_backend: str | None) -> bool:
    """``cuda_graph=`` of a gradient method: a bool; True needs the inputs on a CUDA device and
    excludes ``compile=`` (a compiled step is graphed by ``torch.compile(mode="reduce-overhead")``
    instead)."""
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
    if not cuda_graph:
        return False
    if not _graphable(inputs.device):
        raise ValueError(f"cuda_graph=True needs inputs on a CUDA device, got inputs on {inputs.device}")
    if compile_backend is not None:
        raise ValueError(
            "cuda_graph=True and compile= cannot be combined: pass one (torch.compile graphs a "
            "compiled step itself with mode='reduce-overhead')"
        )
    return True


class Capture:
    """How a step is recorded and replayed: a CUDA graph (the default) or, for tests of the
    bookkeeping on a CPU, ``record`` returning a function that reruns the step on the buffers."""

    def record(self, run: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
        """Warm up, capture ``run`` (which reads and writes the buffers), and return (replay,
        the outputs ``run`` returned during capture, which every replay rewrites)."""
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run()
        return graph.replay, outputs


def _key(leaf: object) -> object:
    """What a call must repeat for the graph to serve it: a tensor's shape, dtype and device;
    any other argument itself (by identity, or by value for numbers, strings and dtypes)."""
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.dtype, leaf.device)
    if leaf is None or isinstance(leaf, (bool, int, float, str, torch.dtype)):
        return ("value", type(leaf), leaf)
    return ("object", id(leaf))


class GraphedStep:
    """``function`` recorded once (``Capture``) for the arguments of its first call and replayed
    for every call that repeats them (``_key``); other calls run ``function`` itself."""

    def __init__(self, function: Callable[..., Any], capture: Capture | None = None) -> None:
        self.function = function
        self.capture = Capture() if capture is None else capture
        self.keys: list[object] | None = None
        self.buffers: list[torch.Tensor] = []
        self.written: list[int] = []  # positions (among the tensor leaves) of buffers written in place
        self.replay: Callable[[], None] | None = None
        self.outputs: Any = None

    def __call__(self, *args: Any) -> Any:
        leaves, spec = _pytree.tree_flatten(args)
        keys = [_key(leaf) for leaf in leaves]
        if self.keys is None:
            self.keys = keys
            self._record(leaves, spec)
        if keys != self.keys or self.replay is None:
            return self.function(*args)
        tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
        for buffer, tensor in zip(self.buffers, tensors, strict=True):
            buffer.copy_(tensor)
        self.replay()
        for index in self.written:
            tensors[index].copy_(self.buffers[index])
        return _pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, self.outputs)

    def _record(self, leaves: list[Any], spec: Any) -> None:
        self.buffers = [
            torch.empty_like(leaf).copy_(leaf).detach() for leaf in leaves if isinstance(leaf, torch.Tensor)
        ]
        buffers = iter(self.buffers)
        static_args = _pytree.tree_unflatten(
            [next(buffers) if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves], spec
        )

        def run() -> Any:
            return self.function(*static_args)

        versions = [buffer._version for buffer in self.buffers]
        device = self.buffers[0].device if self.buffers else torch.device("cuda")
        try:
            self.replay, self.outputs = self.capture.record(run, device)
        except torch.cuda.OutOfMemoryError:
            raise  # not a refusal: the caller halves its chunk, and calls of these shapes run eagerly
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RuntimeError(
                "cuda_graph=True: the step (the model's forward and backward and the fused accumulation) "
                f"cannot be captured as a CUDA graph: {first}. A model that synchronises with the host "
                "(.item(), printing, control flow on values) or uses CPU tensors cannot be graphed: pass "
                "cuda_graph=False"
            ) from error
        # the buffers the step writes in place (the running sums): their version counters moved
        self.written = [
            i for i, (b, v) in enumerate(zip(self.buffers, versions, strict=True)) if b._version != v
        ]


def make_step(
    function: Callable[..., Any], compile_backend: str | None, cuda_graph: bool
) -> Callable[..., Any] | None:
    """The step a gradient method runs per chunk: compiled (``_compile.Step``), graphed
    (``GraphedStep``), or None (the method's own eager loop)."""
    if cuda_graph:
        return GraphedStep(function)
    if compile_backend is not None:
        return _compile.Step(function, compile_backend)
    return None


__all__ = ["Capture", "GraphedStep", "check_cuda_graph", "make_step"]
