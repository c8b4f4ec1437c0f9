"""Exact Shapley values of feature groups (Shapley 1953) from all 2**M coalitions.

The players are the M groups of ``feature_mask``; a coalition S keeps the groups in S and takes
the baseline elsewhere, ``v(S) = f_t(baseline + 1[mask in S] * (x - baseline))``. The Shapley
value is the mean over all M! orders of a group's marginal contribution, and orders that reach
the same coalition before m contribute the same difference, so (Shapley's formula)

    phi_m = sum over S not containing m of  |S|! (M - |S| - 1)! / M!  * (v(S + m) - v(S)):

every coalition scored once, ``2**M`` evaluations per example instead of the ``M * M!`` of
walking every order (Captum's ``ShapleyValues``), with the same values.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from fastxai import _backends, _budget, _graphs, _model, _precision
from fastxai._model import Model
from fastxai.attribution import _graphed_scores, _perturbation
from fastxai.attribution.integrated_gradients import check_baselines

MAX_GROUPS = 20
"""The most groups ``shapley_values`` takes: 2**20 = 1,048,576 coalitions per example (a
million model evaluations each; at 21 groups and beyond use ``shapley_value_sampling`` or
``kernel_shap``)."""

_COMBINE_CODES = 1 << 16
"""Coalitions per block when the scores are combined into values (a [block, M] float64 weight
block: 10 MiB at 20 groups)."""


class TooManyGroupsError(ValueError, AssertionError):
    """More feature groups than exact enumeration takes."""


def check_groups(groups: int) -> None:
    """Refuse more than ``MAX_GROUPS`` groups, naming ``feature_mask``."""
    if groups > MAX_GROUPS:
        raise TooManyGroupsError(
            f"feature_mask has {groups} groups: exact Shapley values score all 2**M coalitions, "
            f"at most 2**{MAX_GROUPS} (M <= {MAX_GROUPS}); group the features more coarsely, or "
            "estimate with shapley_value_sampling or kernel_shap"
        )


def shapley_values(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    baselines: float | torch.Tensor | None = None,
    feature_mask: torch.Tensor | None = None,
    return_input_shape: bool = True,
    forward_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """Exact Shapley values ``phi_m = sum_{S not containing m} |S|!(M-|S|-1)!/M! (v(S+m) - v(S))``.

    The M groups of ``feature_mask`` are the players, ``v(S)`` the target's score with the
    groups of S kept and the rest set to ``baselines`` (None: 0, a number, [*F] or [B, *F]).
    All ``2**M`` coalitions of every example are scored (``B * 2**M`` evaluations in batches
    of at most ``chunk_size``), M at most ``MAX_GROUPS`` = 20 (more raises ``ValueError``);
    the values equal the mean marginal contribution over all M! orders (Captum's
    ``ShapleyValues``, which walks them all: ``B * M * M!`` evaluations). Efficiency holds:
    ``sum_m phi_m = f_t(x) - f_t(baseline)``; scores are combined in float64.
    ``feature_mask`` ids of -1, token ids and ``forward_kwargs`` as in ``feature_ablation``.
    ``cuda_graph=True`` (inputs on a CUDA device): each model batch's coalitions, blend, forward
    and gather are one replayed CUDA graph (``_graphed_scores``). ``dtype=torch.bfloat16`` (or
    ``torch.float16``): the copies are blended in that dtype and scored under autocast, the
    scores combined in float64 (``fastxai._precision``; cost: the README's "bf16" table).

    inputs: [B, *F]; returns [B, *F] (each element its group's value) or [B, M] when not
    ``return_input_shape``, in the inputs' dtype (float for ids).

    >>> quadrants = torch.arange(4).view(2, 2).repeat_interleave(4, 0).repeat_interleave(4, 1)
    >>> phi = fastxai.shapley_values(model, x, target=y, feature_mask=quadrants)  # x: [B, 1, 8, 8]
    """
    floating = isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
    model, inputs, baselines = _perturbation.integer_inputs(model, inputs, baselines)
    model, x, target_t, chunk, kwargs = _perturbation.prepare(
        model, inputs, target, chunk_size, forward_kwargs
    )
    model_dtype = _precision.check_dtype(dtype, x.device)
    baseline = check_baselines(0.0 if baselines is None else baselines, x)
    mask, groups = _perturbation.check_feature_mask(feature_mask, x)
    check_groups(groups)
    mask, baseline, fixed = _perturbation.fixed_elements(mask, x, baseline)
    coalitions = 1 << groups
    # held for the whole run: the scores [B, 2**M] (float32 or float64, and as float64)
    _budget.check_fits(
        "feature_mask", f"<{groups} groups>", x.shape[0] * coalitions * 16,
        "the scores of all 2**M coalitions", x.device, "group the features more coarsely",
    )  # fmt: skip
    if backend is not None:
        _backends.check_choice(backend)
    graphed = _graphs.check_cuda_graph(cuda_graph, x, None)
    dtype = _perturbation.compute_dtype(x)
    bits = torch.arange(groups, device=x.device)

    def kept(codes: torch.Tensor) -> torch.Tensor:
        """Copy p keeps the groups whose bit in p is 0 (copy 0 is the input itself): [1, P', M]."""
        return _perturbation.as_dtype(((codes.unsqueeze(1) >> bits) & 1) == 0, dtype).unsqueeze(0)

    def keep(p0: int, p1: int, r0: int, r1: int) -> torch.Tensor:
        return kept(torch.arange(p0, p1, device=x.device)).expand(r1 - r0, -1, -1)

    source, replacement = _perturbation.model_sources(x, baseline, model_dtype, floating)
    with _model.inference_state(model):
        perturb: _perturbation.Perturb
        if graphed:  # the coalitions' keep weights made inside the graph, then the same blend
            blend = functools.partial(_perturbation.FusedOp("masked_blend", backend), copy_major=True)
            perturb = _graphed_scores.group_blocks(source, replacement, mask, kept, blend)
        else:
            perturb = _perturbation.blend(source, replacement, mask, keep, backend)
        scores, _ = _perturbation.perturbed_scores(
            model, source, target_t, coalitions, perturb, chunk, first_is_input=True,
            forward_kwargs=kwargs, cuda_graph=graphed, dtype=model_dtype,
        )  # fmt: skip
    # scores[:, p] is v of the coalition with bit code (2**M - 1) - p
    phi = combine(scores.flip(1).double(), groups).to(dtype)
    if return_input_shape:
        phi = _perturbation.zero_fixed(_perturbation.to_input_shape(phi, mask, x.shape), fixed)
    return phi.to(inputs.dtype)


def combine(values: torch.Tensor, groups: int) -> torch.Tensor:
    """Shapley values [B, M] from ``values`` [B, 2**M] (``values[:, c]``: v of the coalition whose
    bit m is set when it holds group m), as ``values @ W`` with ``W[c, m] = w(|c| - 1)`` if m is
    in c, else ``-w(|c|)``, ``w(s) = s! (M - s - 1)! / M!``, in blocks of coalitions."""
    phi = values.new_zeros(values.shape[0], groups)
    weights = _weights(groups, values.device)  # [M + 1]: w(s), and w(M) = 0 (never taken)
    bits = torch.arange(groups, device=values.device)
    for start in range(0, values.shape[1], _COMBINE_CODES):
        codes = torch.arange(start, min(start + _COMBINE_CODES, values.shape[1]), device=values.device)
        member = ((codes.unsqueeze(1) >> bits) & 1).bool()  # [C, M]
        size = member.sum(1, keepdim=True)
        signed = torch.where(member, weights[(size - 1).clamp(min=0)], -weights[size])
        phi.addmm_(values[:, start : start + codes.numel()], signed.to(values.dtype))
    return phi


@functools.lru_cache(maxsize=8)
def _weights(groups: int, device: torch.device) -> torch.Tensor:
    """``w(s) = s! (M - s - 1)! / M! = 1 / (M * C(M - 1, s))`` for s = 0..M-1, and 0 for s = M
    (float64 [M + 1]; read-only)."""
    values = [1.0 / (groups * math.comb(groups - 1, s)) for s in range(groups)] + [0.0]
    return torch.tensor(values, dtype=torch.float64, device=device)
