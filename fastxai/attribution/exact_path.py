"""Exact Integrated Gradients on piecewise-linear networks: a finite sum over linear pieces.

Along the straight path ``p(a) = x' + a (x - x')`` a network of linear, convolution, eval
batch-norm, pooling, ReLU-family and max-pooling layers is piecewise linear in ``a``, its
gradient constant on each piece ``[a_k, a_{k+1}]``, so

    IG(x) = (x - x') * sum_k (a_{k+1} - a_k) grad f(p(m_k)),   m_k inside piece k

with no quadrature error (ExactLine: Sotoudeh and Thakur, "Computing Linear Restrictions of
Neural Networks", NeurIPS 2019, arXiv 1908.06214). Each *probe* at a point ``m`` is one
forward pass with forward-mode AD along ``x - x'`` (which gives, through ``_kinks.KinkMode``,
the piece ``[L, R]`` holding ``m``) and one backward (the gradient on that piece). Per sample
the walk keeps a frontier ``a`` (``[0, a]`` is integrated) and probes the middle of the first
uncovered gap: a piece that starts at the frontier moves it, one further right waits on a
stack until the frontier reaches it. Every probe finds a new piece, so a sample costs as many
probes as its path has pieces; all samples' probes of a round go through the model together.

>>> a, pieces = fastxai.integrated_gradients(relu_cnn, x, target=y, method="exact",
...                                          return_evaluations=True)
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwad

from fastxai import _layer
from fastxai.attribution._kinks import KinkMode, ModuleNames, NotPiecewiseLinear

__all__ = ["NotPiecewiseLinear", "exact_path"]


def _logits(site: _layer.Site, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    if isinstance(site, _layer.InputSite):
        return site.forward.logits(rows, 1, (points,))
    with site.slots.hooked("replace", site.slots.unflatten(points)):
        output = site.forward.logits(rows, 1)
    site.slots.collected()
    return output


def probe(
    site: _layer.Site,
    names: ModuleNames,
    rows: torch.Tensor,
    points: torch.Tensor,
    direction: torch.Tensor,
    target: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """At ``points`` [n, *A] of ``rows``: the target's gradient [n, *A], its score [n], and the
    offsets ``left`` <= 0 <= ``right`` [n] (float64, in units of the line parameter along
    ``direction``) of the ends of the linear piece holding each point."""
    leaf = points.detach().requires_grad_(True)
    mode = KinkMode(points.shape[0], points.device, names.current)
    with fwad.dual_level(), torch.enable_grad():
        with mode:
            output = _logits(site, rows, fwad.make_dual(leaf, direction))
        scores = fwad.unpack_dual(output).primal.gather(1, target.view(-1, 1)).squeeze(1)
        (grads,) = torch.autograd.grad(scores.sum(), [leaf], allow_unused=True, materialize_grads=True)
    return grads, scores.detach(), mode.left, mode.right


def exact_path(
    site: _layer.Site,
    model: object,
    baseline: torch.Tensor,
    target: torch.Tensor,
    chunk: int,
    max_pieces: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The path integral ``int_0^1 grad f(p(a)) da`` [B, *A] (float64) and the linear pieces
    per sample [B] (= probes), for the site's origin ``x`` and ``baseline`` (inside the model's
    state guard). Raises ``NotPiecewiseLinear`` naming the layer, and ``RuntimeError`` when a
    sample has more than ``max_pieces`` pieces."""
    x = site.origin
    batch, device = x.shape[0], x.device
    direction = x - baseline
    # Gaps narrower than this are rounding between two found pieces, not a piece of their own.
    join = 16 * torch.finfo(x.dtype).eps
    frontier = [0.0] * batch
    pending: list[list[tuple[float, float]]] = [[] for _ in range(batch)]
    pieces = torch.zeros(batch, dtype=torch.long)
    integral = torch.zeros(x.shape, dtype=torch.float64, device=device)
    names = ModuleNames(model)
    try:
        while True:
            active = [i for i in range(batch) if frontier[i] < 1.0 - join]
            if not active:
                break
            over = [i for i in active if pieces[i] >= max_pieces]
            if over:
                raise RuntimeError(
                    f"method='exact': sample {over[0]} has more than max_pieces={max_pieces} linear pieces "
                    "along its path; raise max_pieces, or use method='adaptive'"
                )
            ends = [pending[i][-1][0] if pending[i] else 1.0 for i in active]
            middles = [(frontier[i] + end) / 2 for i, end in zip(active, ends, strict=True)]
            for start in range(0, len(active), chunk):
                block = active[start : start + chunk]
                rows = torch.tensor(block, device=device)
                m = torch.tensor(middles[start : start + chunk], dtype=torch.float64, device=device)
                shape = (-1,) + (1,) * (x.dim() - 1)
                points = baseline[rows] + m.to(x.dtype).view(shape) * direction[rows]
                grads, _, left, right = probe(site, names, rows, points, direction[rows], target[rows])
                low = torch.tensor([frontier[i] for i in block], dtype=torch.float64, device=device)
                high = torch.tensor(ends[start : start + chunk], dtype=torch.float64, device=device)
                # A piece within rounding of the gap's ends takes the rest of the gap too.
                lefts = torch.where(m + left <= low + join, low, m + left)
                rights = torch.where(m + right >= high - join, high, m + right)
                integral[rows] += grads.to(torch.float64) * (rights - lefts).clamp_min(0).view(shape)
                pieces[rows.cpu()] += 1
                for i, piece_left, piece_right in zip(block, lefts.tolist(), rights.tolist(), strict=True):
                    if piece_left > frontier[i] + join:
                        pending[i].append((piece_left, piece_right))
                        continue
                    frontier[i] = max(frontier[i], piece_right)
                    while pending[i] and pending[i][-1][0] <= frontier[i] + join:
                        frontier[i] = max(frontier[i], pending[i].pop()[1])
    finally:
        names.remove()
    return integral, pieces


def check_complete(delta: torch.Tensor, scores: torch.Tensor, dtype: torch.dtype) -> None:
    """Raise where the pieces do not add up to ``f(x) - f(x')`` beyond float rounding: a kink
    the walk did not see (a non-piecewise-linear operation that slipped through)."""
    scale = scores.abs().amax(0)
    bound = 10 * math.sqrt(torch.finfo(dtype).eps) * scale
    bad = (delta.abs() > bound).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise RuntimeError(
            f"method='exact': sample {i}'s attributions sum to {delta[i].item():+.3e} off f(x) - f(x') "
            f"(scores {scores[0, i].item():.6g}, {scores[1, i].item():.6g}): the network is not piecewise "
            "linear along the path in a way the exact walk can see; use method='adaptive'"
        )
