"""Jacobian-based saliency map attack (Papernot et al., EuroS&P 2016): a targeted L0 attack
that raises two input features at a time."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastxai import _budget, _model, _precision
from fastxai._model import Model
from fastxai.attacks._core import check_attack_inputs, check_labels, model_logits, normalizer


def check_options(theta: object, gamma: object) -> None:
    """JSMA's ``theta`` (a finite non-zero change per step) and ``gamma`` (the share of the
    features it may change, in (0, 1])."""
    if (
        isinstance(theta, bool)
        or not isinstance(theta, (int, float))
        or not math.isfinite(theta)
        or theta == 0
    ):
        raise ValueError(f"theta must be a finite non-zero number, got {theta!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")


def jsma(
    model: Model,
    inputs: torch.Tensor,
    target_labels: object,
    *,
    theta: float = 1.0,
    gamma: float = 0.1,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    dtype: torch.dtype | None = None,
    max_iterations: int | None = None,
    search_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Change at most ``gamma`` of the features so that the model predicts ``target_labels``.

    Each iteration takes the gradients of the target logit, ``a = d z_t / d x``, and of the
    other logits' sum, ``b = d sum_{j != t} z_j / d x``, and among pairs (p, q) of features
    that can still move in the direction of ``theta`` picks the one maximising
    ``(a_p + a_q) * |b_p + b_q|`` subject to ``a_p + a_q > 0`` and ``b_p + b_q < 0`` (for
    ``theta > 0``; signs flip for ``theta < 0``); both features move by ``theta`` (clamped to
    ``bounds``) and leave the search once at a bound. A sample stops when it reaches its
    target, when no pair qualifies, or after ``max_iterations`` iterations (None: the paper's
    ``floor(gamma * features / 2)``). ``search_mask``: [B, *F] bool, the features the search
    may pick at the start (None: those not yet at the bound ``theta`` moves towards);
    torchattacks' JSMA passes ``inputs < 0.99`` (``> 0.01`` for ``theta < 0``) and
    ``ceil(gamma * features / 2)`` iterations.

    inputs: [B, *F] within ``bounds``; returns [B, *F]. The pairwise search costs F^2 per
    sample and iteration: meant for inputs of up to a few thousand features. ``dtype``: the
    model under autocast in that dtype (``fastxai.pgd``'s ``dtype``); the saliency search and
    the examples stay in float32 (the inputs' dtype).

    >>> x_adv = fastxai.jsma(model, x, target_labels=torch.full((len(x),), 3), theta=1.0, gamma=0.1)
    """
    model = _model.check_model(model)
    check_options(theta, gamma)
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or not bounds[0] < bounds[1]:
        raise ValueError(f"bounds must be (lower, upper) with lower < upper, got {bounds!r}")
    lower, upper = float(bounds[0]), float(bounds[1])
    x = check_attack_inputs(inputs, (lower, upper)).detach().contiguous()
    model_dtype = _precision.check_dtype(dtype, x.device)
    batch = x.shape[0]
    features = x[0].numel()
    if features < 2:
        raise ValueError("JSMA changes features in pairs: inputs need at least 2 features")
    # each iteration scores every pair of features of every active sample at once: the sums,
    # masks and scores [B, F, F] (about 24 bytes a pair) and the [F, F] diagonal mask
    _budget.check_fits(
        "inputs", tuple(x.shape), (24 * batch + 1) * features**2,
        f"the pair scores of JSMA's search over {features} features", x.device,
        "JSMA's pairwise search is for inputs of up to a few thousand features; pass fewer samples per call",
    )  # fmt: skip
    if max_iterations is None:
        max_iterations = int(gamma * features / 2)
    elif isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 0:
        raise ValueError(f"max_iterations must be None or an int >= 0, got {max_iterations!r}")
    if search_mask is not None and (
        not isinstance(search_mask, torch.Tensor)
        or search_mask.dtype != torch.bool
        or search_mask.shape != x.shape
    ):
        raise ValueError(f"search_mask must be a bool tensor of the inputs' shape {tuple(x.shape)}")
    targets = check_labels(target_labels, batch, x.device)
    if targets is None:
        raise ValueError("target_labels are required: JSMA is a targeted attack")
    forward = model_logits(model, normalizer(normalize, x), model_dtype)

    with _model.preserved_state(model):
        try:
            targets = _model.resolve_target(forward, x, targets, batch)
        except ValueError as error:
            raise ValueError(str(error).replace("target", "target_labels")) from None
        adv = x.reshape(batch, features).clone()
        increase = theta > 0
        searchable = adv < upper if increase else adv > lower
        if search_mask is not None:
            searchable &= search_mask.to(x.device).reshape(batch, features)
        active = torch.ones(batch, dtype=torch.bool, device=x.device)
        not_diagonal = ~torch.eye(features, dtype=torch.bool, device=x.device)
        for _ in range(max_iterations):
            rows = active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            point = adv[rows].view(-1, *x.shape[1:]).requires_grad_(True)
            with torch.enable_grad():
                logits = forward(point)
                target_logit = logits.gather(1, targets[rows].view(-1, 1)).squeeze(1)
                (target_grad,) = torch.autograd.grad(target_logit.sum(), point, retain_graph=True)
                (total_grad,) = torch.autograd.grad(logits.sum(1).sum(), point)
            reached = logits.detach().argmax(1) == targets[rows]
            alpha = target_grad.reshape(-1, features).float()
            beta = total_grad.reshape(-1, features).float() - alpha
            pair_alpha = alpha.unsqueeze(2) + alpha.unsqueeze(1)
            pair_beta = beta.unsqueeze(2) + beta.unsqueeze(1)
            if not increase:
                pair_alpha, pair_beta = -pair_alpha, -pair_beta
            allowed = searchable[rows].unsqueeze(2) & searchable[rows].unsqueeze(1) & not_diagonal
            valid = allowed & (pair_alpha > 0) & (pair_beta < 0)
            score = torch.where(valid, pair_alpha * pair_beta.abs(), torch.full_like(pair_alpha, -1.0))
            best_score, best_pair = score.flatten(1).max(dim=1)
            moving = ~reached & (best_score > 0)
            active[rows[~moving]] = False
            rows, best_pair = rows[moving], best_pair[moving]
            if rows.numel() == 0:
                break
            for index in (best_pair // features, best_pair % features):
                values = (adv[rows, index] + theta).clamp(lower, upper)
                adv[rows, index] = values
                searchable[rows, index] = values < upper if increase else values > lower
        return adv.view_as(x)
