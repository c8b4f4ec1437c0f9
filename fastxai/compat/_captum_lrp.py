"""``LRP``: captum.attr.LRP's shape on ``fastxai.lrp``.

    from fastxai.compat._captum_lrp import LRP
    attributions = LRP(model).attribute(x, target=y)

Captum's default rules: the epsilon rule (epsilon 1e-9) for Linear, Conv, average and adaptive
average pooling, max pooling (the gradient of the maximum: winner-take-all) and BatchNorm (its
own step, not merged); pass-through for ReLU, Tanh, Dropout. A Captum ``module.rule`` set by
the user is honoured for ``EpsilonRule`` and ``IdentityRule`` (pass-through, for BatchNorm and
element-wise layers); other Captum rules raise NotImplementedError, as does ``verbose=True``.
Tuple inputs each get their relevance; ``additional_forward_args`` are passed after them and get
none (constants of the traced graph, like buffers: the model is traced again for every call that
has them or tuple inputs, and runs the whole batch in one pass). Unlike Captum, functional steps
(``x + y``, ``torch.cat``) get LRP rules rather than their gradient, and the model is never
modified (no ``rule`` attribute is written onto its modules).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastxai.compat._captum_inputs import PackedInputs
from fastxai.lrp import core
from fastxai.lrp._linear import LINEAR_TYPES
from fastxai.lrp.composites import Composite
from fastxai.lrp.rules import Epsilon, Pass, Rule

CAPTUM_EPSILON = 1e-9
_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


class _Bound(nn.Module):
    """``model(*inputs, *extra)`` as one module torch.fx traces from a single input: with several
    inputs that input is their flat concatenation [B, n_1 + n_2 + ...], sliced and reshaped back
    in the graph (steps LRP moves relevance back through); the extra arguments are constants of
    the trace (tensors among them become attributes of this wrapper, never of the model)."""

    def __init__(self, model: nn.Module, packed: PackedInputs | None, extra: tuple[Any, ...]) -> None:
        super().__init__()
        self.model = model
        self.extra = extra
        self.shapes = [] if packed is None else packed.shapes
        self.spans = [] if packed is None else packed.spans

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.shapes:
            return self.model(inputs, *self.extra)
        parts = [
            inputs[:, start:stop].reshape(-1, *shape)
            for (start, stop), shape in zip(self.spans, self.shapes, strict=True)
        ]
        return self.model(*parts, *self.extra)


class LRP:
    """Layer-wise relevance propagation with Captum's constructor and ``attribute``."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.backend: str | None = None
        self._cached: tuple[Any, Composite] | None = None

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def _composite(self, prefix: str = "") -> Composite:
        """Captum's defaults plus the rules set on modules; the same object while those rules stay
        the same (fastxai.lrp caches its plan per composite). ``prefix``: the model's name inside a
        wrapper (``_Bound``), prepended to the module names."""
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
        signature = (prefix, tuple(found))
        if self._cached is not None and self._cached[0] == signature:
            return self._cached[1]
        names: dict[str, Rule] = {
            ".".join(filter(None, (prefix, name))): Pass() if kind == "IdentityRule" else Epsilon(epsilon)
            for name, kind, epsilon in found
        }
        layer_map: list[Any] = [(LINEAR_TYPES, Epsilon(CAPTUM_EPSILON)), (_POOLS, Epsilon(CAPTUM_EPSILON))]
        bn_map: list[Any] = [((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), Epsilon(CAPTUM_EPSILON))]
        composite = Composite(layer_map + bn_map, (), names, stabilizer=CAPTUM_EPSILON)
        self._cached = signature, composite
        return composite

    def attribute(
        self,
        inputs: torch.Tensor | tuple[torch.Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        verbose: bool = False,
    ) -> Any:
        """Relevance of every input element for the target logit, [B, *F] (a tuple of them for
        tuple inputs); with ``return_convergence_delta`` also ``f_target(x) - sum(R)`` per
        sample, [B]."""
        if verbose:
            raise NotImplementedError("fastxai.compat LRP: verbose=True is not supported")
        extra = () if additional_forward_args is None else additional_forward_args
        extra = extra if isinstance(extra, tuple) else (extra,)
        packed = PackedInputs(inputs) if isinstance(inputs, tuple) else None
        several = packed is not None and len(packed.shapes) > 1
        x: Any = inputs if packed is None else (packed.flat if several else inputs[0])
        model: nn.Module = self.model
        chunk_size = None
        if several or extra:
            model = _Bound(self.model, packed if several else None, extra)
            chunk_size = max(1, x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() else None
        composite = self._composite("model" if model is not self.model else "")
        both: Any = core.lrp(
            model, x, target, composite=composite, merge_batchnorm=False, chunk_size=chunk_size,
            return_layer_relevances=return_convergence_delta, backend=self.backend,
        )  # fmt: skip
        relevance, layers = both if return_convergence_delta else (both, {})
        # a tuple comes back as a tuple (of one, or split from the flat input)
        result = relevance if packed is None else packed.format(relevance.reshape(relevance.shape[0], -1))
        if not return_convergence_delta:
            return result
        delta = -core.conservation({"input": relevance.float(), **layers})["input"]
        return result, delta.to(relevance.dtype)

    def compute_convergence_delta(self, attributions: Any, output: torch.Tensor) -> torch.Tensor:
        """``output - sum(attributions)`` per sample, over every input of a tuple (Captum's
        completeness check)."""
        parts = attributions if isinstance(attributions, tuple) else (attributions,)
        total = torch.stack([part.flatten(1).sum(1) for part in parts]).sum(0)
        return output.flatten() - total
