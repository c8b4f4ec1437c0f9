"""Square Attack (Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020): random search over square-shaped
updates, using only the model's outputs (no gradient), in an L-inf or L2 ball.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional

from fastxai import _model, ops
from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.attacks._core import (
    check_threat_model,
    make_generator,
    prepare,
    resolve_labels,
)

SQUARE_LOSSES = ("margin", "ce")
SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)


def square_fraction(iteration: int, n_queries: int, p_init: float, rescale: bool) -> float:
    """The paper's schedule of ``p``, the fraction of pixels a square covers: ``p_init`` halved
    at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 (of 10000, rescaled to
    ``n_queries`` when ``rescale``)."""
    it = int(iteration / n_queries * 10000) if rescale else iteration
    divisor = 512
    for limit, value in SCHEDULE:
        if it <= limit:
            divisor = value
            break
    return p_init / divisor


def _signs(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=device).float() * 2 - 1


def _window_mask(
    batch: int, height: int, width: int, size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A ``size`` x ``size`` square at a random position per sample: (mask [B, 1, H, W],
    rows [B, size], columns [B, size])."""
    top = torch.randint(0, height - size + 1, (batch, 1), generator=generator, device=device)
    left = torch.randint(0, width - size + 1, (batch, 1), generator=generator, device=device)
    offsets = torch.arange(size, device=device)
    rows, cols = top + offsets, left + offsets
    in_rows = (torch.arange(height, device=device) - top >= 0) & (
        torch.arange(height, device=device) < top + size
    )
    in_cols = (torch.arange(width, device=device) - left >= 0) & (
        torch.arange(width, device=device) < left + size
    )
    mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1)
    return mask, rows, cols


def _eta(size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """The paper's L2 square pattern [size, size]: two halves of opposite sign, each a sum of
    nested rectangles weighted 1/(n+1)^2, unit L2 norm, transposed at random."""

    def rectangles(rows: int, cols: int) -> torch.Tensor:
        pattern = torch.zeros(rows, cols, device=device)
        centre_r, centre_c = rows // 2, cols // 2
        for n in range(max(centre_r + 1, centre_c + 1)):
            top, left = max(centre_r - n, 0), max(centre_c - n, 0)
            pattern[
                top : min(centre_r - n + 2 * n + 1, rows), left : min(centre_c - n + 2 * n + 1, cols)
            ] += 1.0 / (n + 1) ** 2
        return pattern / pattern.norm()

    pattern = torch.zeros(size, size, device=device)
    pattern[: size // 2] = rectangles(size // 2, size)
    pattern[size // 2 :] = -rectangles(size - size // 2, size)
    pattern = pattern / pattern.norm()
    if bool(torch.rand((), generator=generator, device=device) > 0.5):
        pattern = pattern.t()
    return pattern


def _gather_windows(delta: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``delta`` [B, C, H, W] at each sample's square -> [B, C, s, s]."""
    index = torch.arange(delta.shape[0], device=delta.device).view(-1, 1, 1)
    return delta[index, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


def _l2_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Initial L2 perturbation of norm ``eps``: a grid of 5 x 5 squares, each the eta pattern
    with a random sign per sample and channel."""
    batch, channels, height, width = x.shape
    size = max(min(height, width) // 5, 1)
    delta = torch.zeros_like(x, dtype=torch.float32)
    top0, left0 = (height - size * (height // size)) // 2, (width - size * (width // size)) // 2
    for top in range(top0, height - size + 1, size):
        for left in range(left0, width - size + 1, size):
            sign = _signs((batch, channels, 1, 1), generator, x.device)
            delta[:, :, top : top + size, left : left + size] += _eta(size, generator, x.device) * sign
    return delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)


def square_attack(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    eps: float = 8 / 255,
    norm: str = "linf",
    n_queries: int = 5000,
    p_init: float = 0.8,
    loss: str = "margin",
    targeted: bool = False,
    rescale_schedule: bool = True,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    seed: int | None = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Square Attack: keep, per sample, the best point found; each iteration proposes a change
    confined to a random ``s`` x ``s`` square (``s^2 ~ p * H * W``, ``p`` shrinking on the
    paper's schedule) and keeps it if the loss went down, until the sample is misclassified
    (margin <= 0) or ``n_queries`` model calls were spent on it.

    - L-inf: start from vertical stripes of ``+-eps``; the square is set to ``+-eps`` per
      channel (the fused ``pgd_step`` projects onto the ball and clamps to ``bounds``).
    - L2: start from a grid of ``eta`` patterns of norm ``eps``; the square's mass is redrawn
      and a second square's moved into it, and the whole perturbation is rescaled to norm ``eps``.
    - ``loss``: ``"margin"`` (``z_y - max_{j != y} z_j``) or ``"ce"`` (minus the cross-entropy);
      ``targeted``: ``labels`` are the targets and the margin is ``max_{j != t} z_j - z_t``.
    - Only forward passes of the samples not yet fooled, without gradients: black-box.
      Squares are drawn per sample (the reference code shares one position across the batch).

    inputs: [B, C, H, W] within ``bounds``; returns [B, C, H, W] within ``eps`` of the inputs.
    ``seed`` makes the search reproducible (None: a fresh draw).

    ``dtype``: the model's forward passes under autocast in that dtype, the proposals and the
    examples in the inputs' dtype (``fastxai.pgd``'s ``dtype``). The search then compares
    margins of bf16 logits (8 significant bits): a proposal's gain below their spacing goes
    unseen, so a small ``eps`` on a model with close logits loses most of its success (README
    "bf16": a random-weight ResNet-18 at 2/255 fooled 2% of the inputs against float32's 25%).

    >>> x_adv = fastxai.square_attack(model, x, y, eps=8/255, norm="linf", n_queries=1000, seed=0)
    """
    threat = check_threat_model(eps, norm, tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds)
    n_queries = check_count("n_queries", n_queries)
    if isinstance(p_init, bool) or not isinstance(p_init, (int, float)) or not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
    if loss not in SQUARE_LOSSES:
        raise ValueError(f"loss must be one of {SQUARE_LOSSES}, got {loss!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    model, x, label_t, forward = prepare(model, inputs, labels, bounds, normalize, dtype)
    if x.dim() != 4:
        raise ValueError(f"inputs must be images [B, C, H, W], got shape {tuple(x.shape)}")
    if targeted and label_t is None:
        raise ValueError("labels are required for a targeted attack (they are the target classes)")
    low, high = threat.bounds
    batch, channels, height, width = x.shape

    def margin_and_loss(points: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z = forward(points).float()
        own = z.gather(1, classes.view(-1, 1)).squeeze(1)
        others = z.scatter(1, classes.view(-1, 1), float("-inf")).amax(dim=1)
        margin = others - own if targeted else own - others
        if loss == "margin":
            return margin, margin
        xent = functional.cross_entropy(z, classes, reduction="none")
        return margin, xent if targeted else -xent

    def project(points: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(points)
        return ops.pgd_step(points, zero, origin, 0.0, threat.eps, low, high, threat.norm)

    with _model.preserved_state(model):
        label_t = resolve_labels(forward, x, label_t)
        generator = make_generator(seed, x.device)
        if threat.norm == "linf":
            stripes = _signs((batch, channels, 1, width), generator, x.device).to(x.dtype)
            best = project(x + threat.eps * stripes, x)
        else:
            best = torch.clamp(x + _l2_start(x, threat.eps, generator).to(x.dtype), low, high)
        margin_best, loss_best = margin_and_loss(best, label_t)
        pixels = height * width
        for iteration in range(n_queries - 1):  # the start cost one query
            active = (margin_best > 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            origin, current, classes = x[active], best[active], label_t[active]
            fraction = square_fraction(iteration, n_queries, p_init, rescale_schedule)
            if threat.norm == "linf":
                size = min(max(round(math.sqrt(fraction * pixels)), 1), height, width)
                mask, _, _ = _window_mask(active.numel(), height, width, size, generator, x.device)
                signs = _signs((active.numel(), channels, 1, 1), generator, x.device).to(x.dtype)
                proposal = project(current + mask * (2 * threat.eps) * signs, origin)
            else:
                proposal = _l2_proposal(origin, current, threat.eps, fraction, generator, low, high)
            margin, value = margin_and_loss(proposal, classes)
            improved = (value < loss_best[active]) | (margin <= 0)
            loss_best[active] = torch.where(value < loss_best[active], value, loss_best[active])
            margin_best[active] = torch.where(improved, margin, margin_best[active])
            best[active] = torch.where(improved.view(-1, 1, 1, 1), proposal, current)
        return best


def _l2_proposal(
    origin: torch.Tensor,
    current: torch.Tensor,
    eps: float,
    fraction: float,
    generator: torch.Generator,
    low: float,
    high: float,
) -> torch.Tensor:
    """One L2 proposal: the mass of square 1 redrawn (eta pattern + its old content, normalised
    per channel to use the budget freed by zeroing square 2), then the whole perturbation
    rescaled to norm ``eps`` (clamping to the bounds only shortens it)."""
    batch, channels, height, width = origin.shape
    size = min(max(round(math.sqrt(fraction * height * width)), 3), height, width)
    if size % 2 == 0 and size < min(height, width):
        size += 1
    delta = (current - origin).float()
    mask_1, rows, cols = _window_mask(batch, height, width, size, generator, origin.device)
    mask_2, _, _ = _window_mask(batch, height, width, size, generator, origin.device)
    window_norms = _gather_windows(delta, rows, cols).square().sum(dim=(2, 3), keepdim=True).sqrt()
    image_norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    both_norms = (delta * (mask_1 | mask_2)).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    signs = _signs((batch, channels, 1, 1), generator, origin.device)
    fresh = _eta(size, generator, origin.device) * signs + _gather_windows(delta, rows, cols) / (
        window_norms + 1e-12
    )
    budget = ((eps**2 - image_norms.square()).clamp_min(0) / channels + both_norms.square()).sqrt()
    fresh = fresh / (fresh.square().sum(dim=(2, 3), keepdim=True).sqrt() + 1e-12) * budget
    delta = delta * ~mask_2
    index = torch.arange(batch, device=origin.device).view(-1, 1, 1)
    delta[index, :, rows.unsqueeze(2), cols.unsqueeze(1)] = fresh.permute(0, 2, 3, 1)
    delta = delta * (eps / (delta.flatten(1).norm(dim=1) + 1e-12)).view(-1, 1, 1, 1)
    return torch.clamp(origin + delta.to(origin.dtype), low, high)
