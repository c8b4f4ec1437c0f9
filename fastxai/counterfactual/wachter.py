"""Counterfactual explanations of Wachter, Mittelstadt and Russell (2017): the closest input that
the model classifies differently."""

from __future__ import annotations

import math

import torch

from fastxai import _model
from fastxai._checks import check_count, check_number
from fastxai._model import Model
from fastxai.counterfactual import _core
from fastxai.counterfactual._core import CounterfactualResult

DISTANCES = ("l1", "l2", "elastic")


def wachter(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    distance: str = "l2",
    beta: float = 0.1,
    scale: float | torch.Tensor = 1.0,
    loss: str = "hinge",
    kappa: float = 0.0,
    target_proba: float = 1.0,
    lam: float = 0.1,
    lam_factor: float = 2.0,
    lam_steps: int = 16,
    lam_bisections: int = 3,
    steps: int = 300,
    lr: float = 0.01,
    momentum: bool = False,
    refine_steps: int = 20,
    bounds: tuple[object, object] | None = None,
) -> CounterfactualResult:
    """Wachter et al. (2017), "Counterfactual explanations without opening the black box":
    for each input x, the x' minimising

        lam * L(f(x')) + d(x, x'),   low <= x' <= high,

    where d is ``||(x' - x)/s||_1`` (``distance="l1"``; Wachter's choice with s the median
    absolute deviation, see ``mad``), ``||(x' - x)/s||_2^2`` ("l2") or the elastic net
    ``||(x' - x)/s||_2^2 + beta ||(x' - x)/s||_1`` ("elastic"), s = ``scale``. L is the hinge
    ``max(0, kappa - m)`` on the logit margin m (``z_t - max_{j != t} z_j`` for ``target`` t,
    ``max_{j != c} z_j - z_c`` away from the predicted class c when ``target`` is None), or with
    ``loss="squared"`` the paper's ``(p - target_proba)^2`` on the softmax probability p of the
    target (or of the likeliest other class).

    The lambda schedule follows the paper ("iteratively solving for x' and increasing lambda
    until a sufficiently close solution is found"), then narrows it: each round runs
    ``steps`` proximal-gradient steps (ISTA, or FISTA with ``momentum``; the L1 term and the box
    by the shrinkage-thresholding operator); while a sample has no valid x' its lambda grows by
    ``lam_factor`` (at most ``lam_steps`` rounds, each continuing where the last ended), then
    ``lam_bisections`` rounds bisect lambda between the largest failure and the smallest success,
    each starting from the best x' so far (a smaller lambda moves fewer features, so L1
    counterfactuals get sparser). The valid x' of least distance over all rounds is kept. All
    inputs are optimised as one batch; a sample leaves it when its schedule ends, and within a
    round when its objective stalls. Finally ``refine_steps`` bisections on the segment from x
    to each x' move it back to the valid point nearest x (a round ends a step past the
    boundary; every distance here grows along the segment).

    With the hinge the penalty is exact: once lambda is large enough the minimiser lies on the
    decision boundary (for a linear model at the distance ``|margin| / ||w_t - w_c||``, along
    ``w_t - w_c`` for L2, on the single feature of largest ``|w_t,i - w_c,i| / s_i`` for L1).

    inputs: [B, *F]; target: None, an int or [B] classes; scale: a number or a tensor
    broadcastable to [*F]; bounds: None or (low, high), numbers or tensors broadcastable to [*F].
    Returns a ``CounterfactualResult`` (counterfactuals, valid, l1, l2, predictions, original, lam).

    >>> result = fastxai.wachter(model, x, distance="l1", bounds=(0.0, 1.0))
    >>> result.counterfactuals[result.valid], result.l1
    """
    model = _model.check_model(model)
    x = _model.check_inputs(inputs).detach()
    target_t = _model.check_target(target, x.shape[0], x.device)
    if target_t is not None and target_t.dim() != 1:
        raise ValueError("target must be None, an int or [batch] class indices (one class per input)")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if loss not in _core.LOSSES:
        raise ValueError(f"loss must be one of {_core.LOSSES}, got {loss!r}")
    beta = check_number("beta", beta)
    kappa = check_number("kappa", kappa)
    target_proba = check_number("target_proba", target_proba)
    if target_proba > 1:
        raise ValueError(f"target_proba must be in [0, 1], got {target_proba!r}")
    lam = check_number("lam", lam, strict=True)
    lam_factor = check_number("lam_factor", lam_factor, minimum=1.0, strict=True)
    lam_steps = check_count("lam_steps", lam_steps)
    lam_bisections = check_count("lam_bisections", lam_bisections, minimum=0)
    steps, lr, momentum = _core.check_schedule(steps, lr, momentum)
    refine_steps = check_count("refine_steps", refine_steps, minimum=0)
    scale_t = _core.check_feature_tensor("scale", scale, x, positive=True)
    low, high = _core.check_bounds(bounds, x)
    objective = _core.Objective(
        targeted=target_t is not None,
        kappa=kappa,
        loss=loss,
        target_proba=target_proba,
        beta={"l1": 1.0, "l2": 0.0, "elastic": beta}[distance],
        quadratic=0.0 if distance == "l1" else 1.0,
        scale=scale_t,
    )

    def forward(points: torch.Tensor) -> torch.Tensor:
        return _model.logits(model, points)

    with _model.preserved_state(model):
        original = _core.predicted_classes(forward, x, target_t)
        classes = original if target_t is None else target_t
        batch = x.shape[0]
        weights = torch.full((batch,), lam, dtype=x.dtype, device=x.device)
        failed = torch.zeros_like(weights)  # the largest lambda that found nothing (the bracket)
        succeeded = torch.full_like(weights, math.inf)  # the smallest that found a counterfactual
        best, current = x.clone(), x.clone()
        best_distance, best_weight = torch.full_like(weights, math.inf), torch.full_like(weights, math.inf)
        increases = torch.zeros(batch, dtype=torch.long, device=x.device)
        bisections = torch.zeros_like(increases)
        while True:
            found = torch.isfinite(best_distance)
            open_ = ((~found & (increases < lam_steps)) | (found & (bisections < lam_bisections))).nonzero()
            open_ = open_.flatten()
            if not open_.numel():
                break
            # continue from where the last round ended, or once found from the best counterfactual
            start = torch.where(found[open_].view(-1, *[1] * (x.dim() - 1)), best[open_], current[open_])
            result = _core.search_round(
                forward, start, x[open_], low, high, classes[open_], weights[open_], objective,
                steps=steps, lr=lr, momentum=momentum,
            )  # fmt: skip
            success = torch.isfinite(result.distance)
            better = result.distance < best_distance[open_]
            improved = open_[better]
            best[improved] = result.best[better]
            best_distance[improved] = result.distance[better]
            best_weight[improved] = weights[improved]
            current[open_] = result.last
            bisections[open_] += found[open_].long()
            increases[open_] += (~found[open_]).long()
            succeeded[open_] = torch.where(
                success, torch.minimum(succeeded[open_], weights[open_]), succeeded[open_]
            )
            failed[open_] = torch.where(success, failed[open_], torch.maximum(failed[open_], weights[open_]))
            weights[open_] = torch.where(
                torch.isfinite(succeeded[open_]),
                (failed[open_] + succeeded[open_]) / 2,
                weights[open_] * lam_factor,
            )
        found = torch.isfinite(best_distance)
        return _core.finish(
            forward, best, found, x, x, original, best_weight, classes, objective, refine_steps
        )


def mad(data: torch.Tensor, *, minimum: float = 1e-6) -> torch.Tensor:
    """The median absolute deviation of each feature, ``median_i |x_i - median(x)|`` over the
    rows of ``data`` [N, *F]: Wachter et al.'s scale for the L1 distance (a change of one MAD
    costs the same in every feature). Clamped to ``minimum`` for constant features. [*F].

    >>> result = fastxai.wachter(model, x, distance="l1", scale=fastxai.counterfactual.mad(x_train))
    """
    data = _model.check_inputs(data)
    minimum = check_number("minimum", minimum, strict=True)
    median = data.median(0).values
    return (data - median).abs().median(0).values.clamp_min(minimum)


__all__ = ["mad", "wachter"]
