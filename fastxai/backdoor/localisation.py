"""Trigger localisation from attributions, in the spirit of SentiNet (Chou et al. 2020,
"SentiNet: detecting localized universal attacks against deep learning systems"): the region an
explanation marks on a suspect input, pasted into clean images, turns them into the suspect's
class when it holds a trigger, and rarely does when it holds an ordinary part of an object.

>>> found = trigger_localisation(model, x_suspect, x_clean, k=4)
>>> found.regions, found.flip_rate                       # [B, *F] bool, [B]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

from fastxai import _model, _precision, _scheduling, ops
from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.attribution.gradient import saliency

Attribution = Callable[[Model, torch.Tensor, torch.Tensor], torch.Tensor]


class LocalisationResult(NamedTuple):
    """regions: [B, *F] bool, the ``k`` positions (all channels) the explanation marks most;
    predicted: [B] the suspects' predicted classes; flip_rate: [B] float64, the share of the
    clean images not already of that class that the pasted region sends to it."""

    regions: torch.Tensor
    predicted: torch.Tensor
    flip_rate: torch.Tensor


def _saliency(
    model: Model, inputs: torch.Tensor, target: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    return saliency(model, inputs, target, dtype=dtype)


def top_regions(attributions: torch.Tensor, k: int) -> torch.Tensor:
    """[B, *F] bool: the ``k`` positions with the largest ``|a|`` summed over the channel axis
    (dim 1) for inputs [B, C, *spatial] with spatial dims, over the features for [B, F]; every
    channel of a chosen position is in the region. Ties go to the lower flat index."""
    magnitude = attributions.detach().abs().double()
    spatial = magnitude.sum(1) if magnitude.dim() > 2 else magnitude  # [B, *spatial] or [B, F]
    flat = spatial.flatten(1)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    # a stable sort, so equal scores are taken in index order whatever the backend
    order = flat.sort(dim=1, descending=True, stable=True).indices[:, :k]
    chosen.scatter_(1, order, True)
    chosen = chosen.view(spatial.shape)
    return chosen.unsqueeze(1).expand_as(attributions) if attributions.dim() > 2 else chosen


def trigger_localisation(
    model: Model,
    suspects: torch.Tensor,
    clean: torch.Tensor,
    *,
    k: int = 4,
    attribution: Attribution | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> LocalisationResult:
    """SentiNet-like localisation: per suspect input ``s`` with predicted class ``c``, the region
    ``R`` is the top ``k`` positions of ``attribution(model, s, c)`` (saliency by default; any
    ``fx`` method taking ``(model, inputs, target)`` fits, e.g. ``fx.grad_cam`` through a
    lambda), and the flip rate is the share of the clean images ``x`` (those not predicted
    ``c``) with ``argmax f(1_R * s + (1 - 1_R) * x) = c``. The pastes are built on the fused
    ``masked_blend`` op, all ``B x M`` of them batched.

    suspects: [B, *F]; clean: [M, *F]. Returns ``LocalisationResult(regions, predicted, flip_rate)``.
    ``dtype=torch.bfloat16`` (or ``torch.float16``): the predictions run under autocast in that
    dtype (``fastxai._precision``), and so does the default saliency (``saliency(...,
    dtype=)``); an ``attribution`` callable runs as it is written (give it the ``dtype``).

    >>> found = trigger_localisation(model, fx.backdoor.apply_trigger(x, trigger), x_clean, k=4)
    """
    model = _model.check_model(model)
    s = _model.check_inputs(suspects).detach()
    x = _model.check_inputs(clean).detach()
    if x.shape[1:] != s.shape[1:] or x.dtype != s.dtype or x.device != s.device:
        raise ValueError(
            f"clean must be [M, *{tuple(s.shape[1:])}] of {s.dtype} on {s.device}, like suspects; got "
            f"{tuple(x.shape)} of {x.dtype} on {x.device}"
        )
    positions = s[0].numel() // (s.shape[1] if s.dim() > 2 else 1)
    k = check_count("k", k, 1)
    if k > positions:
        raise ValueError(f"k must be at most the {positions} positions of an input, got {k}")
    if attribution is not None and not callable(attribution):
        raise TypeError(
            "attribution must be None or a callable (model, inputs, target), "
            f"got {type(attribution).__name__}"
        )
    model_dtype = _precision.check_dtype(dtype, s.device)
    explain = attribution or functools.partial(_saliency, dtype=model_dtype)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x, forward_only=True)
    scored = _precision.autocast_model(model, model_dtype, s.device.type)  # model itself for None
    with _model.preserved_state(model):
        with torch.no_grad():
            predicted = torch.cat(
                [_model.logits(scored, s[i : i + chunk]).argmax(1) for i in range(0, len(s), chunk)]
            )
            clean_predicted = torch.cat(
                [_model.logits(scored, x[i : i + chunk]).argmax(1) for i in range(0, len(x), chunk)]
            )
        attributions = explain(model, s, predicted)
        if not isinstance(attributions, torch.Tensor) or attributions.shape != s.shape:
            shape = (
                tuple(attributions.shape)
                if isinstance(attributions, torch.Tensor)
                else type(attributions).__name__
            )
            raise ValueError(
                f"attribution must return a tensor of the suspects' shape {tuple(s.shape)}, got {shape}"
            )
        regions = top_regions(attributions, k)
        flips = torch.zeros(s.shape[0], dtype=torch.float64)
        per_block = max(1, chunk // x.shape[0])
        keep = torch.tensor([0.0, 1.0], device=s.device)
        with torch.no_grad():
            for start in range(0, s.shape[0], per_block):
                rows = slice(start, start + per_block)
                count = s[rows].shape[0]
                # one row per (suspect, clean image): the suspect is the "input", the clean image the
                # "baseline", and group 1 (the region) keeps the input
                pasted = ops.masked_blend(
                    s[rows].repeat_interleave(x.shape[0], 0),
                    x.repeat(count, *([1] * (x.dim() - 1))),
                    regions[rows].long().repeat_interleave(x.shape[0], 0),
                    keep.expand(count * x.shape[0], 1, 2),
                )[:, 0]
                outcome = torch.cat(
                    [
                        _model.logits(scored, pasted[i : i + chunk]).argmax(1)
                        for i in range(0, len(pasted), chunk)
                    ]
                ).view(count, x.shape[0])
                target = predicted[rows].unsqueeze(1)
                eligible = clean_predicted.unsqueeze(0) != target
                hits = ((outcome == target) & eligible).sum(1).double()
                flips[rows] = (hits / eligible.sum(1).clamp_min(1).double()).cpu()
    return LocalisationResult(regions, predicted, flips)
