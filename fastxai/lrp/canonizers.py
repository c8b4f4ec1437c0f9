"""Canonizers: model rewrites that apply and undo themselves (Zennit's idea).

``fastxai.lrp`` itself never rewrites the model: it merges BatchNorm into the preceding layer's
parameters inside the relevance pass (``fastxai.lrp._linear.merge_batchnorm``). ``MergeBatchNorm``
does the same merge on the model, in place, for code that wants the canonical model itself
(another LRP library, inspecting merged weights), and puts every tensor back bitwise.

>>> with MergeBatchNorm(model):
...     R = other_library_lrp(model, x)   # each Conv/Linear carries its BatchNorm; BN is identity
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn

from fastxai.lrp import _graph
from fastxai.lrp._linear import merge_batchnorm
from fastxai.lrp.composites import Composite


class MergeBatchNorm:
    """Merge every BatchNorm that directly follows a Linear/Conv (whose output it alone reads)
    into that layer: ``W' = W * scale``, ``b' = (b - mean) * scale + beta``; the BatchNorm
    becomes the identity (mean 0, var 1, weight 1, bias 0, eps 0). ``remove()`` (or leaving the
    ``with`` block, also on error) restores all tensors bitwise and a missing bias to None."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self._saved: list[tuple[Any, Any, dict[str, torch.Tensor | None], float]] = []

    def pairs(self) -> list[tuple[Any, Any]]:
        """(linear layer, BatchNorm) pairs, found on the model's torch.fx graph."""
        training = [module.training for module in self.model.modules()]
        try:
            self.model.eval()
            plan = _graph.build_plan(self.model, Composite())
        finally:
            for module, flag in zip(self.model.modules(), training, strict=True):
                module.training = flag
        found = []
        for step in plan.steps.values():
            if step.layer is not None and step.layer.batchnorm is not None:
                found.append((step.layer.module, step.layer.batchnorm))
        return found

    def apply(self) -> MergeBatchNorm:
        if self._saved:
            raise RuntimeError("MergeBatchNorm is already applied; call remove() first")
        try:
            with torch.no_grad():
                for layer, batchnorm in self.pairs():
                    self._merge(layer, batchnorm)
        except BaseException:
            self.remove()
            raise
        return self

    def _merge(self, layer: Any, batchnorm: Any) -> None:
        saved: dict[str, torch.Tensor | None] = {
            "weight": layer.weight.detach().clone(),
            "bias": None if layer.bias is None else layer.bias.detach().clone(),
        }
        for name in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(batchnorm, name)
            saved["bn_" + name] = None if tensor is None else tensor.detach().clone()
        weight = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else weight.new_zeros(weight.shape[0])
        merged_weight, merged_bias = merge_batchnorm(weight, bias, batchnorm)
        self._saved.append((layer, batchnorm, saved, float(batchnorm.eps)))
        layer.weight.copy_(merged_weight)
        if layer.bias is None:
            layer.bias = nn.Parameter(merged_bias, requires_grad=layer.weight.requires_grad)
        else:
            layer.bias.copy_(merged_bias)
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            tensor = getattr(batchnorm, name)
            if tensor is not None:
                tensor.fill_(value)
        batchnorm.eps = 0.0

    def remove(self) -> None:
        """Put every merged layer and BatchNorm back exactly as it was."""
        with torch.no_grad():
            while self._saved:
                layer, batchnorm, saved, eps = self._saved.pop()
                layer.weight.copy_(saved["weight"])
                if saved["bias"] is None:
                    layer.bias = None
                else:
                    layer.bias.copy_(saved["bias"])
                for name in ("weight", "bias", "running_mean", "running_var"):
                    tensor, value = getattr(batchnorm, name), saved["bn_" + name]
                    if tensor is not None and value is not None:
                        tensor.copy_(value)
                batchnorm.eps = eps

    def __enter__(self) -> MergeBatchNorm:
        return self.apply()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.remove()
