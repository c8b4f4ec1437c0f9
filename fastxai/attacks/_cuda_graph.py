"""CUDA-graph capture of the iterative attacks' step loop (``cuda_graph=True``).

One whole step (the model's forward pass, the backward pass to the input, the momentum update
and the fused ``pgd_step``) is recorded once as a CUDA graph and replayed ``steps`` times: a
replay launches every kernel of the step at once, with no Python, dispatcher or kernel-launch
cost per operation. That cost dominates small models on a GPU, where a step is microseconds
of arithmetic behind hundreds of launches.

What a model must allow (PyTorch's rules for graph capture): no host synchronisation in the
forward pass (``.item()``, printing tensors, data-dependent Python control flow), no CPU
tensors, the same shapes every step. Early stopping changes the batch from step to step and
is refused. Before capture a few steps run on a scratch copy on a side stream (kernel
autotuning and the caching allocator settle there; the attack's own iterate is untouched), so
the iterates are those of the eager loop; the graph and its memory pool are freed when the
attack returns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastxai import ops

WARMUP_STEPS = 3
"""Steps run on a scratch copy before capture (PyTorch's documentation warms up with a few)."""

Step = Callable[[torch.Tensor], torch.Tensor]


def check_cuda_graph(cuda_graph: object, inputs: torch.Tensor, early_stop: bool) -> bool:
    """Whether to capture the step loop; errors for the combinations a graph cannot serve."""
    if not isinstance(cuda_graph, bool):
        raise TypeError(f"cuda_graph must be a bool, got {type(cuda_graph).__name__}")
    if not cuda_graph:
        return False
    if early_stop:
        raise ValueError(
            "cuda_graph=True cannot be combined with early_stop=True: early stopping shrinks the "
            "batch from step to step, a captured graph replays fixed shapes"
        )
    if inputs.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs inputs on a CUDA device, got inputs on {inputs.device}")
    return True


def fused_step(
    adv: torch.Tensor,
    origin: torch.Tensor,
    step_size: float,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    backend: str | None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(point, grad) -> ops.pgd_step(point, grad, origin, step_size, eps, *bounds, norm)`` with
    everything built beforehand: the per-sample step and radius tensors, and the implementation
    the op resolves to, after one checked call on these arguments. A captured step may neither
    build tensors from Python numbers nor run checks that read the device (a capturing stream
    allows neither)."""
    dtype = ops._accumulator_dtype(adv.dtype)  # what the public op builds them in
    step_t, eps_t = (
        torch.full((adv.shape[0],), value, dtype=dtype, device=adv.device) for value in (step_size, eps)
    )
    low, high = bounds
    ops.pgd_step(adv, torch.zeros_like(adv), origin, step_t, eps_t, low, high, norm, backend=backend)
    implementation = ops._unchecked("pgd_step", backend, adv)

    def step(point: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = implementation(point, grad.contiguous(), origin, step_t, eps_t, low, high, norm)
        return out

    return step


def replay(step: Step, adv: torch.Tensor, steps: int, momentum: torch.Tensor | None) -> torch.Tensor:
    """``steps`` applications of ``step`` to ``adv``, through one captured graph.

    ``step`` maps the current iterate to the next one and may update ``momentum`` in place (it
    is saved and put back around the warm-up steps, so replays start from its initial value).
    """
    device = adv.device
    static = adv.detach().clone()
    saved = None if momentum is None else momentum.clone()
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        scratch = static.clone()
        for _ in range(WARMUP_STEPS):
            scratch = step(scratch)
    torch.cuda.current_stream(device).wait_stream(side)
    if momentum is not None and saved is not None:
        momentum.copy_(saved)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static.copy_(step(static))
    except RuntimeError as error:
        raise RuntimeError(
            "cuda_graph=True: the model's step could not be captured as a CUDA graph (a host "
            "synchronisation such as .item() or a CPU tensor in the forward pass?); run with "
            f"cuda_graph=False. Cause: {error}"
        ) from error
    for _ in range(steps):
        graph.replay()
    result = static.clone()
    del graph
    return result
