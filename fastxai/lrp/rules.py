"""LRP rules: each states only what it modifies (inputs, weights, bias), never how to propagate.

A rule for a linear layer (``nn.Linear``, ``nn.Conv1d/2d/3d``, a BatchNorm merged into one) is a
list of *groups*; a group is a sum of *terms*; a term is the layer applied to a modified input
with modified parameters. For a layer ``L(a; W, b)`` and the relevance ``R`` of its outputs the
engine (``fastxai.lrp._linear``) computes, for every group ``g`` with terms ``t``::

    z_g = sum_t sign_t * L(input_t; W_t, b_t)                  (stored output when it is L(a; W, b))
    s_g = R * mask_g / (z_g + stabilizer * sign0(z_g))          fastxai.ops.lrp_divide
    R_in = sum_g coefficient_g * sum_t sign_t * input_t * L^T(s_g; W_t)   fastxai.ops.lrp_product

with ``L^T`` the transposed layer op (``x @ W`` for Linear, the input-gradient convolution for
convolutions). Element-wise layers take ``Pass`` (``R_in = R``).

Montavon et al., "Layer-wise relevance propagation: an overview", 2019, gives every rule here.

Captum's rules (``captum.attr._utils.lrp_rules``) are one group of one term on the unsplit
input ``a``: ``z = L(a; W', b)``, ``R_in = a * L^T(R / (z + eps sign0(z)); W')``, with the bias
kept as it is (or dropped with ``set_bias_to_zero=True``) and ``eps = 1e-9``:

- ``EpsilonRule(epsilon)`` is ``Epsilon(epsilon)``; ``IdentityRule`` is ``Pass`` (``R_in = R``,
  also for a Linear/Conv whose output has its input's shape);
- ``GammaRule(gamma)``: ``W' = W + gamma W+``. It equals ``Gamma(gamma)`` where ``a >= 0``,
  ``z > 0`` and the bias is zero; ``Gamma`` also raises the bias (``b + gamma b+``) and, for
  signed inputs or ``z < 0``, favours the contributions of ``z``'s sign (Zennit's form);
- ``Alpha1_Beta0_Rule``: ``W' = W+``. It equals ``ZPlus()`` where ``a >= 0`` and ``b >= 0``;
  ``ZPlus`` takes ``b+`` and splits signed inputs (``a+ W+ + a- W-``).

``fastxai.compat``'s ``LRP`` builds Captum's forms from ``Term`` and ``Group`` (its numbers
are Captum's); ``fastxai.lrp`` users pick ``Gamma`` / ``ZPlus``.

>>> from fastxai.lrp import rules
>>> composite = {nn.Conv2d: rules.Gamma(0.25), nn.Linear: rules.Epsilon(1e-6)}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Modifier = tuple[object, ...]
"""A parameter modifier, by name: ``("id",)``, ``("pos",)``, ``("neg",)``, ``("gamma", g, "pos")``,
``("gamma", g, "neg")``, ``("square",)``, ``("ones",)``. ``fastxai.lrp._linear.modify`` applies one."""

INPUTS = ("a", "a+", "a-", "ones", "low", "high")
"""What a term feeds the layer: the input ``a``, its positive / negative part, ones, or the box bounds."""


@dataclass(frozen=True)
class Term:
    """One summand ``sign * L(input; weight, bias)``; ``bias=None`` drops the bias."""

    input: str
    weight: Modifier
    bias: Modifier | None
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    """Terms sharing one denominator ``z``; ``mask`` keeps the outputs where the unmodified ``z``
    is ``"positive"`` (> 0) or ``"negative"`` (< 0), None keeps all."""

    terms: tuple[Term, ...]
    coefficient: float = 1.0
    mask: str | None = None


def _check_float(name: str, value: object, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite float, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


class Rule:
    """Base class. ``groups`` describe the linear-layer redistribution; ``stabilizer`` is the
    ``eps`` of ``lrp_divide``."""

    stabilizer: float = 1e-6

    def groups(self) -> tuple[Group, ...]:
        raise NotImplementedError(f"{type(self).__name__} is not a rule for linear layers")

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items())
        return f"{type(self).__name__}({fields})"


_W: Modifier = ("id",)
_POS: Modifier = ("pos",)
_NEG: Modifier = ("neg",)


class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015): ``R_i = sum_j a_i w_ij / (z_j + eps sign0(z_j)) R_j``,
    ``z_j = sum_i a_i w_ij + b_j``. ``epsilon=0`` is LRP-0."""

    def __init__(self, epsilon: float = 1e-6) -> None:
        self.epsilon = _check_float("epsilon", epsilon)
        self.stabilizer = self.epsilon

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("a", _W, _W),)),)


class Gamma(Rule):
    """LRP-gamma, generalised to signed inputs and outputs as in Zennit: where ``z > 0`` the
    weights favour positive contributions, ``a+ (w + g w+) + a- (w + g w-)`` with bias
    ``b + g b+``; where ``z < 0`` negative ones, ``a+ (w + g w-) + a- (w + g w+)`` with bias
    ``b + g b-``. For ``a >= 0`` and ``z > 0`` it is Montavon et al.'s
    ``R_i = sum_j a_i (w_ij + g w_ij+) / sum_i a_i (w_ij + g w_ij+) R_j``."""

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6) -> None:
        self.gamma = _check_float("gamma", gamma)
        self.stabilizer = _check_float("stabilizer", stabilizer)

    def groups(self) -> tuple[Group, ...]:
        up: Modifier = ("gamma", self.gamma, "pos")
        down: Modifier = ("gamma", self.gamma, "neg")
        return (
            Group((Term("a+", up, up), Term("a-", down, None)), mask="positive"),
            Group((Term("a+", down, down), Term("a-", up, None)), mask="negative"),
        )


class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015): ``R_i = sum_j (alpha (a_i w_ij)+ / z_j+ - beta
    (a_i w_ij)- / z_j-) R_j`` with ``z_j+ = sum_i (a_i w_ij)+ + b_j+``, ``z_j- = sum_i (a_i
    w_ij)- + b_j-``; ``alpha - beta = 1`` keeps relevance conserved."""

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6) -> None:
        self.alpha = _check_float("alpha", alpha)
        self.beta = _check_float("beta", beta)
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(f"alpha - beta must be 1, got alpha={alpha}, beta={beta}")
        self.stabilizer = _check_float("stabilizer", stabilizer)

    def groups(self) -> tuple[Group, ...]:
        positive = Group((Term("a+", _POS, _POS), Term("a-", _NEG, None)), coefficient=self.alpha)
        if self.beta == 0.0:
            return (positive,)
        negative = Group((Term("a+", _NEG, _NEG), Term("a-", _POS, None)), coefficient=-self.beta)
        return (positive, negative)


class ZPlus(AlphaBeta):
    """The z+ rule, ``AlphaBeta(alpha=1, beta=0)``: ``R_i = sum_j (a_i w_ij)+ / z_j+ R_j``."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        super().__init__(1.0, 0.0, stabilizer)


class ZBox(Rule):
    """The z^B rule for a first layer with inputs in ``[low, high]`` (Montavon et al. 2017):
    ``R_i = sum_j (a_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i (...) R_j``. ``low`` and ``high``
    are floats or tensors broadcastable to one input ``[*F]``."""

    def __init__(
        self, low: float | torch.Tensor, high: float | torch.Tensor, stabilizer: float = 1e-6
    ) -> None:
        for name, value in (("low", low), ("high", high)):
            if not isinstance(value, (int, float, torch.Tensor)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
        self.low = low
        self.high = high
        self.stabilizer = _check_float("stabilizer", stabilizer)

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("a", _W, None), Term("low", _POS, None, -1.0), Term("high", _NEG, None, -1.0))),)


class Flat(Rule):
    """The flat rule (Lapuschkin et al. 2019): every input of an output's receptive field gets an
    equal share, ``R_i = sum_j 1 / sum_i 1 R_j`` (weights ones, no bias)."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = _check_float("stabilizer", stabilizer)

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("ones", ("ones",), None),)),)


class WSquare(Rule):
    """The w^2 rule (Montavon et al. 2017): ``R_i = sum_j w_ij^2 / sum_i w_ij^2 R_j`` (no bias;
    Zennit keeps a squared bias in the denominator, the textbook rule does not)."""

    def __init__(self, stabilizer: float = 1e-6) -> None:
        self.stabilizer = _check_float("stabilizer", stabilizer)

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term("ones", ("square",), None),)),)


class Pass(Rule):
    """Pass-through for element-wise layers (activations, dropout): ``R_in = R``."""

    def __init__(self) -> None:
        self.stabilizer = 0.0


__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Group",
    "Pass",
    "Rule",
    "Term",
    "WSquare",
    "ZBox",
    "ZPlus",
]
