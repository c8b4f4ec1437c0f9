"""The base classes of Captum's attribution hierarchy, for the drop-in classes and for user code
that subclasses them or checks ``isinstance``: ``Attribution`` (the forward function and Captum's
properties), ``GradientAttribution`` (adds ``gradient_func`` and ``compute_convergence_delta``),
``NeuronAttribution`` (adds ``layer`` and ``device_ids``); ``PerturbationAttribution`` lives
with the perturbation machinery (``_captum_games``). A drop-in class derives from the same bases
as its Captum counterpart, so ``isinstance(fc.Saliency(model), fc.GradientAttribution)`` holds
where Captum's does.

    class Signed(fc.GradientAttribution):          # a user's method, as with Captum
        def attribute(self, inputs, target=None):
            return self.gradient_func(self.forward_func, inputs, target)[0]
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastxai import _model
from fastxai.compat._captum_inputs import PackedForward, PackedInputs, as_tuple, chunk_rows
from fastxai.compat._captum_targets import CaptumArgumentError, select_target

Forward = Callable[..., torch.Tensor]


def module_of(forward_func: object) -> nn.Module | None:
    """The nn.Module behind a forward function (the module itself or a bound method of one)."""
    if isinstance(forward_func, nn.Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _undecorated_copy(function: Callable[..., Any]) -> Callable[..., Any]:
    """A new function object with ``function``'s code, defaults, closure and metadata."""
    code, defaults = function.__code__, function.__defaults__
    copy = types.FunctionType(code, function.__globals__, function.__name__, defaults, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__doc__ = function.__doc__
    copy.__module__ = function.__module__
    copy.__annotations__ = function.__annotations__
    return copy


class CaptumMethod:
    """Base of every drop-in class with an ``attribute`` method.

    Captum's ``attribute`` methods are decorated (usage logging), so code that inspects them reads
    ``attribute.__wrapped__`` (Captum's own tests take its argument list from there). Here the
    undecorated function is a copy of ``attribute`` itself: the same code and signature, and no
    wrapper to pay for on every call.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        attribute = cls.__dict__.get("attribute")
        if inspect.isfunction(attribute) and not hasattr(attribute, "__wrapped__"):
            attribute.__wrapped__ = _undecorated_copy(attribute)  # type: ignore[attr-defined]


class Attribution(CaptumMethod):
    """Base class: the forward function, and running it on packed inputs."""

    supports_future = False

    def __init__(self, forward_func: Forward) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func

    def has_convergence_delta(self) -> bool:
        return False

    @classmethod
    def get_name(cls) -> str:
        """Captum's readable class name: a space before every character after the first that is
        not lower case (``"Lime Base"``, ``"Integrated Gradients"``)."""
        name = cls.__name__
        return name[:1] + "".join(char if char.islower() else f" {char}" for char in name[1:])

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute_future(self, *args: Any, **kwargs: Any) -> torch.futures.Future:
        """Captum's ``attribute_future``. As in Captum, only the classes that set
        ``supports_future`` (``FeatureAblation``, ``ShapleyValueSampling`` and the classes built
        on them) have it; the rest raise ``NotImplementedError``. The result is a completed
        ``torch.futures.Future`` holding ``attribute(*args, **kwargs)`` (or its exception)."""
        if not self.supports_future:
            raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")
        future: torch.futures.Future = torch.futures.Future()
        try:
            future.set_result(self.attribute(*args, **kwargs))  # type: ignore[attr-defined]
        except Exception as error:
            future.set_exception(error)
        return future

    def _prepare(
        self, inputs: Any, additional_forward_args: Any, internal_batch_size: object = None
    ) -> tuple[PackedInputs, PackedForward, int | None]:
        packed = PackedInputs(inputs)
        forward = packed.forward(self.forward_func, additional_forward_args)
        chunk = chunk_rows(internal_batch_size, packed.flat, whole_batches=forward.has_per_example_args)
        return packed, forward, chunk

    def _run(self, function: Callable[[], Any], leaves_state: bool = False) -> Any:
        """``function()`` under the state guard, in the mode the model is in. Work that changes no
        mode or ``requires_grad`` flag, takes no parameter gradient and removes every hook it
        registers itself (in a ``finally``) passes ``leaves_state`` for the lighter guard
        (``_model.gradient_state``)."""
        module = module_of(self.forward_func)
        if module is None:
            return function()
        light = _model.gradient_state(module) if leaves_state else None
        with light or _model.preserved_state(module, eval_mode=False):
            return function()


def compute_gradients(
    forward_fn: Forward,
    inputs: Any,
    target_ind: Any = None,
    additional_forward_args: Any = None,
) -> tuple[torch.Tensor, ...]:
    """Captum's ``GradientAttribution.gradient_func``: ``d f_target / d inputs``, one tensor per
    input (a tuple, also for one tensor). ``f_target`` is the target's score per example
    (Captum's selection; ``target_ind=None`` takes the output as it is), which must be one number
    per example; gradients of the examples' scores are independent, so their sum is taken. The
    inputs must require gradients, as in Captum."""
    parts = as_tuple(inputs)
    extra = () if additional_forward_args is None else as_tuple(additional_forward_args)
    with torch.enable_grad():
        output = forward_fn(*parts, *extra)
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"forward_fn must return a tensor, got {type(output).__name__}")
        scores = select_target(output, target_ind)
        if scores.dim() > 1 and scores[0].numel() != 1:
            raise CaptumArgumentError(
                f"target_ind selects {tuple(scores.shape[1:])} numbers per example: a gradient needs one "
                "(give a target)"
            )
        return torch.autograd.grad(scores.sum(), parts)


class GradientAttribution(Attribution):
    """Captum's base of the gradient methods: ``gradient_func`` (``compute_gradients``) for
    subclasses, and the completeness gap ``compute_convergence_delta``."""

    gradient_func: Callable[..., tuple[torch.Tensor, ...]] = staticmethod(compute_gradients)

    def compute_convergence_delta(
        self,
        attributions: Any,
        start_point: Any,
        end_point: Any,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> torch.Tensor:
        """Captum's completeness gap per example: ``sum(attributions) - (f(end) - f(start))`` [B].

        ``end_point`` (the inputs) and ``attributions`` are tensors or tuples of [B, *F_k];
        ``start_point`` (the baselines) numbers or tensors of 1 or B rows per input. ``f`` is the
        target's score (Captum's selection); with ``target=None`` the predicted class of a
        [B, C] output (fastxai's reading, as in ``attribute``), the output summed per row otherwise.
        ``start_point=None`` is zero.
        """
        end = PackedInputs(end_point, name="end_point")
        attributed = PackedInputs(attributions, name="attributions")
        if attributed.batch != end.batch:
            raise CaptumArgumentError(
                f"attributions have {attributed.batch} rows and end_point {end.batch}: they must match"
            )
        if start_point is None:
            start_point = tuple(0.0 for _ in end.sizes) if end.is_tuple else 0.0
        start = end.pack(start_point, name="start_point")
        if start.shape[0] not in (1, end.batch):
            raise CaptumArgumentError(
                f"start_point must have 1 or {end.batch} rows like end_point, got {start.shape[0]}"
            )
        forward = end.forward(self.forward_func, additional_forward_args)

        chosen = target

        def scores(flat: torch.Tensor) -> torch.Tensor:
            nonlocal chosen
            output = forward(flat)
            if not isinstance(output, torch.Tensor):
                output = torch.as_tensor(output)
            if chosen is None and output.dim() == 2 and output.shape[1] > 1:
                chosen = output.argmax(1)  # the predicted class at the end point, then kept
            selected = select_target(output, chosen)
            return selected.reshape(selected.shape[0], -1).sum(1)

        with torch.no_grad():
            difference = scores(end.flat) - scores(start.expand(end.batch, -1).contiguous())
            return attributed.flat.sum(1).to(difference.dtype) - difference


class NeuronAttribution(Attribution):
    """Captum's base of the neuron methods: a forward function and one of its layers
    (``layer``, ``device_ids``), attributions to the input for a selected neuron of the layer."""

    def __init__(self, forward_func: Forward, layer: nn.Module, device_ids: Any = None) -> None:
        Attribution.__init__(self, forward_func)
        self.layer = layer
        self.device_ids = device_ids


__all__ = [
    "Attribution",
    "CaptumMethod",
    "Forward",
    "GradientAttribution",
    "NeuronAttribution",
    "compute_gradients",
    "module_of",
]
