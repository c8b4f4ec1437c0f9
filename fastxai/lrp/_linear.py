"""The relevance pass through one linear layer (Linear, ConvNd, optionally with a merged BatchNorm).

``propagate`` evaluates a rule's groups (see ``fastxai.lrp.rules``): the modified forward op for
the denominators, ``fastxai.ops.lrp_divide``, the transposed op (``s @ W`` or the input-gradient
convolution, the kernel autograd itself would call, without building a graph) and
``fastxai.ops.lrp_product``. Modified parameters are prepared once per (module, modifier) and
cached until a parameter or BatchNorm statistic changes. The flat rule never builds its all-ones
tensors (``_flat``: relevance summed over output channels, a depthwise transposed convolution).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastxai import ops
from fastxai.lrp.rules import Flat, Group, Modifier, Rule, Term, ZBox

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = (nn.Linear, *CONV_TYPES)
BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def modify(parameter: torch.Tensor, modifier: Modifier) -> torch.Tensor:
    """A rule's parameter modifier: see ``fastxai.lrp.rules.Modifier``."""
    kind = modifier[0]
    if kind == "id":
        return parameter
    if kind == "pos":
        return parameter.clamp(min=0)
    if kind == "neg":
        return parameter.clamp(max=0)
    if kind == "gamma":
        gamma, part = float(str(modifier[1])), modifier[2]
        return parameter + gamma * (parameter.clamp(min=0) if part == "pos" else parameter.clamp(max=0))
    if kind == "square":
        return parameter * parameter
    if kind == "ones":
        return torch.ones_like(parameter)
    raise ValueError(f"unknown parameter modifier {modifier!r}")


def _conv_padding(module: Any) -> tuple[int, ...]:
    dims = len(module.kernel_size)
    if module.padding_mode != "zeros":
        raise ValueError(
            f"unsupported layer: Conv with padding_mode={module.padding_mode!r} (only 'zeros' has a "
            "transposed op); pad explicitly with F.pad before the convolution"
        )
    padding = module.padding
    if padding == "valid":
        return (0,) * dims
    if padding == "same":
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        if any(total % 2 for total in totals):
            raise ValueError("unsupported layer: Conv with padding='same' and an even receptive field")
        return tuple(total // 2 for total in totals)
    return tuple(padding)


@dataclass
class LinearLayer:
    """A linear layer of the relevance pass: ``module`` (Linear/ConvNd) and the BatchNorm merged
    into it, if any. ``forward`` and ``transposed`` run the op with given (modified) parameters."""

    module: Any  # nn.Linear / nn.ConvNd (typed Any: its attributes are read freely)
    batchnorm: Any = None

    def __post_init__(self) -> None:
        self.is_conv = isinstance(self.module, CONV_TYPES)
        if self.is_conv:
            self.dims = len(self.module.kernel_size)
            _conv_padding(self.module)  # checks the padding mode now

    # read from the module at every call: plans (and these layers) are cached across calls
    @property
    def padding(self) -> tuple[int, ...]:
        return _conv_padding(self.module)

    @property
    def stride(self) -> tuple[int, ...]:
        return tuple(self.module.stride)

    @property
    def dilation(self) -> tuple[int, ...]:
        return tuple(self.module.dilation)

    @property
    def groups(self) -> int:
        return int(self.module.groups)

    def forward(
        self, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int | None = None
    ) -> torch.Tensor:
        if not self.is_conv:
            return F.linear(inputs, weight, bias)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.dims - 1]
        groups = self.groups if groups is None else groups
        return conv(inputs, weight, bias, self.stride, self.padding, self.dilation, groups)

    def transposed(
        self,
        s: torch.Tensor,
        weight: torch.Tensor,
        input_shape: Sequence[int] | torch.Tensor,
        groups: int | None = None,
    ) -> torch.Tensor:
        """``L^T(s)``: the vector-Jacobian product of the layer (without its bias) with ``s``
        (``groups`` overrides the convolution's, for the flat rule's channel-summed pass).
        ``input_shape``: the input's shape, or the input itself (only its shape and memory
        layout are read: a channels-last input gives a channels-last result, without copies)."""
        if not self.is_conv:
            return s.matmul(weight)
        if isinstance(input_shape, torch.Tensor):
            like = input_shape
        else:
            like = s.new_empty(1).expand(*input_shape)
        return torch.ops.aten.convolution_backward(
            s,
            like,
            weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            False,
            (0,) * self.dims,
            self.groups if groups is None else groups,
            (True, False, False),
        )[0]

    # -- parameters: effective (BatchNorm merged), modified, cached ---------------------------

    def _tensors(self) -> list[torch.Tensor]:
        tensors = [self.module.weight]
        if self.module.bias is not None:
            tensors.append(self.module.bias)
        if self.batchnorm is not None:
            bn = self.batchnorm
            tensors += [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]
        return tensors

    def _signature(self) -> tuple[Any, ...]:
        parts: list[Any] = [id(self.batchnorm)]
        for tensor in self._tensors():
            try:
                version = tensor._version
            except RuntimeError:  # inference tensors have no version counter
                version = None
            parts.append((version, tensor.data_ptr(), tensor.dtype, tensor.device, tuple(tensor.shape)))
        if self.batchnorm is not None:
            parts.append(float(self.batchnorm.eps))
        return tuple(parts)

    def effective(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the layer with its BatchNorm merged (a zero bias when it has none)."""
        weight = self.module.weight.detach().to(dtype)
        bias = (
            self.module.bias.detach().to(dtype)
            if self.module.bias is not None
            else weight.new_zeros(weight.shape[0])
        )
        if self.batchnorm is None:
            return weight, bias
        return merge_batchnorm(weight, bias, self.batchnorm)

    def store(self) -> dict[Any, torch.Tensor]:
        """The cache of modified parameters, emptied when a parameter or statistic changed."""
        entry = _CACHE.get(self.module)
        signature = self._signature()
        if entry is None or entry[0] != signature:
            entry = (signature, {})
            _CACHE[self.module] = entry
        return entry[1]

    def parameter(
        self,
        dtype: torch.dtype,
        which: str,
        modifier: Modifier,
        store: dict[Any, torch.Tensor] | None = None,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """The effective ``"weight"`` or ``"bias"`` with ``modifier`` applied, cached (``store``:
        from ``self.store()``, checked once per relevance step rather than once per parameter).
        ``channels_last``: a 4-d weight in the layout oneDNN would otherwise convert it to at
        every convolution with channels-last activations."""
        store = self.store() if store is None else store
        channels_last = channels_last and which == "weight" and self.is_conv and self.dims == 2
        key = (dtype, which, modifier, channels_last)
        if key not in store:
            weight, bias = self.effective(dtype)
            value = modify(weight if which == "weight" else bias, modifier)
            store[key] = value.contiguous(memory_format=torch.channels_last) if channels_last else value
        return store[key]


_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], dict[Any, Any]]] = weakref.WeakKeyDictionary()


def merge_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor, batchnorm: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``BN(L(a; W, b)) = L(a; W', b')`` in eval mode: ``W' = W * scale`` along the output
    channels, ``b' = (b - mean) * scale + beta``, ``scale = gamma / sqrt(var + eps)``."""
    if batchnorm.running_mean is None or batchnorm.running_var is None:
        raise ValueError(
            f"unsupported layer: {type(batchnorm).__name__} without running statistics "
            "(track_running_stats=False) normalises with batch statistics"
        )
    dtype = weight.dtype
    var = batchnorm.running_var.detach().to(dtype)
    mean = batchnorm.running_mean.detach().to(dtype)
    scale = torch.rsqrt(var + batchnorm.eps)
    if batchnorm.weight is not None:
        scale = scale * batchnorm.weight.detach().to(dtype)
    shift = -mean * scale
    if batchnorm.bias is not None:
        shift = shift + batchnorm.bias.detach().to(dtype)
    merged_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    return merged_weight, bias * scale + shift


def _term_input(term: Term, rule: Rule, inputs: torch.Tensor, nonnegative: bool) -> torch.Tensor:
    if term.input == "a" or (term.input == "a+" and nonnegative):
        return inputs
    if term.input == "a+":
        return inputs.clamp(min=0)
    if term.input == "a-":
        return inputs.clamp(max=0)
    if term.input == "ones":
        return torch.ones_like(inputs)
    assert isinstance(rule, ZBox)
    bound = rule.low if term.input == "low" else rule.high
    return torch.as_tensor(bound, dtype=inputs.dtype, device=inputs.device).expand(inputs.shape)


def _skipped(term: Term, nonnegative: bool) -> bool:
    return nonnegative and term.input == "a-"


def propagate(
    layer: LinearLayer,
    rule: Rule,
    inputs: torch.Tensor,
    output: torch.Tensor | None,
    relevance: torch.Tensor,
    *,
    nonnegative: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Relevance of the layer's inputs: see ``fastxai.lrp.rules`` for the formula.

    inputs: the layer's input ``a`` [B, ...]; output: its (BatchNorm-merged) output ``z`` (None
    when the forward pass dropped it: only rules for which ``reads_output`` is True need it);
    relevance: [output's shape]; all in the compute dtype. ``nonnegative`` says ``a >= 0``
    (known from the graph), which drops the ``a-`` terms.
    """
    dtype = relevance.dtype
    groups = rule.groups()
    if groups == FLAT_GROUPS:
        return _flat(layer, rule, inputs, relevance, backend)
    contributions: dict[str, list[tuple[float, torch.Tensor]]] = {}
    term_inputs: dict[str, torch.Tensor] = {}
    store = layer.store()
    layout = is_channels_last(inputs)
    for group in groups:
        terms = [term for term in group.terms if not _skipped(term, nonnegative)]
        z = _denominator(
            layer, group, terms, rule, inputs, output, term_inputs, dtype, nonnegative, store, layout
        )
        masked = relevance
        if group.mask is not None:
            assert output is not None
            masked = relevance * (output > 0 if group.mask == "positive" else output < 0)
        s = ops.lrp_divide(masked, z, rule.stabilizer, backend=backend)
        del z, masked  # freed now, their memory serves the next allocation
        for term in terms:
            weight = layer.parameter(dtype, "weight", term.weight, store, layout)
            c = layer.transposed(s, weight, inputs)
            contributions.setdefault(term.input, []).append((group.coefficient * term.sign, c))
        del s
    total: torch.Tensor | None = None
    for name, entries in contributions.items():
        part = _product(term_inputs[name], entries, name == "ones", backend)
        total = part if total is None else total.add_(part)
    assert total is not None
    return total


PLAIN = Term("a", ("id",), ("id",))


def reads_output(rule: Rule) -> bool:
    """Whether ``propagate`` reads the layer's stored output (for a mask or an unmodified z)."""
    return any(group.mask is not None or PLAIN in group.terms for group in rule.groups())


def _denominator(
    layer: LinearLayer,
    group: Group,
    terms: list[Term],
    rule: Rule,
    inputs: torch.Tensor,
    output: torch.Tensor | None,
    term_inputs: dict[str, torch.Tensor],
    dtype: torch.dtype,
    nonnegative: bool,
    store: dict[Any, torch.Tensor],
    layout: bool,
) -> torch.Tensor:
    for term in terms:
        if term.input not in term_inputs:
            term_inputs[term.input] = _term_input(term, rule, inputs, nonnegative)
    if len(terms) == 1 and terms[0] == PLAIN:
        assert output is not None
        return output  # the unmodified layer: z is the stored forward output
    z: torch.Tensor | None = None
    for term in terms:
        weight = layer.parameter(dtype, "weight", term.weight, store, layout)
        bias = None if term.bias is None else layer.parameter(dtype, "bias", term.bias, store)
        value = layer.forward(term_inputs[term.input], weight, bias)
        if term.sign != 1.0:
            value = value.mul_(term.sign)
        z = value if z is None else z.add_(value)
    assert z is not None
    return z


def is_channels_last(*tensors: torch.Tensor) -> bool:
    """Whether all ``tensors`` are 4-d channels-last (and not also plain contiguous): the
    layout of ``lrp``'s pass on the CPU, which the handlers keep."""
    return all(
        t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
        for t in tensors
    )


FLAT_GROUPS = Flat().groups()


def _flat(
    layer: LinearLayer, rule: Rule, inputs: torch.Tensor, relevance: torch.Tensor, backend: str | None
) -> torch.Tensor:
    """The flat rule without its all-ones tensors. Output ``j``'s denominator is the size of its
    receptive field, ``z_j = C_in / groups * n_j`` with ``n_j`` the kernel positions inside the
    input (one single-channel convolution of ones, batch 1). ``z_j`` is the same for every output
    channel of a location, and ``L^T`` with all-ones weights gives every input channel of a group
    the same value, so ``R`` is summed over the group's output channels first:
    ``R_i = sum_(j at locations covering i) (sum_(o in group) R_oj) / z_j``, one depthwise
    transposed convolution of ones (``C_out * C_in / groups`` times less work)."""
    if not layer.is_conv:
        summed = relevance.sum(-1, keepdim=True)
        z = summed.new_full((1,) * summed.dim(), float(inputs.shape[-1])).expand(summed.shape)
        return ops.lrp_divide(summed, z, rule.stabilizer, backend=backend).expand(inputs.shape).contiguous()
    groups = layer.groups
    batch, channels_out, *spatial_out = relevance.shape
    channels_in, spatial_in = inputs.shape[1], tuple(inputs.shape[2:])
    kernel = tuple(layer.module.kernel_size)
    count = layer.forward(relevance.new_ones(1, 1, *spatial_in), relevance.new_ones(1, 1, *kernel), None, 1)
    if groups == 1:
        summed = relevance.sum(1, keepdim=True)  # any layout: no copy of a channels-last relevance
    else:
        summed = relevance.reshape(batch, groups, channels_out // groups, *spatial_out).sum(2)
    z = (count * (channels_in // groups)).expand(summed.shape)
    s = ops.lrp_divide(summed, z, rule.stabilizer, backend=backend)
    # batch and groups folded into channels: a depthwise transposed convolution (single-channel
    # ones are a slow path in oneDNN, depthwise ones a fast one)
    ones = relevance.new_ones(batch * groups, 1, *kernel)
    c = layer.transposed(
        s.view(1, batch * groups, *spatial_out), ones, (1, batch * groups, *spatial_in), batch * groups
    )
    c = c.view(batch, groups, 1, *spatial_in)
    return c.expand(batch, groups, channels_in // groups, *spatial_in).reshape(inputs.shape)


def _product(
    term_input: torch.Tensor, entries: list[tuple[float, torch.Tensor]], ones: bool, backend: str | None
) -> torch.Tensor:
    if len(entries) == 2:
        (k_pos, c_pos), (k_neg, c_neg) = entries
        if ones:
            return c_pos.mul_(k_pos).add_(c_neg, alpha=k_neg)
        return ops.lrp_product(term_input, c_pos, c_neg, alpha=k_pos, beta=-k_neg, backend=backend)
    c = entries[0][1] if entries[0][0] == 1.0 else entries[0][1].mul_(entries[0][0])
    for k, extra in entries[1:]:
        c = c.add_(extra, alpha=k)
    if ones:
        return c  # the input is all ones: R_in = c
    return ops.lrp_product(term_input, c, backend=backend)
