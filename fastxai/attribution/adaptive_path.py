"""Locally adaptive path integral for Integrated Gradients on nested Gauss panels.

Each sample's path ``[0, 1]`` is a row of panels (``_panels``): the midpoint (``g1``), 3-point
Gauss-Legendre (``g3``), 7-point Kronrod (``k7``) or its 15- and 31-point Patterson extensions
(``k15``, ``k31``), whose nodes are all interior: no gradient
is taken at ``a = 0`` or ``a = 1``, so a gradient that blows up at the baseline cannot poison
the sum. The first round evaluates the ``g3`` nodes of ``[0, 1]``.

Error indicators, all free (the forward value comes with every gradient):

- scalar: ``_panels``'s split of the completeness error into boundary misfits ``m_j``; a
  panel's share is ``(|m_left| + |m_right|) / 2 + |remainder|``;
- attribution (L1 of ``(x - x') * error``): between neighbouring nodes the gradient jump
  ``J = |(g_right - g_left) * (x - x')|_1`` times an eighth of their distance on each side of a
  midpoint cell (a kink in the gap, where the cells' edge is, is off by that much on average;
  the ends use the nearest jump), and for a Gauss panel ``|(x - x') * (Q_rule - Q_cells)|_1``,
  its rule against its nodes' midpoint cells. In the marking this term counts in full (the
  cells' error, an overestimate on a smooth panel that keeps the marking cautious), except on a
  smooth (``_smooth``) ``k15`` or ``k31`` panel, where it is scaled by the fit as in the
  stopping test (3); on one raised on its contraction that no longer contracts, in the marking
  and the stopping test alike, it is at least the rule against the nested rule below it
  (``|(x - x') * (Q - Q')|_1``: with kinks inside, a 15-point rule and its cells can agree
  while both are 2% off). Counted in full, a converged ``k31`` panel stayed the largest share
  and was cut into 31 midpoint cells (``sin(25 a)``: 301 evaluations at 1e-3 that way, 65
  scaled, 219 before the Patterson rules). A smooth marked ``k7`` is raised, not cut; scaling
  its share too cost torchvision ResNet-18 attribution error (benchmark set 1: 3.5e-3 against
  2.6e-3 before).

Each round marks, per unconverged sample, the panels holding a share of its total (scalar share
/ ``|f(x) - f(x')|`` + attribution share / ``|attributions|_1``; largest first: Dörfler
marking): ``MARK_FRACTION`` far from the goal, less close to it (``MARK_GAIN``). A marked panel
gets its next nested rule's points (``g1 -> g3``: 2 new, ``g3 -> k7``: 4 new), then keeps
whichever of the raised rule and its nodes' midpoint cells leaves the smaller misfits at and
inside it: the rule where the path is smooth, the cells (raised one by one later) where it has
kinks; the ratio of the two is the panel's *fit*. Past ``k7`` the order rises only where the
path is smooth (``_smooth``): a marked ``k7`` panel whose fit is at most ``SMOOTH_FIT`` or whose
nested rules' attributions contract (``CONTRACTION``), and a ``k15`` likewise (one raised on
the contraction alone: while it still contracts), gets the next Patterson rule's points
(``k7 -> k15``: 8 new, ``k15 -> k31``: 16 new) and the same choice; otherwise, and always at
``k31``, it becomes its cells (no model call). All samples' new points go through the model
together.

A sample stops when (1) its completeness error ``|sum(attr) - (f(x) - f(x'))|`` is at most
``tolerance * |f(x) - f(x')|``, (2) the root-sum-square of its misfits is at most
``GUARD_SLACK`` times that (the size the error has when its local parts do not cancel: a lucky
cancellation does not stop it), and (3) its estimated attribution error is at most
``VECTOR_SLACK * tolerance`` of ``|attributions|_1`` (a Gauss panel's term scaled by the ratio
of its misfits to its cells', so that smooth panels count at their order; by 1 where the values
say nothing, on a path along which ``f`` is flat), and (4) on a flat path (``FLAT_SLOPE``) not
before the 7-point rule; or at ``max_steps`` evaluations; or at the
rounding floor of the scores ``8 eps (|f(x)| + |f(x')|)`` where the tolerance is below it; or
when all of its indicator sits in panels at the rounding width of ``a`` (``_Sample.raisable``: the raised
rule's nodes would coincide, in the path's dtype, with each other or the panel's ends).

>>> a, delta, evaluations = fastxai.integrated_gradients(model, x, target=y, method="adaptive",
...     tolerance=1e-3, return_convergence_delta=True, return_evaluations=True)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from fastxai import _layer
from fastxai.attribution import _panels

MARK_FRACTION = 0.8
"""Marking most of the indicator each round keeps the points spread (the indicators of a path with
hundreds of kinks are noisy): on the benchmark's ReLU CNN at 65 evaluations per sample, 0.5 left
the attributions at 0.94 of Gauss-Legendre's error (geometric mean; worst 1.22x), 0.8 at 0.87
(worst 1.05x); it costs 10-25% more evaluations on a one-hidden-layer ReLU net."""
MARK_GAIN = 1.5
MARK_FLOOR = 0.25
"""Close to its goal a sample marks less: a refined panel keeps about a third of its indicator,
so removing the excess ``1 - 1 / R`` of an estimate ``R`` times its allowance takes marking about
``1.5 (1 - 1 / R)`` of the total (at least ``MARK_FLOOR``, at most ``MARK_FRACTION``). Marking
``MARK_FRACTION`` regardless doubled the points of every round, so that a sample 5% short of its
goal at 267 points stopped at 490 or 900 (torchvision ResNet-18)."""
GUARD_SLACK = 2.0
VECTOR_SLACK = 10.0
"""Completeness is one number; the attributions can be far off while it holds (on a ReLU CNN a
sample met 1e-3 with 13 evaluations and was 3e-2 off). Their estimated error must be within
10x the tolerance too; a fixed ratio because the estimate is rough (0.3-3x on ReLU CNNs)."""
FLAT_SLOPE = 1e-4
"""A path is *flat* where at each first-round point the slope ``s = grad f . (x - x')`` is below
this fraction of ``|grad f * (x - x')|_1``: the gradient is orthogonal to the path, ``f`` does
not change along it, and its values check nothing. Three equal gradients there can be aliased
(``sin(k x1) - sin(k x2)`` from 0 to (1, 1) with ``k = 2 pi / 0.387``: the gradient's period
is the 3-point rule's node spacing; the rule is 8x off, every estimate zero), so a flat path
takes the 7-point rule before it may stop. A generic path's slope is a sizeable part of that
sum (about ``1 / sqrt(elements)`` for random signs); float32 rounding leaves ~1e-7 of it."""
SMOOTH_FIT = 0.15
"""A marked ``k7`` panel whose misfits are at most this fraction of its cells' (``_Panel.fit``,
from ``_choose``) is raised to ``k15``: the path is smooth there, and
one higher-order rule beats cells that start again from the midpoint. Above it (a kink in the
panel) it becomes its cells. A single kink ``relu(a - a0)`` (plus a linear term) inside a ``k7``
panel left its fit at 0.22 or more (60 positions of ``a0``), the ReLU CNN's marked ``k7`` panels
at 0.16 or more (benchmark, 2 sets); a smooth panel the rule has resolved is near 0, and one it
has not (timm DeiT on ``[0, 1]``) anywhere in 0.02-0.6 (those the fit misses, ``CONTRACTION``). On
the benchmark 0.1 left a DeiT sample (fit 0.124) cut and 180x Gauss-Legendre's error at its own
count; 0.2 and above raised kinked ReLU CNN panels too (0.2: 8 more evaluations on a set; 0.5
and always: fewer evaluations, up to 2.5x the attribution error). On torchvision ResNet-18 0.15
still raises a few kinked panels (set 1: 2 of ~150 k7 panels, fits 0.05 and 0.14)."""
CONTRACTION = 0.25
"""A marked ``k7`` (``k15``) panel whose fit is above ``SMOOTH_FIT`` is still raised when its nested
rules' attributions contract (``_Sample.contraction``): ``|Q_k7 - Q_g3|`` at most this fraction of
``|Q_g3 - Q_g1|`` (each ``|(x - x') * .|_1``; for ``k15``, ``k15`` against ``k7`` over ``k7``
against ``g3``). The fit looks at the scalar path only, and a
smooth panel the rule has not resolved yet can fit no better than 0.2-0.6 of its cells, while
its rules' attributions already shrink geometrically. On the benchmark's timm DeiT (4 sets)
the 7-point panels on ``[0, 1]`` contract by 0.16-0.25 and shorter ones by 0.002-0.06, the fit
of some of them 0.19-0.56; cut at fit 0.19, a DeiT sample was 370x Gauss-Legendre's error at
its own count, raised 1.0x. The marked 7-point panels of the ReLU CNN (2 sets, 63 panels)
contract by 0.29 or more, of torchvision ResNet-18 (2 sets, 315 panels) by 0.31 or more, and a
single kink ``relu(a - a0)`` inside one (99 positions, with and without a smooth term) by more
than 0.25 except within 0.04 of the path's ends. A path with few kinks can contract by luck
once: one-hidden-layer ReLU nets (5 inputs, 8 units, 60 seeds) had 7-point panels at 0.08-0.25
with fits from 0.17 to 1. So a panel raised on its contraction alone (``_Panel.on_contraction``)
is smooth only while its attributions still contract (DeiT's 15-point panels: 0.001-0.12); one
that does not is cut when marked, and its error counts as at least ``|Q - Q'|`` (raised at
contraction 0.22 and fit 0.89, a 15-point panel with 4 kinks inside fit the values to 0.01 and
stopped 2% off). Panels raised on their fit keep the fit's rule (on ResNet-18 set 1 asking
them to contract too cost 11% more evaluations). On those nets at tolerance 1e-3 and 1e-6 the
samples and evaluations are within 0.3% of the fit alone (one of 360 samples 22x off at 1e-3
either way)."""
TOP = "k31"
_RULE_OF = {1: "g1", 3: "g3", 7: "k7", 15: "k15", 31: "k31"}


@dataclass
class AdaptiveResult:
    """The path integral [B, *A], the delta [B], the evaluations per sample [B] (gradient points
    plus the two end values) and which samples did not reach the tolerance [B] (bool): stopped at
    ``max_steps`` (``unconverged``), at the rounding floor of the scores (``at_floor``) or with
    their indicator left in panels at the rounding width of the path position (``at_width``)."""

    integral: torch.Tensor
    delta: torch.Tensor
    evaluations: torch.Tensor
    unconverged: torch.Tensor
    at_floor: torch.Tensor
    at_width: torch.Tensor


class NotConverged(RuntimeError):
    """Adaptive integration did not reach the tolerance for some samples (``on_unconverged="raise"``)."""


def check_options(tolerance: object, max_steps: object, on_unconverged: object) -> None:
    """The adaptive options, each a ValueError naming it."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise ValueError(f"tolerance must be a number > 0, got {tolerance!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 5:
        raise ValueError(f"max_steps must be an int >= 5, got {max_steps!r}")
    if on_unconverged not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_unconverged must be 'warn', 'raise' or 'ignore', got {on_unconverged!r}")


def report_unconverged(
    result: AdaptiveResult, tolerance: float, max_steps: int, on_unconverged: str, what: str
) -> None:
    """Per ``on_unconverged``: a RuntimeWarning or ``NotConverged`` naming the samples (of
    ``what``) that stopped at ``max_steps``, at the rounding floor or at the rounding width, or
    nothing."""
    short = result.unconverged | result.at_floor | result.at_width
    if on_unconverged == "ignore" or not bool(short.any()):
        return
    parts = []
    if bool(result.unconverged.any()):
        parts.append(f"{int(result.unconverged.sum())} stopped at max_steps={max_steps}")
    if bool(result.at_floor.any()):
        parts.append(
            f"{int(result.at_floor.sum())} at the rounding floor of the scores (8 eps (|f(x)| + |f(x')|)), "
            "below which the completeness error cannot be resolved"
        )
    if bool(result.at_width.any()):
        parts.append(
            f"{int(result.at_width.sum())} with their error in panels at the rounding width of the path "
            "position alpha (new points there would coincide with old ones)"
        )
    message = (
        f"{what}: of {short.numel()} samples, {' and '.join(parts)}, without reaching "
        f"tolerance {tolerance} (samples {short.nonzero().flatten().tolist()[:10]}); "
        "return_convergence_delta=True gives each sample's delta"
    )
    if on_unconverged == "raise":
        raise NotConverged(message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


@dataclass(eq=False)
class _Panel:
    a: float
    b: float
    rule: str
    nodes: list[int]  # indices into the sample's points, ascending in alpha
    fit: float = 1.0  # the rule's local misfits over its cells' (1 for cells)
    contraction: float = 1.0  # its nested rules' attribution differences, last over previous
    nested: float = 0.0  # the last of those differences, |(x - x') * (Q - Q')|_1
    on_contraction: bool = False  # raised past k7 on its contraction alone (its fit said cut)
    parts: tuple[float, float, float] | None = None
    gap: float | None = None
    raisable: bool | None = None

    def cells(self) -> list[_Panel]:
        ends = self.a + (self.b - self.a) * _panels.cells(self.rule)
        return [_Panel(float(ends[k]), float(ends[k + 1]), "g1", [n]) for k, n in enumerate(self.nodes)]

    def weights(self) -> list[float]:
        return [(self.b - self.a) * float(w) for w in _panels.rule(self.rule)[1]]


@dataclass
class _Sample:
    direction: torch.Tensor
    alphas: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    slopes: list[float] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)
    panels: list[_Panel] = field(default_factory=list)
    jumps: dict[tuple[int, int], float] = field(default_factory=dict)

    def parts(self, p: _Panel) -> tuple[float, float, float]:
        """(left part, right part, remainder) of the panel's rule (``_panels``)."""
        if p.parts is None:
            h = p.b - p.a
            data = [self.values[n] for n in p.nodes] + [h * self.slopes[n] for n in p.nodes]
            left, right, remainder = (_panels.parts(p.rule) @ np.array(data)).tolist()
            p.parts = (left, right, remainder)
        return p.parts

    def raisable(self, p: _Panel, dtype: torch.dtype) -> bool:
        """Whether raising ``p`` adds points the model tells apart: the raised rule's nodes, at the
        path's ``dtype`` (where the model sees them), strictly increasing strictly inside
        ``(a, b)``. A kink between a panel's last node and its end can leave its share with the
        neighbouring midpoint cell, whose raises then only shrink it (to 0.225 of its width each
        time: from 2e-7 to 6e-18 in 16 rounds on a one-hidden-layer ReLU net); at rounding width
        new nodes fell on the ends and the raised rule lost points (a crash in ``parts``). Down
        to ``2^16 eps`` of width the closest nodes (``k31``'s first, at 4.5e-4 of it) stay 29
        ``eps`` apart: no need to look."""
        if p.raisable is None:
            p.raisable = p.b - p.a >= 2**16 * torch.finfo(dtype).eps
            if not p.raisable:
                nodes = sorted([self.alphas[n] for n in p.nodes] + _new_alphas(p))
                row = torch.tensor([p.a, *nodes, p.b], dtype=torch.float64).to(dtype)
                p.raisable = bool((row[1:] > row[:-1]).all())
        return p.raisable

    def jump(self, left: int, right: int) -> float:
        if (left, right) not in self.jumps:
            self.jumps[left, right] = float(
                ((self.grads[right] - self.grads[left]) * self.direction).abs().sum()
            )
        return self.jumps[left, right]

    def gap(self, p: _Panel) -> float:
        """``|(x - x') * (Q_rule - Q_cells)|_1`` of a Gauss panel."""
        if p.gap is None:
            widths = [c.b - c.a for c in p.cells()]
            total = sum(self.grads[n] * (w - c) for w, c, n in zip(p.weights(), widths, p.nodes, strict=True))
            p.gap = float((total * self.direction).abs().sum())
        return p.gap

    def contraction(self, p: _Panel) -> float:
        """``|(x - x') * (Q - Q')|_1 / |(x - x') * (Q' - Q'')|_1`` for a panel of at least 7 points:
        its rule ``Q`` against the nested rules ``Q'`` (every other node) and ``Q''`` (every
        fourth), the vector form of how fast the nested rules converge (``CONTRACTION``)."""
        sums = []
        for step in (1, 2, 4):
            nodes = p.nodes[step - 1 :: step]
            weights = (p.b - p.a) * _panels.rule(_RULE_OF[len(nodes)])[1]
            sums.append(sum(self.grads[n] * float(w) for n, w in zip(nodes, weights, strict=True)))
        last = float(((sums[0] - sums[1]) * self.direction).abs().sum())
        previous = float(((sums[1] - sums[2]) * self.direction).abs().sum())
        p.nested = last
        return last / previous if previous > 0 else 1.0

    def flat(self) -> bool:
        """Whether the gradient is orthogonal to the path at every point (``FLAT_SLOPE``)."""
        return all(
            abs(s) <= FLAT_SLOPE * float((g * self.direction).abs().sum())
            for s, g in zip(self.slopes, self.grads, strict=True)
        )

    def integral(self) -> torch.Tensor:
        total = torch.zeros_like(self.direction)
        for p in self.panels:
            for w, n in zip(p.weights(), p.nodes, strict=True):
                total += self.grads[n] * w
        return total

    def rule_sum(self) -> float:
        return sum(w * self.slopes[n] for p in self.panels for w, n in zip(p.weights(), p.nodes, strict=True))

    def misfits(self, panels: list[_Panel], start: float, end: float) -> tuple[list[float], list[float]]:
        """The boundary misfits [len(panels) + 1] and the panels' remainders (``_panels``)."""
        f = self.values
        split = [self.parts(p) for p in panels]
        misfits = [split[0][0] - (f[panels[0].nodes[0]] - start)]
        for j in range(1, len(panels)):
            rise = f[panels[j].nodes[0]] - f[panels[j - 1].nodes[-1]]
            misfits.append(split[j - 1][1] + split[j][0] - rise)
        misfits.append(split[-1][1] - (end - f[panels[-1].nodes[-1]]))
        return misfits, [s[2] for s in split]

    def attribution_parts(self, trusted: bool) -> list[float]:
        """Each panel's attribution-error indicator (module docstring); ``trusted`` scales a
        Gauss panel's by its fit, for the stopping test (a smooth ``k15`` or ``k31`` panel's
        always, ``_smooth``)."""
        out = []
        panels, alphas = self.panels, self.alphas
        for j, p in enumerate(panels):
            if p.rule != "g1":
                if p.on_contraction and not _smooth(p):
                    # raised on a contraction that did not last: the rule against the one below it too
                    out.append(max(self.gap(p), p.nested))
                    continue
                scaled = trusted or (p.rule in ("k15", "k31") and _smooth(p))
                out.append(self.gap(p) * (p.fit if scaled else 1.0))
                continue
            node, share = p.nodes[0], 0.0
            if j > 0:
                left = panels[j - 1].nodes[-1]
                share += self.jump(left, node) * (alphas[node] - alphas[left]) / 8
            if j + 1 < len(panels):
                right = panels[j + 1].nodes[0]
                share += self.jump(node, right) * (alphas[right] - alphas[node]) / 8
            out.append(share)
        nodes = [n for p in panels for n in p.nodes]
        if len(nodes) > 1:  # the ends: no gradient at 0 or 1, so the nearest jump stands in
            if panels[0].rule == "g1":
                out[0] += self.jump(nodes[0], nodes[1]) * alphas[nodes[0]] / 4
            if panels[-1].rule == "g1":
                out[-1] += self.jump(nodes[-2], nodes[-1]) * (1 - alphas[nodes[-1]]) / 4
        return out


def adaptive_path(
    site: _layer.PathSite,
    baseline: torch.Tensor,
    target: torch.Tensor,
    chunk: int,
    tolerance: float,
    max_steps: int,
) -> AdaptiveResult:
    """The path integral ``int_0^1 grad f(p(a)) da`` by adaptive nested Gauss panels (inside
    the model's state guard); see the module docstring."""
    x = site.origin
    batch, device = x.shape[0], x.device
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    direction = x - baseline
    ends = _layer.chunk_scores(site, torch.stack([baseline, x]), target, chunk)
    start, end = ends[0].tolist(), ends[1].tolist()
    floor = (8 * torch.finfo(x.dtype).eps * (ends[0].abs() + ends[1].abs())).tolist()
    states = [_Sample(direction[i].to(acc_dtype), panels=[_Panel(0.0, 1.0, "g1", [0])]) for i in range(batch)]
    unconverged = torch.zeros(batch, dtype=torch.bool)
    at_floor = torch.zeros(batch, dtype=torch.bool)
    at_width = torch.zeros(batch, dtype=torch.bool)
    # The first round: the midpoint and its raise to 3-point Gauss-Legendre. One point would
    # do on a linear path, but cannot tell a constant gradient from a path along which f is
    # flat while the gradient turns (f = x1^3 - x2^3 from 0 to (1, 1): the midpoint is complete
    # to the last bit and 25% off); three points can (Q_g3 - Q_cells).
    requests = [
        (i, t) for i in range(batch) for t in (0.5, *_panels.new_nodes("g1").tolist())
    ]  # (sample, alpha)
    # the panels this round raises, each with the indices its new points will have
    raised = [(i, state.panels[0], [1, 2]) for i, state in enumerate(states)]
    while requests:
        _evaluate(site, baseline, direction, target, chunk, requests, states, acc_dtype)
        for i, panel, new in raised:
            _choose(states[i], panel, new, start[i], end[i], floor[i])
        requests, raised = [], []
        for i, state in enumerate(states):
            if unconverged[i] or at_floor[i] or at_width[i]:
                continue
            difference, allowance = end[i] - start[i], tolerance * abs(end[i] - start[i])
            error = abs(state.rule_sum() - difference)
            misfits, remainders = state.misfits(state.panels, start[i], end[i])
            spread = sum(m * m for m in misfits + remainders) ** 0.5
            mass = float((state.integral() * state.direction).abs().sum())
            attribution = sum(state.attribution_parts(trusted=True))
            if (
                error <= allowance
                and spread <= GUARD_SLACK * allowance + len(misfits) ** 0.5 * floor[i]
                and attribution <= VECTOR_SLACK * tolerance * mass
                and not (len(state.alphas) <= 3 and state.flat())
            ):
                continue
            if error <= floor[i] and floor[i] > allowance:
                at_floor[i] = True  # the tolerance is below what the scores can resolve
                continue
            room = max_steps - 2 - len(state.alphas)  # the two end values count too
            picked = []
            excess = max(
                _ratio(error, allowance),
                _ratio(spread, GUARD_SLACK * allowance + len(misfits) ** 0.5 * floor[i]),
                _ratio(attribution, VECTOR_SLACK * tolerance * mass),
            )
            fraction = min(MARK_FRACTION, max(MARK_FLOOR, MARK_GAIN * (1 - 1 / excess)))
            marked = _mark(state, max(abs(difference), floor[i]), mass, start[i], end[i], fraction, x.dtype)
            if not marked:
                at_width[i] = True  # what is left to refine cannot take new points
                continue
            for panel in marked:
                cost = len(_panels.new_nodes(panel.rule))
                if cost <= room:
                    room -= cost
                    picked.append(panel)
            if not picked:
                unconverged[i] = True
                continue
            first = len(state.alphas)  # _evaluate appends each sample's points in request order
            for panel in picked:
                points = _new_alphas(panel)
                requests += [(i, t) for t in points]
                raised.append((i, panel, list(range(first, first + len(points)))))
                first += len(points)
    integral = torch.stack([state.integral() for state in states]).to(device)
    delta = (integral.to(torch.float64) * direction.to(torch.float64)).flatten(1).sum(1) - (ends[1] - ends[0])
    evaluations = torch.tensor([len(state.alphas) + 2 for state in states], dtype=torch.long)
    return AdaptiveResult(integral, delta, evaluations, unconverged, at_floor, at_width)


def _ratio(estimate: float, allowance: float) -> float:
    """How many times its allowance an estimate is (at least 1: the fraction then is the floor)."""
    if estimate <= allowance:
        return 1.0
    return estimate / allowance if allowance > 0 else float("inf")


def _mark(
    state: _Sample,
    difference: float,
    mass: float,
    start: float,
    end: float,
    fraction: float,
    dtype: torch.dtype,
) -> list[_Panel]:
    """Dörfler marking on scalar + attribution shares; a marked panel that is not raised
    (``_cut``) becomes its cells (no model call) and the marking is redone. Panels at the rounding
    width (``_Sample.raisable``) are left out, shares and total alike; none marked (an empty list) when
    no other panel is left or those left hold no share while they do."""
    while True:
        misfits, remainders = state.misfits(state.panels, start, end)
        # both shares relative: to |f(x) - f(x')| (at least the rounding floor) and |attributions|_1
        scale = 1 / difference if difference > 0 else 0.0
        vector_scale = 1 / mass if mass > 0 else 0.0
        scores = [
            ((abs(misfits[j]) + abs(misfits[j + 1])) / 2 + abs(r)) * scale + v * vector_scale
            for j, (r, v) in enumerate(zip(remainders, state.attribution_parts(trusted=False), strict=True))
        ]
        stuck = [not _cut(p) and not state.raisable(p, dtype) for p in state.panels]
        order = [j for j in sorted(range(len(scores)), key=scores.__getitem__, reverse=True) if not stuck[j]]
        total = sum(s for s, at_width in zip(scores, stuck, strict=True) if not at_width)
        left_out = sum(s for s, at_width in zip(scores, stuck, strict=True) if at_width)
        if not order or total == 0 < left_out:
            return []
        mass_marked, marked = 0.0, list[int]()
        for j in order:
            if mass_marked >= fraction * total and marked:
                break
            mass_marked += scores[j]
            marked.append(j)
        tops = {j for j in marked if _cut(state.panels[j])}
        if not tops:
            return [state.panels[j] for j in marked]
        state.panels = [c for j, p in enumerate(state.panels) for c in (p.cells() if j in tops else [p])]


def _new_alphas(panel: _Panel) -> list[float]:
    """The positions on the path of the points that raising ``panel`` adds."""
    return [panel.a + (panel.b - panel.a) * float(t) for t in _panels.new_nodes(panel.rule)]


def _cut(panel: _Panel) -> bool:
    """Whether a marked panel becomes its cells rather than raise its rule: at the top rule, and
    at ``k7`` and ``k15`` unless the path is smooth there (``_smooth``)."""
    return panel.rule == TOP or (panel.rule in ("k7", "k15") and not _smooth(panel))


def _smooth(panel: _Panel) -> bool:
    """Whether a Gauss panel of at least 7 points is on a smooth stretch of the path: its rule
    fits the path far better than its cells (``SMOOTH_FIT``) or its nested rules' attributions
    contract (``CONTRACTION``); one raised on the contraction alone only while they still contract
    (a second look, which a kink rarely passes twice)."""
    if panel.rule not in ("k7", "k15", "k31"):
        return False
    if panel.on_contraction:
        return panel.contraction <= CONTRACTION
    return panel.fit <= SMOOTH_FIT or panel.contraction <= CONTRACTION


def _choose(state: _Sample, panel: _Panel, new: list[int], start: float, end: float, floor: float) -> None:
    """``panel``, its ``new`` points (indices) evaluated, raised to its next rule or cut into its
    nodes' midpoint cells: whichever leaves the smaller misfits at and inside it."""
    j = next(k for k, p in enumerate(state.panels) if p is panel)
    nodes = sorted(panel.nodes + new, key=state.alphas.__getitem__)
    raised = _Panel(panel.a, panel.b, _panels.RAISE[panel.rule], nodes)
    options = [[raised], raised.cells()]
    # only the misfits at and inside the panel change: compute them with its two neighbours
    left, right = max(j - 1, 0), min(j + 2, len(state.panels))
    costs = []
    for option in options:
        row = state.panels[left:j] + option + state.panels[j + 1 : right]
        misfits, remainders = state.misfits(row, start, end)
        # the ends of the row are path ends only where the row reaches them
        inner = misfits[(1 if left < j else 0) : len(misfits) - (1 if right > j + 1 else 0)]
        first = j - left
        costs.append(
            sum(abs(m) for m in inner) + sum(abs(r) for r in remainders[first : first + len(option)])
        )
    # cells that fit the values to rounding say nothing of the gradient (a flat path): no trust
    raised.fit = costs[0] / costs[1] if costs[1] > (len(raised.nodes) + 1) * floor else 1.0
    if raised.rule in ("k7", "k15", "k31"):
        raised.contraction = state.contraction(raised)
    raised.on_contraction = panel.rule in ("k7", "k15") and (panel.on_contraction or panel.fit > SMOOTH_FIT)
    best = options[0] if costs[0] <= costs[1] else options[1]
    state.panels = state.panels[:j] + best + state.panels[j + 1 :]


def _evaluate(
    site: _layer.PathSite,
    baseline: torch.Tensor,
    direction: torch.Tensor,
    target: torch.Tensor,
    chunk: int,
    requests: list[tuple[int, float]],
    states: list[_Sample],
    acc_dtype: torch.dtype,
) -> None:
    """Gradients, values and slopes at the requested points, many samples' points per model pass."""
    device = baseline.device
    shape = (-1,) + (1,) * (baseline.dim() - 1)
    for begin in range(0, len(requests), chunk):
        block = requests[begin : begin + chunk]
        rows = torch.tensor([r[0] for r in block], device=device)
        alphas = torch.tensor([r[1] for r in block], dtype=baseline.dtype, device=device)
        points = baseline[rows] + alphas.view(shape) * direction[rows]
        grads, values = site.gradients(points, rows, 1, target[rows])
        grads = grads.to(acc_dtype)
        slopes = (grads.to(torch.float64) * direction[rows].to(torch.float64)).flatten(1).sum(1).tolist()
        for k, ((i, alpha), value) in enumerate(zip(block, values.tolist(), strict=True)):
            state = states[i]
            state.alphas.append(alpha)
            state.values.append(value)
            state.slopes.append(slopes[k])
            state.grads.append(grads[k])
