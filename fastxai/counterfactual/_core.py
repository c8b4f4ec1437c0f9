"""What Wachter counterfactuals and CEM share: the argument checks, the prediction goal (hinge on
the logit margin, or Wachter's squared probability loss), the shrinkage-thresholding operator and
one round of the batched proximal-gradient search (ISTA, or FISTA with momentum).

A round minimises, for every sample b at once,

    lam_b * L_goal(f(x')) + q * ||(x' - a) / s||_2^2 + gamma * ||x' - AE(x')||_2^2
        + beta * ||(x' - a) / s||_1      subject to  low <= x' <= high,

by gradient steps on the smooth terms followed by the proximal step of the L1 term and the box
(soft-thresholding about the anchor a, then clamping: the prox of a separable L1 term plus an
interval is the clamped soft threshold). Every point the search evaluates is a candidate; the
returned one per sample is the valid candidate of smallest elastic-net distance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from fastxai import _model
from fastxai._checks import check_count, check_flag, check_number

Forward = Callable[[torch.Tensor], torch.Tensor]
LOSSES = ("hinge", "squared")


class CounterfactualResult(NamedTuple):
    """What ``wachter`` and ``cem`` return.

    counterfactuals: [B, *F], the explanation per input (the input itself, or for a pertinent
    positive the background, where none was found); valid: [B] bool, whether it meets the goal;
    l1, l2: [B] its L1 and L2 distances from the anchor (the input; the background for a
    pertinent positive); predictions: [B] the model's class at it; original: [B] the model's class
    at the input; lam: [B] the weight of the prediction loss at which it was found (inf if none).
    """

    counterfactuals: torch.Tensor
    valid: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    predictions: torch.Tensor
    original: torch.Tensor
    lam: torch.Tensor


def check_feature_tensor(
    name: str, value: object, x: torch.Tensor, *, positive: bool = False
) -> torch.Tensor:
    """A number or a tensor broadcastable to one input's shape, as [1, *F] in x's dtype."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    tensor = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    try:
        tensor = tensor.broadcast_to(x.shape[1:]).unsqueeze(0)
    except RuntimeError:
        raise ValueError(
            f"{name} must broadcast to one input's shape {tuple(x.shape[1:])}, got {tuple(tensor.shape)}"
        ) from None
    if not _model.all_finite(tensor):
        raise ValueError(f"{name} contains NaN or infinity")
    if positive and bool((tensor <= 0).any()):
        raise ValueError(f"{name} must be > 0 everywhere")
    return tensor


def check_bounds(bounds: object, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``None`` (no box), or ``(low, high)``: numbers or tensors broadcastable to one input's
    shape with low < high; the inputs must lie inside. Returns [1, *F] tensors (+-inf for None)."""
    if bounds is None:
        return (
            torch.full((1, *x.shape[1:]), -math.inf, dtype=x.dtype, device=x.device),
            torch.full((1, *x.shape[1:]), math.inf, dtype=x.dtype, device=x.device),
        )
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be None or (low, high), got {bounds!r}")
    low = check_feature_tensor("bounds low", bounds[0], x)
    high = check_feature_tensor("bounds high", bounds[1], x)
    if not bool((low < high).all()):
        raise ValueError("bounds must have low < high for every feature")
    if bool((x < low).any() or (x > high).any()):
        raise ValueError(
            f"inputs must lie within bounds, got values in [{float(x.min()):.6g}, {float(x.max()):.6g}]"
        )
    return low, high


def check_schedule(steps: object, lr: object, momentum: object) -> tuple[int, float, bool]:
    return check_count("steps", steps), check_number("lr", lr, strict=True), check_flag("momentum", momentum)


@dataclass(frozen=True)
class Objective:
    """The terms of the search besides the per-sample ``lam``: see the module docstring.

    targeted: the goal is class ``classes[b]`` (else any class but it); kappa: the margin the
    hinge asks for; loss: "hinge" (``max(0, kappa - margin)`` on logits) or "squared" (Wachter's
    ``(p - target_proba)^2`` on the probability of the target class, or of the most probable
    other class when untargeted)."""

    targeted: bool
    kappa: float
    loss: str
    target_proba: float
    beta: float
    quadratic: float
    scale: torch.Tensor
    gamma: float = 0.0
    ae: Forward | None = None


def margin(logits: torch.Tensor, classes: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``z_t - max_{j != t} z_j`` (targeted) or ``max_{j != c} z_j - z_c``: > 0 when the goal is met."""
    own = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, classes.view(-1, 1), -math.inf).amax(1)
    return own - others if targeted else others - own


def goal_loss(logits: torch.Tensor, classes: torch.Tensor, objective: Objective) -> torch.Tensor:
    if objective.loss == "hinge":
        return (objective.kappa - margin(logits, classes, objective.targeted)).clamp_min(0)
    probabilities = logits.softmax(1)
    if objective.targeted:
        p = probabilities.gather(1, classes.view(-1, 1)).squeeze(1)
    else:
        p = probabilities.scatter(1, classes.view(-1, 1), -1.0).amax(1)
    return (p - objective.target_proba).square()


def goal_met(logits: torch.Tensor, classes: torch.Tensor, objective: Objective) -> torch.Tensor:
    value = margin(logits, classes, objective.targeted)
    kappa = objective.kappa if objective.loss == "hinge" else 0.0
    return (value > 0) & (value >= kappa)


def shrink(
    v: torch.Tensor, anchor: torch.Tensor, threshold: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """The shrinkage-thresholding operator about ``anchor``, then the box:
    ``clamp(a + sign(v - a) max(|v - a| - threshold, 0), low, high)``."""
    d = v - anchor
    return (anchor + d.sign() * (d.abs() - threshold).clamp_min(0)).clamp(low, high)


def distances(points: torch.Tensor, anchor: torch.Tensor, objective: Objective) -> torch.Tensor:
    """The elastic-net distance ``beta ||(x' - a)/s||_1 + q ||(x' - a)/s||_2^2`` per sample."""
    d = ((points - anchor) / objective.scale).flatten(1)
    return objective.beta * d.abs().sum(1) + objective.quadratic * d.square().sum(1)


class Round(NamedTuple):
    best: torch.Tensor  # [B, *F] the valid candidate of least distance (undefined where not found)
    distance: torch.Tensor  # [B] its elastic-net distance (inf where none found)
    last: torch.Tensor  # [B, *F] the last iterate, where the next round may start


def search_round(
    forward: Forward,
    start: torch.Tensor,
    anchor: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    classes: torch.Tensor,
    lam: torch.Tensor,
    objective: Objective,
    *,
    steps: int,
    lr: float,
    momentum: bool,
) -> Round:
    """One round of the proximal search for a fixed ``lam`` [B]; tensors [B, *F] (low, high and
    anchor may be [1, *F]). The step size decays as ``lr * sqrt(1 - k / steps)`` (as in the CEM
    code) so that the iterates settle at the hinge's kink instead of jumping over it.

    Per-sample stopping: every ``ceil(steps / 10)`` steps, a sample whose best objective did not
    fall by 1e-4 (relative) since the last check leaves the batch for the rest of the round.
    """
    batch = start.shape[0]
    expand = (batch, *start.shape[1:])
    anchor, low, high = anchor.expand(expand), low.expand(expand), high.expand(expand)
    threshold = (objective.beta / objective.scale).expand(expand)
    iterate, slack = start.clone(), start.clone()
    best = start.clone()
    best_distance = torch.full((batch,), math.inf, dtype=start.dtype, device=start.device)
    best_objective = torch.full_like(best_distance, math.inf)
    checkpoint = best_objective.clone()
    window = max(1, math.ceil(steps / 10))
    active = torch.arange(batch, device=start.device)

    def record(index: torch.Tensor, points: torch.Tensor, logits: torch.Tensor) -> None:
        distance = distances(points, anchor[index], objective)
        better = goal_met(logits, classes[index], objective) & (distance < best_distance[index])
        best_distance[index] = torch.where(better, distance, best_distance[index])
        best[index] = torch.where(better.view(-1, *[1] * (points.dim() - 1)), points, best[index])

    if momentum:  # FISTA checks the iterates, not the extrapolated points: check the start too
        with torch.no_grad():
            record(active, start, forward(start))
    for k in range(steps):
        step = lr * math.sqrt(1 - k / steps)
        a_anchor, a_low, a_high = anchor[active], low[active], high[active]
        leaf = slack[active].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = forward(leaf)
            smooth = lam[active] * goal_loss(logits, classes[active], objective)
            change = ((leaf - a_anchor) / objective.scale).flatten(1)
            if objective.quadratic:
                smooth = smooth + objective.quadratic * change.square().sum(1)
            if objective.ae is not None and objective.gamma:
                smooth = smooth + objective.gamma * (leaf - objective.ae(leaf)).flatten(1).square().sum(1)
            (gradient,) = torch.autograd.grad(smooth.sum(), leaf)
        with torch.no_grad():
            logits = logits.detach()
            total = smooth.detach() + objective.beta * change.detach().abs().sum(1)
            best_objective[active] = torch.minimum(best_objective[active], total)
            if not momentum:  # ISTA evaluates the iterate itself: check it now, at no extra cost
                record(active, leaf.detach(), logits)
            new = shrink(leaf.detach() - step * gradient, a_anchor, step * threshold[active], a_low, a_high)
            if momentum:  # FISTA (Beck and Teboulle 2009): extrapolate, stay in the box
                slack[active] = (new + k / (k + 3) * (new - iterate[active])).clamp(a_low, a_high)
                iterate[active] = new
                record(active, new, forward(new))
            else:
                iterate[active] = slack[active] = new
            if (k + 1) % window == 0 and k + 1 < steps:
                keep = best_objective[active] < checkpoint[active] * (1 - 1e-4)
                checkpoint[active] = best_objective[active]
                active = active[keep]
                if not active.numel():
                    break
    if not momentum:
        with torch.no_grad():  # the last step's result has not been evaluated yet
            every = torch.arange(batch, device=start.device)
            record(every, iterate, forward(iterate))
    return Round(best, best_distance, iterate)


def shorten(
    forward: Forward,
    anchor: torch.Tensor,
    points: torch.Tensor,
    valid: torch.Tensor,
    classes: torch.Tensor,
    objective: Objective,
    steps: int,
) -> torch.Tensor:
    """Bisection on the segment from the anchor to each valid point for the valid point nearest
    the anchor (``steps`` halvings, all samples at once): the search stops at a point just past
    the decision boundary, as close as its step size allows, and every distance used here is
    increasing along the segment, so the point found is valid and no farther. [B, *F]."""
    if not steps or not bool(valid.any()):
        return points
    shape = (-1, *[1] * (points.dim() - 1))
    near = torch.zeros(points.shape[0], dtype=points.dtype, device=points.device)
    far = torch.ones_like(near)
    direction = points - anchor
    with torch.no_grad():
        for _ in range(steps):
            middle = (near + far) / 2
            met = goal_met(forward(anchor + middle.view(shape) * direction), classes, objective)
            far = torch.where(met, middle, far)
            near = torch.where(met, near, middle)
    return torch.where(valid.view(shape), anchor + far.view(shape) * direction, points)


def finish(
    forward: Forward,
    best: torch.Tensor,
    found: torch.Tensor,
    fallback: torch.Tensor,
    anchor: torch.Tensor,
    original: torch.Tensor,
    lam: torch.Tensor,
    classes: torch.Tensor,
    objective: Objective,
    refine_steps: int,
) -> CounterfactualResult:
    """The result: ``best`` where found (shortened by ``shorten``), else ``fallback``; validity
    re-checked at the returned points."""
    shape = (-1, *[1] * (best.dim() - 1))
    points = torch.where(found.view(shape), best, fallback)
    points = shorten(forward, anchor.expand_as(points), points, found, classes, objective, refine_steps)
    with torch.no_grad():
        logits = forward(points)
    valid = found & goal_met(logits, classes, objective)
    difference = (points - anchor).flatten(1)
    return CounterfactualResult(
        points,
        valid,
        difference.abs().sum(1),
        difference.norm(dim=1),
        logits.argmax(1),
        original,
        torch.where(valid, lam, torch.full_like(lam, math.inf)),
    )


def predicted_classes(forward: Forward, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The model's class per input; refuses outputs with fewer than two classes, and a
    ``target`` out of range."""
    with torch.no_grad():
        logits = forward(x)
    if logits.shape[1] < 2:
        raise ValueError(
            f"model must return [batch, classes] with classes >= 2 (a counterfactual is another class), "
            f"got shape {tuple(logits.shape)}"
        )
    if target is not None:
        _model.check_target_range(target, logits.shape[1])
    return logits.argmax(1)
