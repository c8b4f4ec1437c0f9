"""The linearised decision boundary that DeepFool and FAB step towards.

Two pieces: the Jacobian of every logit with respect to the input (one batched backward pass,
not one per class), and the projection of a point onto a hyperplane ``w . z = b`` that moves
it least in L2 or L-inf while keeping it inside the box ``[low, high]``.

The projection in closed form. Write ``c = b - w . t`` for the point ``t`` and flip signs so
that ``c >= 0``. Every coordinate moves in the direction of its weight, by no more than its
room to the box, ``cap_i`` (``high - t_i`` if ``w_i > 0``, ``t_i - low`` if ``w_i < 0``):

- L2: ``d_i = w_i * min(tau, cap_i / |w_i|)`` (the KKT point of min ||d||_2 in the box);
- L-inf: ``d_i = sign(w_i) * min(tau, cap_i)``.

In both, ``w . d = sum_i a_i * min(tau, kappa_i)`` with ``(a, kappa) = (w^2, cap / |w|)`` or
``(|w|, cap)``: a piecewise-linear, non-decreasing function of ``tau``, solved exactly for
``w . d = c`` after one sort of the breakpoints ``kappa`` and two cumulative sums. A hyperplane
out of reach of the box gets the box corner nearest to it (every coordinate at its cap), as FAB
does (Croce and Hein 2020, section 3.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def logits_and_jacobian(
    forward: Callable[[torch.Tensor], torch.Tensor],
    points: torch.Tensor,
    classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, K], Jacobian [B, C, *F]) of ``forward`` at ``points`` [B, *F]: the rows of
    the classes ``classes`` [B, C] of each sample (None: every class, C = K, in class order).

    The batch is repeated C times (one copy per row) and one backward pass of
    ``sum_c logits[copy c, classes[:, c]]`` yields every row: C forward copies in one model call
    instead of C backward passes through one graph.
    """
    batch = points.shape[0]
    if classes is None:
        with torch.no_grad():
            count = forward(points[:1]).shape[1]
        classes = torch.arange(count, device=points.device).expand(batch, count)
    count = classes.shape[1]
    copies = points.detach().unsqueeze(0).expand(count, *points.shape).reshape(-1, *points.shape[1:])
    copies.requires_grad_(True)
    with torch.enable_grad():
        logits = forward(copies).view(count, batch, -1)
        picked = logits.gather(2, classes.t().unsqueeze(2))  # [C, B, 1]: row c's class of copy c
        (grad,) = torch.autograd.grad(picked.sum(), copies)
    jacobian = grad.view(count, batch, *points.shape[1:]).transpose(0, 1)
    return logits[0].detach(), jacobian


def project_onto_hyperplane(
    points: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor, norm: str, low: float, high: float
) -> torch.Tensor:
    """The smallest step ``d`` [B, D] (L2 or L-inf) with ``weight . (points + d) = offset`` and
    ``low <= points + d <= high``; points and weight [B, D], offset [B]. Computed in float64."""
    t, w = points.double(), weight.double()
    gap = offset.double() - (w * t).sum(dim=1)
    sign = torch.where(gap >= 0, 1.0, -1.0).to(w)
    w = w * sign.unsqueeze(1)
    gap = gap.abs()
    cap = torch.where(w > 0, high - t, t - low).clamp_min(0)
    moving = w != 0
    magnitude = w.abs()
    if norm == "l2":
        rate = w.square()
        kappa = torch.where(moving, cap / magnitude.clamp_min(1e-300), 0.0)
    else:
        rate = magnitude
        kappa = torch.where(moving, cap, 0.0)
    kappa_sorted, order = kappa.sort(dim=1)
    rate_sorted = rate.gather(1, order)
    reached = (rate_sorted * kappa_sorted).cumsum(dim=1)  # sum_{j<=k} a_j kappa_j
    rate_left = rate_sorted.sum(dim=1, keepdim=True) - rate_sorted.cumsum(dim=1)  # sum_{j>k} a_j
    at_breakpoints = reached + kappa_sorted * rate_left
    segment = (at_breakpoints < gap.unsqueeze(1)).sum(dim=1)  # breakpoints passed before w.d = gap
    width = kappa.shape[1]
    before = (segment - 1).clamp_min(0).unsqueeze(1)
    first = segment == 0
    reached_before = torch.where(first, 0.0, reached.gather(1, before).squeeze(1))
    rate_after = torch.where(first, rate.sum(dim=1), rate_left.gather(1, before).squeeze(1))
    tau = (gap - reached_before) / rate_after.clamp_min(1e-300)
    tau = torch.where(segment >= width, torch.inf, tau).unsqueeze(1)  # out of reach: all at the cap
    if norm == "l2":
        step = w * torch.minimum(tau, kappa)
    else:
        step = torch.sign(w) * torch.minimum(tau, kappa)
    step = torch.where(moving, step, 0.0)
    return step.to(points.dtype)


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L2 or L-inf norm of ``delta`` [B, *F] -> [B]."""
    flat = delta.flatten(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
