"""``LRP``: captum.attr.LRP's shape on ``fastxai.lrp``.

    from fastxai.compat._captum_lrp import LRP
    attributions = LRP(model).attribute(x, target=y)

Captum's default rules: the epsilon rule (epsilon 1e-9) for Linear, Conv, average and adaptive
average pooling, max pooling (the gradient of the maximum: winner-take-all) and BatchNorm (its
own step, not merged); pass-through for ReLU, Tanh, Dropout. A Captum ``module.rule`` set by
the user is honoured for ``EpsilonRule`` and ``IdentityRule`` (pass-through, for BatchNorm and
element-wise layers); other Captum rules raise NotImplementedError, as do
``additional_forward_args``, tuple inputs and ``verbose=True``. Unlike Captum, functional
steps (``x + y``, ``torch.cat``) get LRP rules rather than their gradient, and the model is never
modified (no ``rule`` attribute is written onto its modules).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastxai.lrp import core
from fastxai.lrp._linear import LINEAR_TYPES
from fastxai.lrp.composites import Composite
from fastxai.lrp.rules import Epsilon, Pass, Rule

CAPTUM_EPSILON = 1e-9
_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


class LRP:
    """Layer-wise relevance propagation with Captum's constructor and ``attribute``."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.backend: str | None = None
        self._cached: tuple[tuple[Any, ...], Composite] | None = None

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def _composite(self) -> Composite:
        """Captum's defaults plus the rules set on modules; the same object while those rules stay
        the same (fastxai.lrp caches its plan per composite)."""
        found: list[tuple[str, str, float]] = []
        for name, module in self.model.named_modules():
            rule = getattr(module, "rule", None)
            if rule is None:
                continue
            kind = type(rule).__name__
            if kind not in ("EpsilonRule", "IdentityRule"):
                raise NotImplementedError(
                    f"fastxai.compat LRP: Captum rule {kind} on {name!r} is not "
                    "implemented; use fastxai.lrp with a composite instead"
                )
            found.append((name, kind, float(rule.STABILITY_FACTOR)))
        signature = tuple(found)
        if self._cached is not None and self._cached[0] == signature:
            return self._cached[1]
        names: dict[str, Rule] = {
            name: Pass() if kind == "IdentityRule" else Epsilon(epsilon) for name, kind, epsilon in found
        }
        layer_map: list[Any] = [(LINEAR_TYPES, Epsilon(CAPTUM_EPSILON)), (_POOLS, Epsilon(CAPTUM_EPSILON))]
        bn_map: list[Any] = [((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), Epsilon(CAPTUM_EPSILON))]
        composite = Composite(layer_map + bn_map, (), names, stabilizer=CAPTUM_EPSILON)
        self._cached = signature, composite
        return composite

    def attribute(
        self,
        inputs: torch.Tensor,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        verbose: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Relevance of every input element for the target logit, [B, *F]; with
        ``return_convergence_delta`` also ``f_target(x) - sum(R)`` per sample, [B]."""
        if additional_forward_args is not None:
            raise NotImplementedError("fastxai.compat LRP: additional_forward_args is not supported")
        if verbose:
            raise NotImplementedError("fastxai.compat LRP: verbose=True is not supported")
        if isinstance(inputs, tuple):
            raise NotImplementedError("fastxai.compat LRP: tuple inputs are not supported; pass one tensor")
        composite = self._composite()
        if not return_convergence_delta:
            result: Any = core.lrp(
                self.model, inputs, target, composite=composite, merge_batchnorm=False, backend=self.backend
            )
            return result
        both: Any = core.lrp(
            self.model, inputs, target, composite=composite, merge_batchnorm=False,
            return_layer_relevances=True, backend=self.backend,
        )  # fmt: skip
        relevance, layers = both
        delta = -core.conservation({"input": relevance.float(), **layers})["input"]
        return relevance, delta.to(relevance.dtype)

    def compute_convergence_delta(self, attributions: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``output - sum(attributions)`` per sample (Captum's completeness check)."""
        return output.flatten() - attributions.flatten(1).sum(1)
