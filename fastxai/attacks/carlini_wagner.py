"""Carlini-Wagner L2 (Carlini and Wagner, S&P 2017) with a per-sample binary search over c."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastxai import _model, _precision
from fastxai._model import Model
from fastxai.attacks._core import (
    check_attack_inputs,
    check_count,
    check_labels,
    model_logits,
    normalizer,
    succeeded,
)


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float, targeted: bool) -> torch.Tensor:
    """``max(z_y - max_{j != y} z_j, -kappa)`` (untargeted: push the true class y below the
    best other class) or ``max(max_{j != t} z_j - z_t, -kappa)`` (targeted), per sample."""
    z = logits.float()
    label_logit = z.gather(1, labels.view(-1, 1)).squeeze(1)
    others = z.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    margin = others - label_logit if targeted else label_logit - others
    return margin.clamp_min(-kappa)


def cw_l2(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    c: float = 1.0,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 0.01,
    binary_search_steps: int = 5,
    targeted: bool = False,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The smallest L2 perturbation that changes the label, found by minimising
    ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)`` over ``x' = lower + (upper -
    lower) (tanh(w) + 1) / 2`` with Adam, for ``binary_search_steps`` values of ``c`` per
    sample: ``c`` is lowered (bisection) after a success and raised (x10 until a success,
    then bisection) after a failure.

    Returns, per sample, the successful example of smallest L2 distance found, or the input
    itself where no ``c`` succeeded. inputs: [B, *F] within ``bounds``. ``dtype``: the model
    under autocast in that dtype (``fastxai.pgd``'s ``dtype``); ``w``, Adam, the distances and
    the examples stay float32 (the inputs' dtype).

    >>> x_adv = fastxai.cw_l2(model, x, y, c=1.0, steps=100, binary_search_steps=5)
    """
    model = _model.check_model(model)
    for name, value, low in (("c", c, 0.0), ("lr", lr, 0.0)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= low
        ):
            raise ValueError(f"{name} must be a finite number > {low}, got {value!r}")
    if (
        isinstance(kappa, bool)
        or not isinstance(kappa, (int, float))
        or not math.isfinite(kappa)
        or kappa < 0
    ):
        raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
    steps = check_count("steps", steps)
    binary_search_steps = check_count("binary_search_steps", binary_search_steps)
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2 or not bounds[0] < bounds[1]:
        raise ValueError(f"bounds must be (lower, upper) with lower < upper, got {bounds!r}")
    lower, upper = float(bounds[0]), float(bounds[1])
    x = check_attack_inputs(inputs, (lower, upper)).detach().contiguous()
    model_dtype = _precision.check_dtype(dtype, x.device)
    batch = x.shape[0]
    label_t = check_labels(labels, batch, x.device)
    if targeted and label_t is None:
        raise ValueError("labels are required for a targeted attack (they are the target classes)")
    forward = model_logits(model, normalizer(normalize, x), model_dtype)

    with _model.preserved_state(model):
        try:
            label_t = _model.resolve_target(forward, x, label_t, batch)
        except ValueError as error:
            raise ValueError(str(error).replace("target", "labels")) from None
        shape = (batch,) + (1,) * (x.dim() - 1)
        scale = (upper - lower) / 2
        # atanh of the input, kept finite at the bounds so that the start is the input itself.
        start = torch.atanh(((x.float() - lower) / scale - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        constant = torch.full((batch,), float(c), device=x.device)
        c_low = torch.zeros(batch, device=x.device)
        c_high = torch.full((batch,), math.inf, device=x.device)
        best = x.clone()
        best_distance = torch.full((batch,), math.inf, device=x.device)
        for _ in range(binary_search_steps):
            w = start.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([w], lr=lr)
            success = torch.zeros(batch, dtype=torch.bool, device=x.device)
            for _ in range(steps):
                with torch.enable_grad():
                    adversarial = (lower + scale * (torch.tanh(w) + 1)).to(x.dtype)
                    distance = (adversarial.float() - x.float()).flatten(1).pow(2).sum(1)
                    logits = forward(adversarial)
                    cost = (distance + constant * cw_margin(logits, label_t, kappa, targeted)).sum()
                    # the gradient of w alone: backward() would also fill .grad of the parameters
                    # of a model wrapped in a plain callable, which the state guard cannot freeze
                    (w.grad,) = torch.autograd.grad(cost, w)
                optimizer.step()
                fooled = succeeded(logits.detach(), label_t, targeted)
                if kappa > 0:
                    fooled &= cw_margin(logits.detach(), label_t, kappa, targeted) <= -kappa
                success |= fooled
                better = fooled & (distance.detach() < best_distance)
                best_distance = torch.where(better, distance.detach(), best_distance)
                best = torch.where(better.view(shape), adversarial.detach(), best)
            c_high = torch.where(success, torch.minimum(c_high, constant), c_high)
            c_low = torch.where(success, c_low, torch.maximum(c_low, constant))
            constant = torch.where(torch.isfinite(c_high), (c_low + c_high) / 2, constant * 10)
        return best
