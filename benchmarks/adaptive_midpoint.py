"""The previous adaptive IG rule, kept as a baseline for ``adaptive_ig.py``: midpoint panels.

Replaced in ``fastxai.attribution.adaptive_path`` by nested Gauss panels; as it was:

The path ``[0, 1]`` is cut into panels, each integrated by its midpoint (the 1-point
Gauss-Legendre rule), so no gradient is ever taken at ``a = 0`` or ``a = 1``: a gradient that
blows up at the baseline cannot poison the sum. A panel is refined by cutting it in three;
its midpoint stays the middle third's, so every evaluation is kept (two new ones per cut).

The local error indicator is free: along the path ``f(p(b)) - f(p(a)) = int_a^b s``, with the
slope ``s = grad f . (x - x')``, and the forward value comes with every gradient. Between two
neighbouring points the trapezoid defect ``e = f(b) - f(a) - (b - a)/2 (s(a) + s(b))`` is zero
where the slope is linear and large across kinks and curvature (at the ends, where only the
value ``f(0)`` / ``f(1)`` is known, the slope is extrapolated from the two nearest points).
A panel's indicator is the mean ``|e|`` of its two sides. Each round marks, per unconverged
sample, the panels holding half of its total indicator (the largest first: Dörfler marking),
and the new points of all samples go through the model together. A sample stops when its
completeness error ``|sum(attr) - (f(x) - f(x'))|`` is at most ``tolerance * |f(x) - f(x')|``
(after at least 9 points), or at ``max_steps`` points, or at the rounding floor of the scores,
``8 eps (|f(x)| + |f(x')|)``, below which the error cannot be told apart from rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastxai import _layer

MIN_POINTS = 3
"""The first round's points, 1/6, 1/2 and 5/6; a sample stops only when its summed local
indicators are small too, so errors of opposite sign cancelling cannot stop it early."""
MARK_FRACTION = 0.5
INDICATOR_SLACK = 4.0
"""The summed |defects| bound the error without cancellation but overestimate it (each is a
trapezoid defect, and most of the sum cancels in the midpoint sums): a sample may stop with a
sum up to this many times the tolerance, which still refuses a lucky cancellation."""


@dataclass
class _Sample:
    centers: list[float] = field(default_factory=list)
    widths: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    slopes: list[float] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)


@dataclass
class AdaptiveResult:
    """The path integral [B, *A], the delta [B], the evaluations per sample [B] (gradient points
    plus the two end values) and which samples did not reach the tolerance [B] (bool), and of
    those, which stopped at the rounding floor."""

    integral: torch.Tensor
    delta: torch.Tensor
    evaluations: torch.Tensor
    unconverged: torch.Tensor
    at_floor: torch.Tensor


def _indicators(state: _Sample, start: float, end: float) -> list[float]:
    """Per panel, the mean |trapezoid defect| of its two sides (module docstring)."""
    c, f, s = state.centers, state.values, state.slopes
    n = len(c)
    sides = []
    for j in range(n - 1):
        sides.append(abs(f[j + 1] - f[j] - (c[j + 1] - c[j]) * (s[j] + s[j + 1]) / 2))
    if n >= 2:  # slope extrapolated linearly from the two points nearest each end
        rate_left = (s[1] - s[0]) / (c[1] - c[0])
        rate_right = (s[-1] - s[-2]) / (c[-1] - c[-2])
        head = abs(f[0] - start - (c[0] * s[0] - c[0] ** 2 / 2 * rate_left))
        tail = abs(end - f[-1] - ((1 - c[-1]) * s[-1] + (1 - c[-1]) ** 2 / 2 * rate_right))
    else:
        head, tail = abs(f[0] - start - c[0] * s[0]), abs(end - f[0] - (1 - c[0]) * s[0])
    sides = [head, *sides, tail]
    return [(sides[j] + sides[j + 1]) / 2 for j in range(n)]


def adaptive_path(
    site: _layer.Site,
    baseline: torch.Tensor,
    target: torch.Tensor,
    chunk: int,
    tolerance: float,
    max_steps: int,
) -> AdaptiveResult:
    """The path integral ``int_0^1 grad f(p(a)) da`` by adaptive midpoint panels (inside the
    model's state guard); see the module docstring."""
    x = site.origin
    batch, device = x.shape[0], x.device
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    direction = x - baseline
    ends = _layer.chunk_scores(site, torch.stack([baseline, x]), target, chunk)
    start, end = ends[0].tolist(), ends[1].tolist()
    floor = (8 * torch.finfo(x.dtype).eps * (ends[0].abs() + ends[1].abs())).tolist()
    integral = torch.zeros(x.shape, dtype=acc_dtype, device=device)
    states = [_Sample() for _ in range(batch)]
    unconverged = torch.zeros(batch, dtype=torch.bool)
    at_floor = torch.zeros(batch, dtype=torch.bool)
    # each request: (sample, alpha, weight, parent panel index or -1)
    requests = [(i, alpha, 1 / 3, -1) for i in range(batch) for alpha in (1 / 6, 1 / 2, 5 / 6)]
    while requests:
        _evaluate(site, baseline, direction, target, chunk, requests, states, integral)
        requests = []
        for i, state in enumerate(states):
            if unconverged[i] or at_floor[i] or _done(state, start[i], end[i], tolerance):
                continue
            difference = end[i] - start[i]
            error = abs(sum(w * s for w, s in zip(state.widths, state.slopes, strict=True)) - difference)
            if error <= floor[i] and len(state.centers) >= MIN_POINTS:
                at_floor[i] = True  # the tolerance is below what the scores can resolve
                continue
            room = (max_steps - 2 - len(state.centers)) // 2  # the two end values count too
            if room < 1:
                unconverged[i] = True
                continue
            scores = _indicators(state, start[i], end[i])
            order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
            total, marked = sum(scores), 0.0
            for j in order[:room]:
                if marked >= MARK_FRACTION * total and marked > 0:
                    break
                marked += scores[j]
                third = state.widths[j] / 3
                requests += [(i, state.centers[j] - third, third, j), (i, state.centers[j] + third, third, j)]
    delta = torch.tensor(
        [
            sum(w * s for w, s in zip(st.widths, st.slopes, strict=True)) - (end[i] - start[i])
            for i, st in enumerate(states)
        ],
        dtype=torch.float64,
    )
    evaluations = torch.tensor([len(st.centers) + 2 for st in states], dtype=torch.long)
    return AdaptiveResult(integral, delta.to(device), evaluations, unconverged, at_floor)


def _done(state: _Sample, start: float, end: float, tolerance: float) -> bool:
    if len(state.centers) < MIN_POINTS:
        return False
    difference = end - start
    error = abs(sum(w * s for w, s in zip(state.widths, state.slopes, strict=True)) - difference)
    if error > tolerance * abs(difference):
        return False
    return sum(_indicators(state, start, end)) <= INDICATOR_SLACK * tolerance * abs(difference)


def _evaluate(
    site: _layer.Site,
    baseline: torch.Tensor,
    direction: torch.Tensor,
    target: torch.Tensor,
    chunk: int,
    requests: list[tuple[int, float, float, int]],
    states: list[_Sample],
    integral: torch.Tensor,
) -> None:
    """Gradients and values at the requested points, many samples' points per model pass; the
    new points join their samples' panels, and a cut parent keeps a third of its width."""
    device = baseline.device
    shape = (-1,) + (1,) * (baseline.dim() - 1)
    cut: set[tuple[int, int]] = set()
    new: list[tuple[int, float, float, float, float, torch.Tensor]] = []
    for begin in range(0, len(requests), chunk):
        block = requests[begin : begin + chunk]
        rows = torch.tensor([r[0] for r in block], device=device)
        alphas = torch.tensor([r[1] for r in block], dtype=baseline.dtype, device=device)
        points = baseline[rows] + alphas.view(shape) * direction[rows]
        grads, values = site.gradients(points, rows, 1, target[rows])
        grads = grads.to(integral.dtype)
        slopes = (grads.to(torch.float64) * direction[rows].to(torch.float64)).flatten(1).sum(1)
        integral.index_add_(
            0, rows, grads * torch.tensor([r[2] for r in block], dtype=grads.dtype).view(shape)
        )
        for k, (i, alpha, weight, parent) in enumerate(block):
            new.append((i, alpha, weight, float(values[k]), float(slopes[k]), grads[k]))
            if parent >= 0:
                cut.add((i, parent))
    for i, parent in cut:  # the parent's midpoint keeps a third of its panel
        state = states[i]
        integral[i] -= state.grads[parent] * (state.widths[parent] * 2 / 3)
        state.widths[parent] /= 3
    for i, alpha, weight, value, slope, grad in new:
        state = states[i]
        state.centers.append(alpha)
        state.widths.append(weight)
        state.values.append(value)
        state.slopes.append(slope)
        state.grads.append(grad)
    for i in {r[0] for r in requests}:
        state = states[i]
        order = sorted(range(len(state.centers)), key=state.centers.__getitem__)
        for name in ("centers", "widths", "values", "slopes", "grads"):
            items = getattr(state, name)
            setattr(state, name, [items[j] for j in order])
