"""DeepLIFT's Rescale rule on every nonlinearity a forward pass applies, modules and functional calls.

Two passes of the model: the baselines' pass first, without autograd, records what each
nonlinearity sees; then the inputs' pass, with autograd, pairs each of its nonlinearity calls
with the same call of the baselines' pass (the k-th call with the k-th) and gives it the
backward ``g * m`` instead of ``g * f'(x)``, where the multiplier is

    m = (f(x) - f(x')) / (x - x')        (f'(x) where |x - x'| < eps)

for the input's pre-activation ``x`` and the baseline's ``x'`` (Shrikumar et al. 2017, the
Rescale rule). The chain of multipliers then satisfies DeepLIFT's summation-to-delta:
``sum_i m_i (x_i - x'_i) = f_target(x) - f_target(x')`` exactly for a network of linear maps
and the nonlinearities below. Only the inputs' pass is differentiated: the backward costs one
pass over ``N`` rows, where a joint forward over ``[inputs; baselines]`` (Captum's) pays for
``2N``; and the pairing does not depend on where the batch sits in a tensor's dimensions.

Which calls. A ``torch.overrides.TorchFunctionMode`` (active only for the forward passes)
sees every call of the nonlinear functions below, whoever makes it: ``nn.ReLU`` and the
other activation modules (they call these functions), functional calls (``torch.relu``,
``F.relu``, ``x.relu()``, in-place forms), and a module applied several times, each call
paired with its own baseline call. Captum hooks modules instead and so misses functional
ReLUs and raises on reused modules (its issues 199, 578, 1082).

- elementwise: relu and leaky_relu (each call one fused op, ``fastxai.ops.relu_rescale``: the
  relu, and a backward that is one elementwise pass, ``rescale_backward``, over the saved
  pre-activations; a C++ autograd op on the native backend, so no Python runs per call in the
  backward; in-place calls keep a Python autograd function), elu, selu, celu, gelu,
  silu, mish, softplus, sigmoid, tanh, hardtanh, relu6, hardsigmoid, hardswish, softsign,
  logsigmoid;
- max pooling (1d/2d/3d): Captum's rule, the difference of the pooled outputs split between
  the input's and the baseline's arg-max positions (overlapping windows add up where Captum's
  unpooling keeps one write);
- softmax and log_softmax: Rescale applied to their elementary steps (``exp``, the sum, the
  ``log`` of the sum), which keeps the summation exact. Captum instead treats softmax as
  elementwise and subtracts a mean taken over the whole tensor, all rows of the batch
  together (so an example's attribution depends on the others in its batch).

Any other operation passes its plain gradient. The two passes must take the same path: the
same nonlinearities in the same order on tensors of the same shapes (a model whose control
flow depends on the values, such as routing to experts, is refused with the call that
differed). The rows of a batch must not interact (BatchNorm in training mode would).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from fastxai import ops
from fastxai.attribution import _rescale_rules as rules

Tensor = torch.Tensor


_KINDS: dict[Any, str] = {
    **{func: "elementwise" for func in (*rules.ELEMENTWISE, *rules.IN_PLACE)},
    **{func: "pool" for func in rules.MAX_POOL},
    **{func: "softmax" for func in rules.SOFTMAX},
}


def _first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("input")


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


def _mutates(func: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a call writes into its first argument (``x.mul_(...)``, ``x += ...``, ``out=``)."""
    name = _name(func)
    if name.startswith("__"):
        return name.startswith("__i") or name == "__setitem__"
    return name.endswith("_") or "out" in kwargs or bool(kwargs.get("inplace", False))


@dataclass
class _Call:
    """What one nonlinearity call of the baselines' pass saw: its argument ``x``, and for the
    functions whose rule needs them its output ``y`` and arg-max ``indices``; ``versions``: each
    tensor's version counter when recorded (a later in-place write would change it)."""

    func: Any
    x: Tensor
    y: Tensor | None = None
    indices: Tensor | None = None
    versions: dict[str, int] = field(default_factory=dict)

    def tensors(self) -> list[tuple[str, Tensor]]:
        return [(name, t) for name in ("x", "y", "indices") if (t := getattr(self, name)) is not None]


def _pool_params(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], bool]:
    """A max pooling call's (kernel_size, stride, padding, dilation, ceil_mode), and whether it
    returns indices."""
    _dims, pool = rules.MAX_POOL[func]
    given = {**dict(zip(rules.POOL_ARGUMENTS, args[1:], strict=False)), **kwargs}
    given.pop("input", None)
    return_indices = bool(given.pop("return_indices", False)) or func is pool
    params = (
        given["kernel_size"],
        given.get("stride") or None,
        given.get("padding", 0),
        given.get("dilation", 1),
        bool(given.get("ceil_mode", False)),
    )
    return params, return_indices


def _softmax_input(func: Any, x: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, int]:
    """A (log-)softmax call's argument in the dtype it asks for, and its dim."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    dtype = args[2] if len(args) > 2 and isinstance(args[2], torch.dtype) else kwargs.get("dtype")
    if dim is None:  # PyTorch's implicit choice for a softmax without dim
        dim = 0 if x.dim() in (0, 1, 3) else 1
    return (x if dtype is None else x.to(dtype)), dim % max(1, x.dim())


class RecordMode(TorchFunctionMode):
    """The baselines' pass: runs every call as asked and keeps what each supported nonlinearity
    saw, in call order (``calls``). A kept tensor the model later overwrites in place
    (``y.mul_(2)``, an in-place relu on a pooled output) is copied first (copy on write), so the
    record keeps the value the nonlinearity saw."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[_Call] = []
        self._shared: dict[int, list[tuple[_Call, str]]] = {}  # id of a tensor the model also holds

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        first = _first(args, kwargs)
        if func in rules.RELU and not kwargs.get("inplace") and isinstance(first, Tensor):
            # The common call (nn.ReLU, F.relu, torch.relu), out of place: the fused rule needs
            # its argument only, which no call writes into (checked at pairing by its version).
            output = func(*args, **kwargs)
            self._keep(_Call(func, first), shared=("x",))
            return output
        kind = _KINDS.get(func)
        inplace = kind == "elementwise" and rules.out_of_place(func, args, kwargs)[1]
        if self._shared and isinstance(first, Tensor) and id(first) in self._shared:
            if inplace or _mutates(func, kwargs):
                copy = first.clone()
                for record, name in self._shared.pop(id(first)):
                    setattr(record, name, copy)
                    record.versions[name] = copy._version
        if kind is None or not isinstance(first, Tensor):
            return func(*args, **kwargs)
        if kind == "elementwise":
            x = first.clone() if inplace else first
            output = func(*args, **kwargs)
            y = None
            if rules.relu_slope(func, args, kwargs) is None:  # the fused relu rule needs no output
                y = output.clone() if inplace else output
            self._keep(_Call(func, x, y), shared=() if inplace else ("x", "y"))
            return output
        if kind == "pool":
            params, return_indices = _pool_params(func, args, kwargs)
            y, indices = rules.MAX_POOL[func][1](first, *params)
            self._keep(_Call(func, first, y, indices), shared=("x", "y"))
            return (y, indices) if return_indices else y
        x, _dim = _softmax_input(func, first, args, kwargs)
        self._keep(_Call(func, x), shared=("x",) if x is first else ())
        return func(*args, **kwargs)

    def _keep(self, record: _Call, shared: tuple[str, ...]) -> None:
        self.calls.append(record)
        for name, tensor in record.tensors():
            record.versions[name] = tensor._version
            if name in shared:
                self._shared.setdefault(id(tensor), []).append((record, name))


class Unpaired(ValueError):
    """The inputs' pass made a nonlinearity call the baselines' pass did not make."""


def _broadcast(record: _Call, x: Tensor) -> _Call | None:
    """A one-row baselines' record spread over the inputs' rows: each dimension where the
    record's argument has size 1 and ``x`` does not (the batch, wherever the model put it)
    takes ``x``'s size, in the record's output and arg-max too. None when the shapes do not
    line up that way."""
    shape = record.x.shape
    if len(shape) != x.dim() or any(r != d and r != 1 for r, d in zip(shape, x.shape, strict=True)):
        return None
    spread = [i for i, (r, d) in enumerate(zip(shape, x.shape, strict=True)) if r != d]

    def grow(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        if t.dim() != x.dim() or any(t.shape[i] != 1 for i in spread):
            raise Unpaired(f"a recorded output of {_name(record.func)} does not spread over the batch")
        size = list(t.shape)
        for i in spread:
            size[i] = x.shape[i]
        return t.new_empty(size).copy_(t)  # one broadcasting copy (expand + contiguous costs two calls)

    spread_x = x.new_empty(x.shape).copy_(record.x)
    if record.y is None and record.indices is None:  # relu and the softmax family: the argument only
        return _Call(record.func, x=spread_x)
    return _Call(record.func, x=spread_x, y=grow(record.y), indices=grow(record.indices))


class PairedMode(TorchFunctionMode):
    """The inputs' pass: each supported nonlinearity call takes the next record of ``calls``
    (the baselines' pass) and, when its argument needs a gradient, runs with its Rescale rule.
    Raises ``Unpaired`` (a ValueError) when the passes differ; ``finish()`` checks that every
    record was used. Counts the rescaled calls. ``broadcast``: the baselines' pass ran one row
    (all baselines equal), and each record is spread over the inputs' rows (``_broadcast``)."""

    def __init__(self, calls: list[_Call], eps: float, broadcast: bool = False) -> None:
        super().__init__()
        self.records, self.eps, self.broadcast = calls, eps, broadcast
        self.used = 0
        self.calls = 0
        self._backend: dict[tuple[torch.device, torch.dtype], Any] = {}

    def _relu_rescale(self, x: Tensor) -> Any:
        """The backend's ``relu_rescale`` for tensors like ``x``, resolved once per device and dtype."""
        key = (x.device, x.dtype)
        implementation = self._backend.get(key)
        if implementation is None:
            implementation = self._backend[key] = ops._unchecked("relu_rescale", None, x)
        return implementation

    def _eps(self, x: Tensor) -> float:
        # At least the dtype's smallest normal number: a half-precision eps of 1e-10 would
        # round to 0 and leave 0/0 where the pair's values are equal.
        return max(self.eps, torch.finfo(x.dtype).tiny)

    def _next(self, func: Any, x: Tensor) -> _Call:
        if self.used == len(self.records):
            raise Unpaired(
                f"model called {_name(func)} on a tensor of shape {tuple(x.shape)} for the inputs after its "
                f"last nonlinearity for the baselines ({len(self.records)} calls); DeepLIFT pairs each "
                "nonlinearity call of the inputs with the same call for the baselines, so the model must "
                "take the same path for both (no control flow that depends on the values)"
            )
        record = self.records[self.used]
        self.used += 1
        spread = None
        if self.broadcast and record.func is func and record.x.dtype == x.dtype and record.x.shape != x.shape:
            spread = _broadcast(record, x)
        shapes_differ = record.x.shape != x.shape and spread is None
        if record.func is not func or shapes_differ or record.x.dtype != x.dtype:
            raise Unpaired(
                f"nonlinearity call {self.used} differs between the passes: {_name(func)} on "
                f"{tuple(x.shape)} {x.dtype} for the inputs, {_name(record.func)} on {tuple(record.x.shape)} "
                f"{record.x.dtype} for the baselines; DeepLIFT pairs the calls in order, so the model "
                "must take the same path for both (no control flow that depends on the values)"
            )
        if any(tensor._version != record.versions[name] for name, tensor in record.tensors()):
            raise ValueError(
                f"the model modified the argument or output of {_name(func)} (call {self.used}) in place "
                "through a view after the call; DeepLIFT needs the values the nonlinearity saw for the "
                "baselines"
            )
        return record if spread is None else spread

    def finish(self) -> None:
        if self.used != len(self.records):
            raise Unpaired(
                f"model made {len(self.records)} nonlinearity calls for the baselines but {self.used} for "
                "the inputs; DeepLIFT pairs the calls in order, so the model must take the same path for both"
            )

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        x = _first(args, kwargs)
        if (
            func in rules.RELU
            and not kwargs.get("inplace")
            and isinstance(x, Tensor)
            and x.requires_grad
            and x.dtype in rules.FUSED_DTYPES
        ):  # the common call, out of place: straight to the fused op
            record = self._next(func, x)
            self.calls += 1
            return self._relu_rescale(x)(x, record.x, self._eps(x), 0.0)
        kind = _KINDS.get(func)
        if kind is None or not isinstance(x, Tensor):
            return func(*args, **kwargs)
        if kind == "softmax":
            x, dim = _softmax_input(func, x, args, kwargs)
        record = self._next(func, x)
        if not x.requires_grad:
            return func(*args, **kwargs)
        self.calls += 1
        eps = self._eps(x)
        if kind == "elementwise":
            call, inplace = rules.out_of_place(func, args, kwargs)
            slope = rules.relu_slope(func, args, kwargs)
            if slope is not None and x.dtype in rules.FUSED_DTYPES:
                if not inplace:
                    # The fused op: the relu, and the Rescale backward in one pass (on the native
                    # backend one C++ autograd op). Checked here: same shape, dtype and device.
                    return self._relu_rescale(x)(x, record.x, eps, slope)
                in_place = rules.relu_in_place(func, slope) if inplace else None
                return rules.ReluRescale.apply(
                    x, record.x, call, slope, eps, in_place
                )  # x itself if in place
            y_ref = record.y if record.y is not None else call(record.x)
            output = rules.ElementwiseRescale.apply(x, record.x, y_ref, func, call, eps)
            return x.copy_(output) if inplace else output
        if kind == "pool":
            params, return_indices = _pool_params(func, args, kwargs)
            dims, pool = rules.MAX_POOL[func]
            output, indices = rules.MaxPoolRescale.apply(
                x, record.x, record.y, record.indices, dims, pool, params, eps
            )
            return (output, indices) if return_indices else output
        return rules.SoftmaxRescale.apply(x, record.x, dim, rules.SOFTMAX[func], eps)
