"""Rules of the gradient engine (``fastxai.lrp._gradient_ops.RuleMode``) for normalisations and
max pooling, each the traced engine's rule for the same layer (``fastxai.lrp._nodes``) in the
form ``R = value * gradient`` (``g`` below is the gradient arriving at the op's output ``y``,
so its relevance is ``R_y = y * g``):

- ``F.batch_norm`` with running statistics (eval mode), ``y = s a + t`` per channel with
  ``s = w / sqrt(var + eps_bn)``:

  * right after a Linear/Conv module whose output it alone reads: merged into that layer, as
    the traced engine does (``_graph._merge_batchnorms``): the layer's epsilon rule on the
    merged map ``a -> y``, ``R_in = in * W^T s R_y / (y + eps sign0(y))``. The layer's own
    stabilisation (``RuleMode._epsilon``) is then skipped and this op's backward is
    ``g_a = s g y / (y + eps sign0(y))`` with the layer's ``eps``; whether the layer's output
    has other readers is known only when the forward is over, so both sides decide in the
    backward (``LinearOutputs``);
  * otherwise (after a sum, a concatenation, a functional convolution, the input): the identity
    rule ``R_a = R_y`` (``g_a = g y / a``), the traced engine's ``Pass`` for a BatchNorm with
    no layer to merge into (a composite's Epsilon for a BatchNorm is refused by the engine).

  Batch statistics (training mode, or no running statistics) are refused: the rule reads the
  running ones.
- ``F.group_norm``: as ``F.layer_norm`` (AttnLRP), per sample and group: ``1/std`` a constant,
  the epsilon rule (the composite's stabiliser) on the remaining affine map:
  ``q = g (w / std) y / (y + eps sign0(y))``, ``g_a = q - mean_group(q)``.
- max pooling (``max_pool1d/2d/3d``, adaptive, ``*_with_indices``): winner-take-all, which is
  the plain gradient: the backward routes ``g`` to the argmax, so ``R_argmax = a_max g = R_y``.
  The traced engine scatters to the same indices.
- statistics of an activation (``torch.norm``, ``linalg.vector_norm`` / ``linalg.norm``,
  ``std``, ``var``): constants of the pass, as LayerNorm's ``1/std`` is in AttnLRP and as the
  traced engine takes them (``_graph.STATISTIC_FUNCTIONS``): the result is detached, so what
  is computed from it (ConvNeXt V2's global response norm ``x * ||x|| / mean ||x||``) scales the
  activations it multiplies and takes no relevance.
- ``F.normalize`` (``x / max(||x||, eps)``, the norm a constant): the identity rule
  ``R_x = R_y``, the traced engine's ``pass`` (Swin V2's cosine attention).

Each handler takes the running ``RuleMode`` (``mode``), the function, its arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fastxai import ops

Tensor = torch.Tensor


def _carries(value: Any) -> bool:
    if isinstance(value, Tensor):
        return value.requires_grad
    if isinstance(value, (tuple, list)):
        return any(_carries(item) for item in value)
    if isinstance(value, dict):
        return any(_carries(item) for item in value.values())
    return False


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


# -- Linear/Conv outputs, for BatchNorm merging ---------------------------------------------------


@dataclass
class LinearOutput:
    """The output of a Linear/Conv module's op in one forward pass: its epsilon, how many calls
    read it and returned a relevance-carrying result (``readers``; metadata queries such as
    ``size()`` do not count), and whether a BatchNorm read it."""

    output: Tensor | None  # None once the forward is over (``LinearOutputs.clear``)
    eps: float
    readers: int = 0
    batchnorm: bool = False

    @property
    def merged(self) -> bool:
        """A BatchNorm is its only reader: the two are one layer for the rule."""
        return self.batchnorm and self.readers == 1


class LinearOutputs:
    """The Linear/Conv outputs of the running forward pass, by tensor identity."""

    def __init__(self) -> None:
        self._records: dict[int, LinearOutput] = {}

    def clear(self) -> None:
        """Forget the forward's outputs; the hooks keep their records for the backward, without
        the tensors (which the backward does not read: holding them would hold the activations)."""
        for record in self._records.values():
            record.output = None
        self._records.clear()

    def epsilon(self, z: Tensor, eps: float, backend: str | None) -> Tensor:
        """The epsilon rule on a Linear/Conv module's output ``z`` (``g * z / (z + eps sign0(z))``),
        skipped in the backward when a BatchNorm merged into the layer applies it instead."""
        if not z.requires_grad:
            return z
        record = LinearOutput(z, eps)
        self._records[id(z)] = record
        # now, not in the backward: the model may update z in place (``z += residual``)
        factor = ops.lrp_divide(z.detach(), z.detach(), eps, backend=backend)

        def scale(grad: Tensor) -> Tensor:
            return grad if record.merged else grad * factor

        z.register_hook(scale)
        return z

    def count(self, args: Any, kwargs: Any, output: Any) -> None:
        """One more reader for each tracked tensor among ``args``/``kwargs`` when ``output`` carries."""
        if not self._records or not _carries(output):
            return
        for tensor in _tensors(args) + _tensors(kwargs):
            record = self._records.get(id(tensor))
            if record is not None and record.output is tensor:
                record.readers += 1

    def find(self, tensor: Tensor) -> LinearOutput | None:
        record = self._records.get(id(tensor))
        return record if record is not None and record.output is tensor else None


# -- BatchNorm ------------------------------------------------------------------------------------


class _BatchNorm(torch.autograd.Function):
    """Eval-mode ``F.batch_norm`` with the rule of the module docstring. The factors are computed
    here, not in the backward: the model may update ``y`` in place (``y += residual``)."""

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, call: Callable[[Tensor], Tensor], scale: Tensor, record: LinearOutput | None,
        backend: str | None,
    ) -> Tensor:  # fmt: skip
        a = a.detach()
        y = call(a)
        identity = ops.lrp_divide(y, a, 0.0, backend=backend)
        merged = identity if record is None else ops.lrp_divide(y, y, record.eps, backend=backend) * scale
        ctx.record = record
        ctx.save_for_backward(identity, merged)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        identity, merged = ctx.saved_tensors
        record: LinearOutput | None = ctx.record
        return grad * (merged if record is not None and record.merged else identity), None, None, None, None


_BATCH_NORM = inspect.signature(F.batch_norm)


def batch_norm(mode: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    bound = _BATCH_NORM.bind(*args, **kwargs)
    bound.apply_defaults()
    given = bound.arguments
    names = ("input", "running_mean", "running_var", "weight", "bias")
    a, mean, var, weight, bias = (given[name] for name in names)
    if given["training"] or mean is None or var is None:
        raise mode.refuse(
            func, "with batch statistics (a BatchNorm in training mode, or without running statistics): "
            "LRP reads the running statistics; call model.eval() or keep eval_mode=True"
        )  # fmt: skip
    if _carries([mean, var, weight, bias]):
        raise mode.refuse(func, "with relevance-carrying statistics, weight or bias")
    if a.dim() < 2:
        raise mode.refuse(func, f"on a {a.dim()}-d input (expected [B, C, ...])")
    scale = torch.rsqrt(var.detach().to(a.dtype) + given["eps"])
    if weight is not None:
        scale = scale * weight.detach().to(a.dtype)
    scale = scale.view(1, -1, *([1] * (a.dim() - 2)))
    record = mode.linear_outputs.find(a)
    if record is not None:
        record.batchnorm = True
    rest = {k: v for k, v in given.items() if k != "input"}
    return _BatchNorm.apply(a, lambda x: func(x, **rest), scale, record, mode.backend)


# -- GroupNorm ------------------------------------------------------------------------------------


class _GroupNorm(torch.autograd.Function):
    """``F.group_norm`` with AttnLRP's LayerNorm rule per group (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any, a: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float,
        stabilizer: float, backend: str | None,
    ) -> Tensor:  # fmt: skip
        a = a.detach()
        y = F.group_norm(a, groups, weight, bias, eps)
        grouped = a.reshape(a.shape[0], groups, -1)
        std = torch.sqrt(grouped.var(-1, unbiased=False, keepdim=True) + eps)
        factor = ops.lrp_divide(y, y, stabilizer, backend=backend)
        if weight is not None:
            factor = factor * weight.detach().to(a.dtype).view(1, -1, *([1] * (a.dim() - 2)))
        ctx.groups = groups
        ctx.save_for_backward(factor, std)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        factor, std = ctx.saved_tensors
        q = (grad * factor).reshape(grad.shape[0], ctx.groups, -1) / std
        return ((q - q.mean(-1, keepdim=True)).reshape(grad.shape), *(None,) * 6)


_GROUP_NORM = inspect.signature(F.group_norm)


def group_norm(mode: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    bound = _GROUP_NORM.bind(*args, **kwargs)
    bound.apply_defaults()
    given = bound.arguments
    if _carries([given["weight"], given["bias"]]):
        raise mode.refuse(func, "with a relevance-carrying weight or bias")
    return _GroupNorm.apply(
        given["input"], given["num_groups"], given["weight"], given["bias"], given["eps"], mode.stabilizer,
        mode.backend,
    )  # fmt: skip


# -- max pooling, statistics, normalize -----------------------------------------------------------


def plain(mode: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Max pooling: its own gradient is winner-take-all."""
    return func(*args, **kwargs)


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(item) for item in value)
    return value


def statistic(mode: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A norm, standard deviation or variance of an activation: a constant of the pass."""
    return _detach(func(*args, **kwargs))


def normalize(mode: Any, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """``x / max(||x||, eps)``, the norm a constant: the identity rule."""
    return mode._identity(func, args, kwargs)


def _functions(names: str, *modules: Any) -> set[Any]:
    return {getattr(module, name) for name in names.split() for module in modules if hasattr(module, name)}


_MAX_POOLS = _functions(
    "max_pool1d max_pool2d max_pool3d max_pool1d_with_indices max_pool2d_with_indices "
    "max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d "
    "adaptive_max_pool1d_with_indices adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices",
    F, torch,
)  # fmt: skip
# the traced engine's STATISTIC_FUNCTIONS and STATISTIC_METHODS
_STATISTICS = _functions("norm std var", torch, Tensor) | _functions("vector_norm norm", torch.linalg)

RULES: dict[Any, Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]] = {
    F.batch_norm: batch_norm,
    F.group_norm: group_norm,
    F.normalize: normalize,
    **{func: plain for func in _MAX_POOLS},
    **{func: statistic for func in _STATISTICS},
}
"""The functions these rules take, each mapped to its handler ``(mode, func, args, kwargs)``."""


__all__ = ["RULES", "LinearOutput", "LinearOutputs"]
