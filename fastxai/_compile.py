"""torch.compile and the methods: a compiled model passed in, and ``compile=`` of the gradient methods.

A model given as ``torch.compile(model)`` (an ``OptimizedModule``, which wraps the user's module
as ``_orig_mod``) runs compiled wherever a method only calls it: the gradient path methods,
the perturbation methods, the attacks. A method that installs hooks on the model's layers, a
``TorchFunctionMode`` over its forward, or traces it with ``torch.fx`` (DeepLIFT, Guided
Backpropagation and DeconvNet, LRP, the CAM family, anything with ``layer=``, exact IG, the
Lipschitz bound, the global views) runs the original module instead (``original``): Dynamo would
retrace the forward for every hook set and mode state, with nothing left to gain, and torch.fx
cannot trace an ``OptimizedModule`` at all. The parameters are the same tensors, so the result is
the original model's.

``compile=True`` (``check_compile``) compiles a method's per-chunk step, the model's forward,
its backward and the fused accumulation, as one graph (``Step``: ``fullgraph=True``, static
shapes) for the shape of the first chunk, and reuses it for every chunk of that shape; the last,
smaller chunk of a loop runs the same step uncompiled. Dynamo keeps compiled graphs per step
function, guarded on the model and the shapes, so a later call with the same model and chunk
shape reuses them too; past ``torch._dynamo.config.recompile_limit`` (8) models or chunk shapes
for one step in a process, Dynamo runs that step uncompiled (and logs it). The gradient inside a
step is ``torch.func.grad`` (Dynamo does not trace ``torch.autograd.grad``).

>>> a = fastxai.integrated_gradients(model, x, target=y, compile=True)
>>> a = fastxai.saliency(torch.compile(model), x, target=y)   # a compiled model, as given
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

DEFAULT_BACKEND = "inductor"


def check_compile(value: object) -> str | None:
    """``compile=``: False (run eagerly) -> None; True -> ``"inductor"``; or the name of a
    ``torch.compile`` backend (``torch._dynamo.list_backends()``, e.g. ``"aot_eager"``)."""
    if isinstance(value, bool):
        return DEFAULT_BACKEND if value else None
    if not isinstance(value, str):
        raise TypeError(
            f"compile must be a bool or the name of a torch.compile backend, got {type(value).__name__} "
            f"{value!r}"
        )
    import torch._dynamo  # only when a name is given: importing Dynamo costs about a second

    names = torch._dynamo.list_backends(exclude_tags=())
    if value not in names:
        raise ValueError(
            f"compile must be a bool or the name of a torch.compile backend ({', '.join(sorted(names))}), "
            f"got {value!r}"
        )
    return value


def _optimized_module_type() -> type | None:
    """``OptimizedModule``, if Dynamo is imported (a compiled model cannot exist before it is):
    importing fastxai does not import Dynamo."""
    module = sys.modules.get("torch._dynamo.eval_frame")
    found: type | None = getattr(module, "OptimizedModule", None)
    return found


def is_compiled(model: object) -> bool:
    """Whether ``model`` is ``torch.compile(module)`` (an ``OptimizedModule``)."""
    optimized = _optimized_module_type()
    return optimized is not None and isinstance(model, optimized)


def original(model: Any) -> Any:
    """The module a compiled model wraps (``OptimizedModule._orig_mod``, through nested
    compilations); any other model as it is. For methods that hook, mode or trace the model."""
    while is_compiled(model):
        model = model._orig_mod
    return model


def _signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What the compiled graph is specialised on among the arguments: each tensor's shape,
    dtype and device (the other arguments are the same objects for every chunk of a call)."""
    leaves = torch.utils._pytree.tree_leaves(args)
    return tuple(
        (tuple(leaf.shape), leaf.dtype, leaf.device) if isinstance(leaf, torch.Tensor) else None
        for leaf in leaves
    )


class Step:
    """``function`` compiled once as one graph for the shapes of its first call.

    Calls with those shapes run the compiled graph; a call with other shapes (the ragged last
    chunk, or a chunk halved after an out-of-memory error) runs ``function`` itself, so no
    second graph is compiled in a call. A graph break (an op Dynamo cannot trace in the model's
    forward) is a RuntimeError naming ``compile``.
    """

    def __init__(self, function: Callable[..., Any], backend: str) -> None:
        self.function = function
        self.compiled = torch.compile(function, backend=backend, fullgraph=True, dynamic=False)
        self.signature: tuple[Any, ...] | None = None

    def __call__(self, *args: Any) -> Any:
        signature = _signature(args)
        if self.signature is None:
            self.signature = signature
        if signature != self.signature:
            return self.function(*args)
        import torch._dynamo.exc

        try:
            return self.compiled(*args)
        except (torch._dynamo.exc.Unsupported, torch._dynamo.exc.UserError) as error:
            raise RuntimeError(
                f"compile=True: the step (the model's forward and backward and the fused accumulation) "
                f"does not compile as one graph: {_reason(error)}. Pass compile=False, or compile the "
                "model alone (torch.compile(model)), which allows graph breaks"
            ) from error


def _reason(error: Exception) -> str:
    """Dynamo's reason for a graph break in a line or two: its first line, and the line of the
    user's code it names (``Caused by: ...``) when there is one."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    cause = next((line for line in lines[1:] if line.startswith("Caused by:")), None)
    return lines[0] if cause is None else f"{lines[0]} ({cause})"


def maybe_step(function: Callable[..., Any], backend: str | None) -> Callable[..., Any]:
    """``Step(function, backend)``, or ``function`` itself when ``backend`` is None (eager)."""
    return function if backend is None else Step(function, backend)


__all__ = ["DEFAULT_BACKEND", "Step", "check_compile", "is_compiled", "maybe_step", "original"]
