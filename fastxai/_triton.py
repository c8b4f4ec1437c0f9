"""The Triton backend as ``fastxai.ops`` calls it: the launchers of ``fastxai.kernels``, also
traceable by torch.compile.

Dynamo cannot trace every Triton launch (on the CPU interpreter, ``TRITON_INTERPRET=1``, it stops
in Triton's source inspection), so each kernel is also an operator ``fastxai_triton::<op>`` (the
native ops' schemas and fakes, ``SCHEMAS`` and ``fastxai._native.FAKES``; the launcher is its
implementation on every device). A call
made while torch.compile traces (``torch.compiler.is_compiling()``) goes through the operator and
becomes one opaque node of the graph, as the native ops do; an eager call goes to the launcher
directly, without the dispatcher. Imported only when the ``triton`` backend is chosen.

>>> fastxai.ops.path_points(x, b, alphas, backend="triton")  # eager: the launcher
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from fastxai import _native
from fastxai.reference.rescale import RescaledRelu

kernels = importlib.import_module("fastxai.kernels")

SCHEMAS = {
    schema.split("(", 1)[0]: schema
    for schema in (
        "gaussian_perturb(Tensor x, Tensor sigma, int seed, int sample_offset, int n_samples, "
        "int batch_offset) -> Tensor",
        "moment_accumulate(Tensor values, Tensor(a!) total, Tensor(b!)? total_sq, Tensor? multiplier) -> ()",
        "path_points(Tensor x, Tensor baseline, Tensor alphas) -> Tensor",
        "pgd_step(Tensor x_adv, Tensor grad, Tensor x_orig, Tensor step_size, Tensor eps, float lower, "
        "float upper, str norm) -> Tensor",
        "weighted_path_accumulate(Tensor grads, Tensor weights, Tensor(a!) acc) -> ()",
        "lrp_divide(Tensor relevance, Tensor z, float eps) -> Tensor",
        "lrp_product(Tensor activation, Tensor c, Tensor? c_neg, float alpha, float beta) -> Tensor",
        "masked_blend(Tensor inputs, Tensor baselines, Tensor feature_mask, Tensor keep, "
        "bool copy_major=False) -> Tensor",
        "occlude(Tensor inputs, Tensor baselines, int[] window, int[] strides, int start, int count, "
        "bool copy_major=False) -> Tensor",
        "rescale_backward(Tensor grad, Tensor x, Tensor reference, float eps, "
        "float negative_slope=0.0) -> Tensor",
    )
}
"""Every fused op's schema, as ``csrc/ops.cpp`` defines it for the native ``fastxai::`` operators."""

_LIBRARY = torch.library.Library("fastxai_triton", "DEF")  # kept alive: dropping it removes the ops


def _masked_blend(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    feature_mask: torch.Tensor,
    keep: torch.Tensor,
    copy_major: bool = False,
) -> torch.Tensor:
    out: torch.Tensor = kernels.masked_blend(inputs, baselines, feature_mask, keep, copy_major=copy_major)
    return out


def _occlude(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    window: list[int],
    strides: list[int],
    start: int,
    count: int,
    copy_major: bool = False,
) -> torch.Tensor:
    out: torch.Tensor = kernels.occlude(
        inputs, baselines, window, strides, start, count, copy_major=copy_major
    )
    return out


_POSITIONAL = {"masked_blend": _masked_blend, "occlude": _occlude}  # keyword-only copy_major in the launcher

for _name, _schema in SCHEMAS.items():
    _LIBRARY.define(_schema)
    _LIBRARY.impl(_name, _POSITIONAL.get(_name, getattr(kernels, _name)), "CompositeExplicitAutograd")
    torch.library.register_fake(f"fastxai_triton::{_name}", lib=_LIBRARY)(_native.FAKES[_name])


def _traceable(name: str) -> Callable[..., Any]:
    """The launcher of ``name`` eagerly, its operator while torch.compile traces."""
    launcher = getattr(kernels, name)
    operator = getattr(torch.ops.fastxai_triton, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return operator(*args, **kwargs)
        return launcher(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = launcher.__doc__
    return call


gaussian_perturb = _traceable("gaussian_perturb")
moment_accumulate = _traceable("moment_accumulate")
path_points = _traceable("path_points")
pgd_step = _traceable("pgd_step")
weighted_path_accumulate = _traceable("weighted_path_accumulate")
lrp_divide = _traceable("lrp_divide")
lrp_product = _traceable("lrp_product")
masked_blend = _traceable("masked_blend")
occlude = _traceable("occlude")
rescale_backward = _traceable("rescale_backward")


def relu_rescale(
    x: torch.Tensor, reference: torch.Tensor, eps: float, negative_slope: float = 0.0
) -> torch.Tensor:
    """relu whose backward is this backend's ``rescale_backward`` (``fastxai.reference.rescale``)."""
    out: torch.Tensor = RescaledRelu.apply(x, reference, eps, negative_slope, rescale_backward)
    return out


__all__ = [*SCHEMAS, "relu_rescale"]
