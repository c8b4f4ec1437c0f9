"""The contrastive explanation method (CEM) of Dhurandhar et al. (NeurIPS 2018): pertinent
negatives (what must be absent) and pertinent positives (what suffices to be present)."""

from __future__ import annotations

import contextlib
import math

import torch

from fastxai import _model
from fastxai._checks import check_count, check_number
from fastxai._model import Model
from fastxai.counterfactual import _core
from fastxai.counterfactual._core import CounterfactualResult

MODES = ("pn", "pp")
DIRECTIONS = ("increase", "decrease", "any")
PP_STARTS = ("background", "input")


def cem(
    model: Model,
    inputs: torch.Tensor,
    mode: str = "pn",
    *,
    kappa: float = 0.0,
    beta: float = 0.1,
    gamma: float = 0.0,
    ae: object = None,
    c: float = 10.0,
    search_steps: int = 9,
    steps: int = 300,
    lr: float = 0.01,
    momentum: bool = True,
    bounds: tuple[object, object] | None = None,
    background: float | torch.Tensor = 0.0,
    direction: str = "increase",
    pp_start: str = "background",
    refine_steps: int = 20,
) -> CounterfactualResult:
    """CEM (Dhurandhar et al. 2018, "Explanations based on the missing: towards contrastive
    explanations with pertinent negatives"). With t0 the class the model predicts for x:

    - pertinent negative (``mode="pn"``): the smallest addition delta such that x + delta is
      classified otherwise,
      ``min c * max(0, kappa - (max_{j != t0} z_j - z_t0)) + beta ||delta||_1 + ||delta||_2^2
      + gamma ||x + delta - AE(x + delta)||_2^2``;
      "addition" is ``direction``: features may only increase (the paper's images, absent = 0),
      only decrease, or move either way ("any");
    - pertinent positive (``mode="pp"``): the smallest part delta of x, every feature between the
      ``background`` b (absent) and its value in x, still classified t0,
      ``min c * max(0, kappa - (z_t0 - max_{j != t0} z_j)) + beta ||delta - b||_1
      + ||delta - b||_2^2 + gamma ||delta - AE(delta)||_2^2``.

    z are the logits at x + delta (pn) or delta (pp); ``ae`` is any callable autoencoder
    (the reconstruction term keeps the explanation near the data), used when ``gamma > 0``.
    Solved as in the paper with FISTA and the shrinkage-thresholding operator (projected onto
    ``bounds`` and the allowed direction), ``steps`` steps per round, for ``search_steps``
    rounds of a per-sample bisection on c (c is lowered after a round that found a valid
    explanation, raised tenfold until one does, then bisected); the valid candidate of least
    elastic-net distance ``beta ||.||_1 + ||.||_2^2`` over all rounds is kept, then moved along
    the segment from its anchor to the nearest valid point (``refine_steps`` bisections). All
    inputs are optimised together; within a round a sample whose objective stalls stops.

    Each round starts from the anchor (x for pn, the background for pp, as in the paper); with
    ``pp_start="input"`` the pp search starts from x instead (valid from the first step) and
    removes what is not needed. The problem is not convex and the search from the background
    can end where no allowed move helps: on the digits CNN it finds a pertinent positive for
    about three images in four, the start from the input for all (``benchmarks/counterfactual.py``).

    inputs: [B, *F]; bounds: None or (low, high) numbers or tensors broadcastable to [*F];
    background: a number or tensor broadcastable to [*F] within bounds. Returns a
    ``CounterfactualResult``: the pertinent negative x + delta or pertinent positive delta.

    >>> pn = fastxai.cem(model, x, "pn", kappa=0.1, beta=0.1, bounds=(0.0, 1.0))
    >>> pp = fastxai.cem(model, x, "pp", kappa=0.1, beta=0.1, bounds=(0.0, 1.0), ae=autoencoder, gamma=1.0)
    """
    model = _model.check_model(model)
    x = _model.check_inputs(inputs).detach()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if pp_start not in PP_STARTS:
        raise ValueError(f"pp_start must be one of {PP_STARTS}, got {pp_start!r}")
    kappa = check_number("kappa", kappa)
    beta = check_number("beta", beta)
    gamma = check_number("gamma", gamma)
    if ae is not None and not callable(ae):
        raise TypeError(f"ae must be None or a callable autoencoder, got {type(ae).__name__}")
    if gamma > 0 and ae is None:
        raise ValueError("gamma > 0 needs an autoencoder: pass ae=")
    c = check_number("c", c, strict=True)
    search_steps = check_count("search_steps", search_steps)
    steps, lr, momentum = _core.check_schedule(steps, lr, momentum)
    refine_steps = check_count("refine_steps", refine_steps, minimum=0)
    low, high = _core.check_bounds(bounds, x)
    b = _core.check_feature_tensor("background", background, x)
    if bool((b < low).any() or (b > high).any()):
        raise ValueError("background must lie within bounds")
    objective = _core.Objective(
        targeted=mode == "pp",
        kappa=kappa,
        loss="hinge",
        target_proba=1.0,
        beta=beta,
        quadratic=1.0,
        scale=torch.ones_like(b),
        gamma=gamma,
        ae=ae if gamma > 0 else None,
    )
    if mode == "pn":
        anchor = start = x
        box_low = x if direction == "increase" else low
        box_high = x if direction == "decrease" else high
    else:
        anchor = start = b.expand_as(x)
        if pp_start == "input":
            start = x
        box_low, box_high = torch.minimum(b, x), torch.maximum(b, x)

    def forward(points: torch.Tensor) -> torch.Tensor:
        return _model.logits(model, points)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_model.preserved_state(model))
        if objective.ae is not None and ae is not model:
            stack.enter_context(_model.preserved_state(objective.ae))
        original = _core.predicted_classes(forward, x)
        batch = x.shape[0]
        weight = torch.full((batch,), c, dtype=x.dtype, device=x.device)
        weight_low = torch.zeros_like(weight)
        weight_high = torch.full_like(weight, math.inf)
        best, best_distance = start.clone(), torch.full_like(weight, math.inf)
        best_weight = torch.full_like(weight, math.inf)
        for _ in range(search_steps):
            result = _core.search_round(
                forward, start, anchor, box_low, box_high, original, weight, objective,
                steps=steps, lr=lr, momentum=momentum,
            )  # fmt: skip
            success = torch.isfinite(result.distance)
            better = result.distance < best_distance
            best[better] = result.best[better]
            best_distance = torch.where(better, result.distance, best_distance)
            best_weight = torch.where(better, weight, best_weight)
            weight_high = torch.where(success, torch.minimum(weight_high, weight), weight_high)
            weight_low = torch.where(success, weight_low, torch.maximum(weight_low, weight))
            weight = torch.where(torch.isfinite(weight_high), (weight_low + weight_high) / 2, weight * 10)
        found = torch.isfinite(best_distance)
        return _core.finish(
            forward, best, found, anchor, anchor, original, best_weight, original, objective, refine_steps
        )
