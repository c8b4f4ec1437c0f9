"""A sound global L2 Lipschitz bound of a network, and the radius it certifies.

The network is traced with ``torch.fx`` (so ``nn.Sequential`` and residual blocks written
with ``+`` both work) and every node gets a bound ``L(node)`` on the Lipschitz constant of
the map from the input to that node's value: a layer multiplies its input's bound by its
own operator norm, a sum adds bounds, a concatenation takes the root sum of squares.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.nn import functional

from fastxai import _compile, _model, _scheduling
from fastxai._checks import check_positive
from fastxai._model import Model

SAFETY = 1.0 + 1e-6
"""Factor on every norm computed in floating point (float64 SVDs have relative errors of
about 1e-15 times the dimension): it keeps the bound above the exact value."""

_ELEMENTWISE = {
    nn.ReLU: 1.0,
    nn.ReLU6: 1.0,
    nn.Tanh: 1.0,
    nn.Hardtanh: 1.0,
    nn.Softplus: 1.0,
    nn.Sigmoid: 0.25,
    nn.GELU: 1.1290,  # max of GELU' is 1.12890...
    nn.SiLU: 1.0999,  # max of SiLU' is 1.09984...
    nn.Identity: 1.0,
    nn.Dropout: 1.0,  # the identity in eval mode, the mode the bound is for
    nn.Dropout1d: 1.0,
    nn.Dropout2d: 1.0,
    nn.Dropout3d: 1.0,
    nn.Flatten: 1.0,
    nn.Unflatten: 1.0,
}
_RESHAPES = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "permute", "transpose", "contiguous"}
_SUMS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, "add", "sub"}
_SCALINGS = {operator.mul, operator.imul, operator.truediv, torch.mul, "mul", "div", operator.neg, "neg"}
_UNIT = {
    torch.relu,
    functional.relu,
    "relu",
    torch.tanh,
    "tanh",
    functional.dropout,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
}
_CONSTANT_METHODS = {"size", "dim"}
SUPPORTED = (
    "Linear, Conv1d/2d/3d (zeros padding), BatchNorm1d/2d/3d (eval), MaxPool, AvgPool, AdaptiveAvgPool, "
    "AdaptiveMaxPool, ReLU, ReLU6, LeakyReLU, ELU, Tanh, Hardtanh, Sigmoid, Softplus, GELU, SiLU, "
    "Identity, Dropout, Flatten, Unflatten; functions: + and -, scaling by a number, relu, tanh, sigmoid, "
    "flatten/view/reshape/permute, slicing, torch.cat, mean over dimensions"
)


def lipschitz_bound(model: nn.Module, input_shape: Sequence[int] | None = None) -> float:
    """An upper bound ``L`` with ``||f(x) - f(y)||_2 <= L ||x - y||_2`` for all x, y (the model
    in eval mode: BatchNorm uses its running statistics, Dropout is the identity).

    Guarantee (up to the 1e-6 relative margin ``SAFETY`` on floating-point norms): every
    per-layer factor is a proven upper bound of that layer's operator norm, so the product
    along the graph is a sound global bound.

    - Linear: the exact spectral norm (float64 SVD).
    - Conv (zero padding, any stride/dilation/groups), with a following BatchNorm folded in:
      the zero-padded convolution on the given input size is a compression of a circular
      convolution on a grid of ``N >= n + padding`` points (multiple of the stride), whose norm
      is exactly the largest singular value of the kernel's DFT over the polyphase components
      (Sedghi et al. 2019, extended to strides). Sound, and tight up to the boundary effect.
    - BatchNorm alone: ``max |gamma| / sqrt(var + eps)``.
    - AvgPool / AdaptiveAvgPool: Schur's test ``sqrt(||A||_1 ||A||_inf)`` computed exactly on
      the input size (exact for non-overlapping windows: ``1/sqrt(k)``).
    - MaxPool: ``sqrt(windows per element)``, since ``|max_W x - max_W y| <= ||(x - y)_W||_2``.
    - Activations: the sup of |derivative| (ReLU 1, Sigmoid 1/4, LeakyReLU max(1, |slope|), ...).
    - ``a + b``: ``L(a) + L(b)``; ``cat``: ``sqrt(sum L_i^2)``.

    ``input_shape`` (one input, without the batch) is required when the model has convolutions
    or shape-dependent pools. An unsupported layer or function raises a ValueError naming it.

    >>> L = fastxai.certify.lipschitz_bound(model, input_shape=(1, 8, 8))
    >>> radius = fastxai.certify.lipschitz_radius(model, x, bound=L)
    """
    model = _compile.original(model)  # torch.fx cannot trace a compiled model: its module
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module (it is traced with torch.fx), got {type(model).__name__}"
        )
    shape = _check_shape(input_shape)
    single_layer = type(model).__module__.startswith("torch.nn.modules") and not isinstance(
        model, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    )
    try:
        # fx traces into a lone library layer (nn.Linear becomes F.linear): wrap it to keep it a leaf.
        graph_module = fx.symbolic_trace(nn.Sequential(model) if single_layer else model)
    except Exception as error:  # tracing raises many types; the message says why
        raise ValueError(
            f"lipschitz_bound traces the model with torch.fx and tracing failed: {error}"
        ) from error
    modules = dict(graph_module.named_modules())
    nodes = list(graph_module.graph.nodes)
    if sum(node.op == "placeholder" for node in nodes) != 1:
        raise ValueError("lipschitz_bound supports models with exactly one input tensor")
    for node in nodes:
        _check_supported(node, modules)
    with _model.preserved_state(model):
        if shape is not None:
            from torch.fx.passes.shape_prop import ShapeProp

            parameter = next(iter(model.parameters()), None)
            dtype = parameter.dtype if parameter is not None else torch.float32
            device = parameter.device if parameter is not None else torch.device("cpu")
            with torch.no_grad():
                ShapeProp(graph_module).propagate(torch.zeros(1, *shape, dtype=dtype, device=device))
        bounds: dict[fx.Node, float | None] = {}
        folded = _fold_pairs(nodes, modules)
        for node in nodes:
            if node.op == "output":
                result = bounds[node.args[0]] if isinstance(node.args[0], fx.Node) else None
                if result is None:
                    raise ValueError("the model's output does not depend on its input")
                return float(result)
            if node in folded.values():
                bounds[node] = None  # bounded together with the BatchNorm that follows it
                continue
            bounds[node] = _node_bound(node, modules, bounds, folded.get(node))
    raise ValueError("the traced model has no output")


def lipschitz_radius(
    model: Model, inputs: torch.Tensor, *, bound: float | None = None, chunk_size: int | None = None
) -> torch.Tensor:
    """Certified L2 radius of each prediction: ``margin / (sqrt(2) * L)``, [B] float32.

    ``margin = f_top1(x) - f_top2(x)``. A label change to class j needs ``f_j - f_y`` to grow
    by the margin; ``f_j - f_y = (e_j - e_y)^T f`` is ``||e_j - e_y||_2 L = sqrt(2) L``-Lipschitz,
    so no perturbation with ``||delta||_2 < margin / (sqrt(2) L)`` changes the prediction.
    ``bound`` defaults to ``lipschitz_bound(model, inputs.shape[1:])``.

    >>> radius = fastxai.certify.lipschitz_radius(model, x)
    """
    model = _compile.original(_model.check_model(model))
    x = _model.check_inputs(inputs).detach()
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x)
    if bound is None:
        if not isinstance(model, nn.Module):
            raise TypeError("bound is required when model is not an nn.Module")
        bound = lipschitz_bound(model, tuple(x.shape[1:]))
    bound = check_positive("bound", bound)
    with _model.preserved_state(model), torch.no_grad():
        outputs = torch.cat(
            [_model.logits(model, x[start : start + chunk]).double() for start in range(0, x.shape[0], chunk)]
        )
    if outputs.shape[1] < 2:
        raise ValueError("lipschitz_radius needs a model with at least 2 outputs (classes)")
    top2 = outputs.topk(2, dim=1).values
    return ((top2[:, 0] - top2[:, 1]) / (math.sqrt(2.0) * float(bound))).float()


def _check_shape(input_shape: object) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    if isinstance(input_shape, torch.Size):
        input_shape = tuple(input_shape)
    if (
        not isinstance(input_shape, (tuple, list))
        or not input_shape
        or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in input_shape)
    ):
        raise ValueError(
            "input_shape must be the shape of one input without the batch, e.g. (1, 8, 8), "
            f"got {input_shape!r}"
        )
    return tuple(input_shape)


def _describe(node: fx.Node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return f"{name!r} (graph node {node.name})"


def _check_supported(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    if node.op in ("placeholder", "output", "get_attr"):
        return
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, nn.modules.conv._ConvNd):
            if module.transposed or module.padding_mode != "zeros":
                raise ValueError(
                    f"lipschitz_bound does not support layer {node.target!r} ({module}): "
                    "only non-transposed convolutions with zeros padding"
                )
            return
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.running_var is None:
                raise ValueError(
                    f"lipschitz_bound does not support layer {node.target!r}: BatchNorm without running "
                    "statistics depends on the batch"
                )
            return
        # Exact types: a subclass may change what forward computes.
        exact = (nn.Linear, nn.LeakyReLU, nn.ELU, *_ELEMENTWISE)
        pools = (
            nn.modules.pooling._MaxPoolNd,
            nn.modules.pooling._AvgPoolNd,
            nn.modules.pooling._AdaptiveAvgPoolNd,
            nn.modules.pooling._AdaptiveMaxPoolNd,
        )
        if type(module) not in exact and not isinstance(module, pools):
            raise ValueError(
                f"lipschitz_bound does not support layer {node.target!r} ({type(module).__name__}); "
                f"supported: {SUPPORTED}"
            )
        return
    target = node.target if node.op == "call_function" else str(node.target)
    known = (
        _SUMS
        | _SCALINGS
        | _UNIT
        | _RESHAPES
        | _CONSTANT_METHODS
        | {
            torch.sigmoid,
            "sigmoid",
            torch.cat,
            torch.mean,
            "mean",
            operator.getitem,
            getattr,
        }
    )
    if target not in known:
        raise ValueError(
            f"lipschitz_bound does not support the operation {_describe(node)}; supported: {SUPPORTED}"
        )


def _fold_pairs(nodes: list[fx.Node], modules: dict[str, nn.Module]) -> dict[fx.Node, fx.Node]:
    """BatchNorm node -> the Linear/Conv node it directly follows (when nothing else uses it)."""
    pairs = {}
    for node in nodes:
        if node.op != "call_module" or not isinstance(
            modules[str(node.target)], nn.modules.batchnorm._BatchNorm
        ):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[str(source.target)], (nn.Linear, nn.modules.conv._ConvNd))
            and len(source.users) == 1
        ):
            pairs[node] = source
    return pairs


def _shape(node: object, owner: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape[1:]) if meta is not None and hasattr(meta, "shape") else None


def _require_shape(node: object, owner: fx.Node) -> tuple[int, ...]:
    shape = _shape(node, owner)
    if shape is None:
        raise ValueError(f"input_shape is required to bound {_describe(owner)}")
    return shape


def _node_bound(
    node: fx.Node,
    modules: dict[str, nn.Module],
    bounds: dict[fx.Node, float | None],
    folded_source: fx.Node | None,
) -> float | None:
    if node.op == "placeholder":
        return 1.0
    if node.op == "get_attr":
        return None

    def of(argument: object) -> float | None:
        return bounds.get(argument) if isinstance(argument, fx.Node) else None

    if node.op == "call_module":
        module = modules[str(node.target)]
        if folded_source is not None:
            linear = modules[str(folded_source.target)]
            assert isinstance(module, nn.modules.batchnorm._BatchNorm)
            scale = _batchnorm_scale(module)
            incoming = of(folded_source.args[0])
            if incoming is None:
                return None
            return incoming * _affine_norm(linear, scale, folded_source.args[0], folded_source)
        incoming = of(node.args[0])
        if incoming is None:
            return None
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            return incoming * _affine_norm(module, None, node.args[0], node)
        return incoming * _module_factor(module, node)

    target = node.target if node.op == "call_function" else str(node.target)
    inputs = [of(argument) for argument in node.args]
    used: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), used.append)
    dependent = [value for value in (bounds.get(item) for item in used) if value is not None]
    if target in _CONSTANT_METHODS or target is getattr or not dependent:
        return None
    if target in _SUMS:
        alpha = node.kwargs.get("alpha", 1.0)
        second = of(node.args[1]) if len(node.args) > 1 else of(node.kwargs.get("other"))
        return (inputs[0] or 0.0) + abs(float(alpha)) * (second or 0.0)  # type: ignore[arg-type]
    if target in _SCALINGS:
        if len(dependent) != 1 or (target in (operator.truediv, "div") and inputs[0] is None):
            raise ValueError(f"lipschitz_bound supports {_describe(node)} only by a constant number")
        if target in (operator.neg, "neg"):
            return dependent[0]
        other = node.args[1] if inputs[0] is not None else node.args[0]
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            raise ValueError(
                f"lipschitz_bound supports {_describe(node)} only by a constant number, got {other!r}"
            )
        factor = 1.0 / abs(other) if target in (operator.truediv, "div") else abs(other)
        return dependent[0] * factor
    if target in (torch.sigmoid, "sigmoid"):
        return dependent[0] * 0.25
    if target is functional.dropout and (
        node.kwargs.get("training") or (len(node.args) > 2 and node.args[2])
    ):
        raise ValueError(f"lipschitz_bound needs dropout in eval mode: {_describe(node)}")
    if target is torch.cat:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        squares = [(of(tensor) or 0.0) ** 2 for tensor in tensors]  # type: ignore[union-attr]
        return math.sqrt(sum(squares))
    if target is operator.getitem:
        index = node.args[1]
        items = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(item, (int, slice)) or item is None or item is Ellipsis for item in items):
            raise ValueError(
                f"lipschitz_bound supports indexing with ints and slices only: {_describe(node)}"
            )
        return dependent[0]
    if target in (torch.mean, "mean"):
        shape = _require_shape(node.args[0], node)
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if dims is None:
            count = math.prod(shape)
        else:
            dims = dims if isinstance(dims, (tuple, list)) else (dims,)
            full = (1, *shape)
            count = math.prod(full[int(d)] for d in dims)
        return dependent[0] / math.sqrt(count)
    return dependent[0]  # relu, tanh, flatten and the reshapes: 1-Lipschitz


def _batchnorm_scale(module: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    assert module.running_var is not None
    scale = 1.0 / torch.sqrt(module.running_var.detach().double() + module.eps)
    if module.weight is not None:
        scale = scale * module.weight.detach().double()
    return scale


def _module_factor(module: nn.Module, node: fx.Node) -> float:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return float(_batchnorm_scale(module).abs().max()) * SAFETY
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, nn.ELU):
        return max(1.0, abs(module.alpha))
    if type(module) in _ELEMENTWISE:
        return _ELEMENTWISE[type(module)]
    if isinstance(module, nn.modules.pooling._MaxPoolNd):
        dims = _pool_dims(module)
        kernel = _tuple(module.kernel_size, dims)
        stride = _tuple(module.stride or module.kernel_size, dims)
        dilation = _tuple(module.dilation, dims)
        windows = math.prod(
            min(k, (k - 1) * d // s + 1) for k, s, d in zip(kernel, stride, dilation, strict=True)
        )
        return math.sqrt(windows)
    if isinstance(module, nn.modules.pooling._AdaptiveMaxPoolNd):
        dims = _pool_dims(module)
        shape = _require_shape(node.args[0], node)
        outputs = _tuple(module.output_size, dims)
        windows = 1
        for size, out in zip(shape[-dims:], outputs, strict=True):
            out = size if out is None else out
            counts = [0] * size
            for index in range(out):
                for element in range((index * size) // out, -(-((index + 1) * size) // out)):
                    counts[element] += 1
            windows *= max(counts)
        return math.sqrt(windows)
    assert isinstance(module, (nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd))
    known = _shape(node.args[0], node)
    if known is None:
        return _avg_pool_factor_without_shape(module, node)
    return _schur_bound(module, known)


def _pool_dims(module: nn.Module) -> int:
    return int(type(module).__name__[-2])


def _tuple(value: object, dims: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def _avg_pool_factor_without_shape(module: nn.Module, node: fx.Node) -> float:
    if (
        not isinstance(module, nn.modules.pooling._AvgPoolNd)
        or getattr(module, "ceil_mode", False)
        or not getattr(module, "count_include_pad", True)
    ):
        raise ValueError(f"input_shape is required to bound {_describe(node)} ({module})")
    dims = _pool_dims(module)
    kernel = _tuple(module.kernel_size, dims)
    stride = _tuple(module.stride or module.kernel_size, dims)
    overlap = math.prod(min(k, (k - 1) // s + 1) for k, s in zip(kernel, stride, strict=True))
    divisor = getattr(module, "divisor_override", None) or math.prod(kernel)
    # Rows sum to at most k / divisor, columns to at most overlap / divisor (Schur's test).
    return math.sqrt(math.prod(kernel) * overlap) / divisor


def _schur_bound(module: nn.Module, shape: tuple[int, ...]) -> float:
    """``sqrt(max(A 1) * max(A^T 1))`` for a linear map with nonnegative entries: Schur's test."""
    ones = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        output = module(ones)
        (column_sums,) = torch.autograd.grad(output.sum(), ones)
    return math.sqrt(float(output.detach().max()) * float(column_sums.max())) * SAFETY


def _affine_norm(module: nn.Module, scale: torch.Tensor | None, source: object, node: fx.Node) -> float:
    """Operator norm of a Linear or Conv layer (rows scaled by ``scale``, a folded BatchNorm)."""
    parameter = module.weight
    assert isinstance(parameter, torch.Tensor)
    weight = parameter.detach().double()
    if scale is not None:
        weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    if isinstance(module, nn.Linear):
        return float(torch.linalg.matrix_norm(weight, ord=2)) * SAFETY
    assert isinstance(module, nn.modules.conv._ConvNd)
    spatial = _require_shape(source, node)[1:]
    return _conv_norm(module, weight, spatial) * SAFETY


def _conv_norm(module: nn.modules.conv._ConvNd, weight: torch.Tensor, spatial: tuple[int, ...]) -> float:
    dims = weight.dim() - 2
    groups = module.groups
    out_channels, in_per_group = weight.shape[:2]
    if groups > 1:  # a block-diagonal dense kernel: the group structure is exact
        dense = weight.new_zeros(out_channels, in_per_group * groups, *weight.shape[2:])
        out_per_group = out_channels // groups
        for group in range(groups):
            rows = slice(group * out_per_group, (group + 1) * out_per_group)
            dense[rows, group * in_per_group : (group + 1) * in_per_group] = weight[rows]
        weight = dense
    kernel, stride, dilation = weight.shape[2:], module.stride, module.dilation
    if isinstance(module.padding, str):
        total_padding = [
            0 if module.padding == "valid" else (k - 1) * d for k, d in zip(kernel, dilation, strict=True)
        ]
    else:
        total_padding = [2 * p for p in module.padding]
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
    phases = [-(-size // s) for size, s in zip(dilated, stride, strict=True)]
    full = weight.new_zeros(*weight.shape[:2], *[q * s for q, s in zip(phases, stride, strict=True)])
    full[
        (slice(None), slice(None), *[slice(0, size, d) for size, d in zip(dilated, dilation, strict=True)])
    ] = weight
    # Polyphase: index q * s + r -> (r as an input channel, q as the position).
    split = [out_channels, full.shape[1]]
    for q, s in zip(phases, stride, strict=True):
        split += [q, s]
    full = full.reshape(split)
    order = [0, 1, *[3 + 2 * i for i in range(dims)], *[2 + 2 * i for i in range(dims)]]
    poly = full.permute(order).reshape(out_channels, -1, *phases)
    grid = [
        max(q, -(-(n + pad) // s))
        for q, n, pad, s in zip(phases, spatial, total_padding, stride, strict=True)
    ]
    spectrum = torch.fft.fftn(poly, s=grid, dim=list(range(2, 2 + dims)))
    matrices = spectrum.permute(*range(2, 2 + dims), 0, 1).reshape(-1, out_channels, poly.shape[1])
    return float(torch.linalg.matrix_norm(matrices, ord=2).max())
