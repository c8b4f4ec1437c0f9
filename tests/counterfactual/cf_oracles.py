"""Closed-form counterfactuals of linear models, the oracles of the counterfactual tests."""

from __future__ import annotations

import torch


def elastic_net_step(
    v: torch.Tensor, m: float, beta: float, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """The minimiser of ``beta ||d||_1 + ||d||_2^2`` subject to ``v . d >= m`` and
    ``low <= d <= high`` (low <= 0 <= high), from the KKT conditions: ``d_i = clamp(soft(mu v_i,
    beta) / 2, low_i, high_i)`` with the multiplier mu >= 0 found by bisection
    (``v . d(mu)`` is non-decreasing in mu). d = 0 when m <= 0."""

    def step(mu: float) -> torch.Tensor:
        a = mu * v
        return (a.sign() * (a.abs() - beta).clamp_min(0) / 2).clamp(low, high)

    if m <= 0:
        return torch.zeros_like(v)
    lower, upper = 0.0, 1.0
    while float(v @ step(upper)) < m:
        upper *= 2
        assert upper < 1e12, "infeasible: the box does not reach the boundary"
    for _ in range(200):
        middle = (lower + upper) / 2
        lower, upper = (lower, middle) if float(v @ step(middle)) >= m else (middle, upper)
    return step(upper)


def pairwise_boundary(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, to: int, away: int):
    """For ``z = W x + b``: (v, m) with the condition ``z_to(x + d) >= z_away(x + d)`` written
    ``v . d >= m``."""
    v = weight[to] - weight[away]
    return v, float(-(v @ x + bias[to] - bias[away]))
