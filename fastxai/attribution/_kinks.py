"""Where a piecewise-linear network changes its linear piece along a line, seen from one point.

On the line ``p(a) = x' + a (x - x')`` a network of linear maps (linear, convolution, eval
batch norm, average pooling, sums, reshapes) and piecewise-linear maps (ReLU, leaky ReLU,
clamp, abs, max, max pooling) is piecewise linear in ``a``. Run it once at ``a = m`` with
forward-mode AD (tangent ``x - x'``): every *kink* quantity ``u`` (a ReLU's input, ``z - c``
for a clamp bound ``c``, ``max - v_k`` in a max-pooling window) is ``u(m) + (a - m) u'`` on
the piece that holds ``m``, so it changes sign at ``a - m = -u(m) / u'``. The piece holding
``m`` is ``[m + left, m + right]``: ``left`` the largest non-positive crossing offset, ``right``
the smallest non-negative one (ExactLine, Sotoudeh and Thakur, arXiv 1908.06214).

``KinkMode`` is a ``TorchFunctionMode`` that sees every torch call of the forward pass: it
records these offsets per batch row, lets linear calls through, and raises
``NotPiecewiseLinear`` (naming the layer) on any other call that touches the line's tangent
(GELU, sigmoid, softmax, layer norm, batch norm with batch statistics, comparisons...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree

LINEAR = frozenset(
    """linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
    add add_ __add__ __radd__ __iadd__ sub sub_ subtract __sub__ __rsub__ __isub__ neg negative
    __neg__ __pos__ positive sum mean cumsum cat concat concatenate stack hstack vstack reshape
    view view_as flatten unflatten permute transpose swapaxes t movedim contiguous clone
    __getitem__ __setitem__ squeeze unsqueeze expand expand_as repeat tile narrow select
    index_select gather split chunk unbind roll flip pad avg_pool1d avg_pool2d avg_pool3d
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d interpolate upsample
    pixel_shuffle pixel_unshuffle channel_shuffle identity to float double half bfloat16 type
    type_as cpu cuda where masked_fill real __get__ dim size numel stride is_contiguous
    __len__ ndimension nelement element_size is_floating_point get_device""".split()
)
"""Calls that are linear (affine) in the line's tensors, or only read their metadata."""

PRODUCTS = frozenset(
    """mul mul_ multiply __mul__ __rmul__ __imul__ matmul __matmul__ __rmatmul__ mm bmm mv dot
    einsum outer addmm addmv baddbmm addbmm""".split()
)
"""Linear while at most one factor depends on the line."""

DIVISIONS = frozenset("div div_ divide true_divide __truediv__ __itruediv__ __div__".split())
"""Linear while the divisor does not depend on the line."""

CHECKED = frozenset(
    "batch_norm dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout".split()
)
"""Linear in eval mode only: refused with batch statistics or active dropout."""

MAX_POOLS = frozenset(
    f"{prefix}max_pool{d}d{suffix}"
    for prefix in ("", "_")
    for d in (1, 2, 3)
    for suffix in ("", "_with_indices")
)

WEIGHTED = frozenset("linear conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d".split())

_POOL_PARAMETERS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


class NotPiecewiseLinear(ValueError):
    """The network computes something that is not piecewise linear along the path."""


def tangent_of(value: Any) -> torch.Tensor | None:
    return fwad.unpack_dual(value).tangent if isinstance(value, torch.Tensor) else None


def _split(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    primal, tangent = fwad.unpack_dual(value)
    return primal.detach(), torch.zeros_like(primal) if tangent is None else tangent.detach()


def _bind(args: Sequence[Any], kwargs: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


class KinkMode(TorchFunctionMode):
    """Collects, for a model batch of ``rows`` rows, the offsets ``left`` (<= 0) and ``right``
    (>= 0) of the nearest kinks around the evaluated point, in units of the line parameter."""

    def __init__(self, rows: int, device: torch.device, layer_name: Callable[[], str]) -> None:
        super().__init__()
        self.rows, self.layer_name = rows, layer_name
        self.left = torch.full((rows,), -torch.inf, dtype=torch.float64, device=device)
        self.right = torch.full((rows,), torch.inf, dtype=torch.float64, device=device)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", repr(func))
        moving = [t for t in _pytree.tree_leaves((args, kwargs)) if tangent_of(t) is not None]
        if not moving:
            return func(*args, **kwargs)
        if name in LINEAR or name in PRODUCTS or name in DIVISIONS or name in CHECKED:
            self._check_linear(name, args, kwargs, len(moving))
            return func(*args, **kwargs)
        kink = _KINKS.get(name)
        if kink is not None:
            with torch.no_grad():
                for u, du in kink(args, kwargs):
                    self._crossings(u, du)
            return func(*args, **kwargs)
        if name in MAX_POOLS:
            out = func(*args, **kwargs)
            with torch.no_grad():
                self._pool(_bind(args, kwargs, _POOL_PARAMETERS), out[0] if isinstance(out, tuple) else out)
            return out
        self._refuse(name)

    def _refuse(self, name: str, why: str = "is not piecewise linear") -> Any:
        raise NotPiecewiseLinear(
            f"method='exact' needs a piecewise-linear network along the path, but {name} in "
            f"{self.layer_name()} {why}; use method='adaptive' (or a fixed rule) for this model"
        )

    def _check_linear(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], moving: int) -> None:
        why = checked_calls(name, args, kwargs)
        if why is not None:
            self._refuse(name, why)
        if name in PRODUCTS and moving > 1:
            self._refuse(name, "multiplies two tensors that both vary along the path")
        if name in DIVISIONS and len(args) > 1 and tangent_of(args[1]) is not None:
            self._refuse(name, "divides by a tensor that varies along the path")
        if name in WEIGHTED and len(args) > 1 and tangent_of(args[1]) is not None:
            self._refuse(name, "has weights that vary along the path")
        if name in ("to", "type") and any(
            isinstance(a, torch.dtype) and not a.is_floating_point for a in (*args, *kwargs.values())
        ):
            self._refuse(name, "casts to an integer type")

    def _crossings(self, u: torch.Tensor, du: torch.Tensor) -> None:
        """Fold the sign changes of ``u + s du`` (at ``s = -u / du``) into ``left``/``right``."""
        u, du = torch.broadcast_tensors(u, du)
        offsets = (-u / du).to(torch.float64)  # nan where u = du = 0: a unit that never moves
        offsets = torch.where(du == 0, torch.nan, offsets)
        ahead = torch.where(offsets >= 0, offsets, torch.inf)
        behind = torch.where(offsets <= 0, offsets, -torch.inf)
        if u.dim() and u.shape[0] == self.rows:
            self.right = torch.minimum(self.right, ahead.reshape(self.rows, -1).amin(1))
            self.left = torch.maximum(self.left, behind.reshape(self.rows, -1).amax(1))
        else:  # no batch dimension to attribute the kinks to: they bound every row (safe)
            self.right = torch.minimum(self.right, ahead.amin())
            self.left = torch.maximum(self.left, behind.amax())

    def _pool(self, bound: dict[str, Any], out: torch.Tensor) -> None:
        """Max pooling switches winner where another window element catches up with the max:
        ``u_k = max - v_k`` changes sign."""
        value, tangent = _split(bound["input"])
        result, result_tangent = _split(out)
        spatial = len(out.shape) - (2 if value.dim() == out.dim() else 1)
        if value.dim() == spatial + 1:  # unbatched [C, *S]
            value, tangent = value.unsqueeze(0), tangent.unsqueeze(0)
            result, result_tangent = result.unsqueeze(0), result_tangent.unsqueeze(0)

        def per_dim(option: Any, default: Any) -> list[int]:
            option = default if option is None or option == [] else option
            return (
                list(option) * (spatial if len(list(option)) == 1 else 1)
                if isinstance(option, (list, tuple))
                else [int(option)] * spatial
            )

        kernel = per_dim(bound["kernel_size"], 1)
        stride = per_dim(bound.get("stride"), kernel)
        padding = per_dim(bound.get("padding", 0), 0)
        dilation = per_dim(bound.get("dilation", 1), 1)
        pads: list[int] = []
        for d in reversed(range(spatial)):  # F.pad lists the last dimension first
            span = (result.shape[2 + d] - 1) * stride[d] + (kernel[d] - 1) * dilation[d] + 1
            pads += [padding[d], span - value.shape[2 + d] - padding[d]]
        windows = F.pad(value, pads, value=-torch.inf)
        window_tangents = F.pad(tangent, pads, value=0.0)
        for d in range(spatial):
            size = (kernel[d] - 1) * dilation[d] + 1
            windows = windows.unfold(2 + d, size, stride[d])
            window_tangents = window_tangents.unfold(2 + d, size, stride[d])
        for d in range(spatial):  # the window dims are last; keep every dilation-th element
            index = torch.arange(0, (kernel[d] - 1) * dilation[d] + 1, dilation[d], device=value.device)
            windows = windows.index_select(windows.dim() - spatial + d, index)
            window_tangents = window_tangents.index_select(window_tangents.dim() - spatial + d, index)
        windows = windows.flatten(-spatial)
        window_tangents = window_tangents.flatten(-spatial)
        u = result.unsqueeze(-1) - windows
        du = result_tangent.unsqueeze(-1) - window_tangents
        self._crossings(torch.where(torch.isfinite(u), u, torch.nan), du)


def _relu(args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [_split(args[0] if args else kwargs["input"])]


def _hardtanh(low: float, high: float, names: Sequence[str]) -> Callable[..., Any]:
    def kinks(args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        bound = _bind(args, kwargs, names)
        value, tangent = _split(bound["input"])
        bounds = [bound.get(names[1], low), bound.get(names[2], high)] if len(names) > 2 else [low, high]
        return [(value - c, tangent) for c in bounds if c is not None]

    return kinks


def _clamp(args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    bound = _bind(args, kwargs, ("input", "min", "max"))
    value, tangent = _split(bound["input"])
    result = []
    for key in ("min", "max"):
        limit = bound.get(key)
        if isinstance(limit, torch.Tensor):
            limit_value, limit_tangent = _split(limit)
            result.append((value - limit_value, tangent - limit_tangent))
        elif limit is not None:
            result.append((value - limit, tangent))
    return result


def _one_bound(key: str) -> Callable[..., Any]:
    def kinks(args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return _clamp(
            [args[0] if args else kwargs["input"]], {key: args[1] if len(args) > 1 else kwargs[key]}
        )

    return kinks


def _pair(args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    bound = _bind(args, kwargs, ("input", "other"))
    (a, da), (b, db) = _split(torch.as_tensor(bound["input"])), _split(torch.as_tensor(bound["other"]))
    return [(a - b, da - db)]


_KINKS: dict[str, Callable[..., list[tuple[torch.Tensor, torch.Tensor]]]] = {
    **dict.fromkeys(
        ("relu", "relu_", "leaky_relu", "leaky_relu_", "prelu", "abs", "abs_", "absolute"), _relu
    ),
    "relu6": _hardtanh(0.0, 6.0, ("input",)),
    "hardtanh": _hardtanh(-1.0, 1.0, ("input", "min_val", "max_val")),
    "hardtanh_": _hardtanh(-1.0, 1.0, ("input", "min_val", "max_val")),
    **dict.fromkeys(("clamp", "clamp_", "clip", "clip_"), _clamp),
    "clamp_min": _one_bound("min"),
    "clamp_min_": _one_bound("min"),
    "clamp_max": _one_bound("max"),
    "clamp_max_": _one_bound("max"),
    **dict.fromkeys(("maximum", "minimum", "fmax", "fmin"), _pair),
}


def checked_calls(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> str | None:
    """Why a linear-looking call is not linear here (batch statistics, dropout), or None."""
    if name == "batch_norm":
        bound = _bind(args, kwargs, ("input", "running_mean", "running_var", "weight", "bias", "training"))
        if bound.get("training", False):
            return "normalizes with batch statistics (training mode or no running statistics)"
    if "dropout" in name:
        bound = _bind(args, kwargs, ("input", "p", "training"))
        if bound.get("training", True) and bound.get("p", 0.5) > 0:
            return "drops units at random (training mode)"
    return None


class ModuleNames:
    """The name of the module running now, from forward pre/post hooks on every submodule."""

    def __init__(self, model: Any) -> None:
        self.stack: list[str] = []
        self.handles: list[Any] = []
        if isinstance(model, nn.Module):
            for name, module in model.named_modules():
                label = (
                    f"layer '{name}' ({type(module).__name__})"
                    if name
                    else f"the model ({type(module).__name__})"
                )
                self.handles.append(module.register_forward_pre_hook(functools.partial(self._enter, label)))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, label: str, *_: Any) -> None:
        self.stack.append(label)

    def _leave(self, *_: Any) -> None:
        if self.stack:
            self.stack.pop()

    def current(self) -> str:
        return self.stack[-1] if self.stack else "the model's forward function"

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
