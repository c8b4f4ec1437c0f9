"""FAB, the Fast Adaptive Boundary attack (Croce and Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML 2020): minimum-norm adversarial examples
by steps to the projection onto the linearised decision boundary, biased towards the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fastxai import _model
from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.attacks._boundary import logits_and_jacobian, lp_norm, project_onto_hyperplane
from fastxai.attacks._core import (
    NORMS,
    check_labels,
    check_seed,
    make_generator,
    predict,
    prepare,
    resolve_labels,
)
from fastxai.attacks._multi_target import by_target_rank

Forward = Callable[[torch.Tensor], torch.Tensor]


def _boundary(
    forward: Forward, points: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The linearised boundary nearest to ``points`` (in the dual norm): ``(g, grad g)`` of
    ``g = f_k - f_y`` for the closest class k (untargeted) or the target (targeted)."""
    rows = torch.arange(points.shape[0], device=points.device)
    if targets is not None:
        leaf = points.detach().requires_grad_(True)
        with torch.enable_grad():
            z = forward(leaf).float()
            gap = z[rows, targets] - z[rows, labels]
            (grad,) = torch.autograd.grad(gap.sum(), leaf)
        return gap.detach(), grad.float()
    logits, jacobian = logits_and_jacobian(forward, points)
    gaps = logits.float() - logits.float()[rows, labels].unsqueeze(1)
    slopes = (jacobian - jacobian[rows, labels].unsqueeze(1)).flatten(2).float()
    dual = slopes.norm(dim=2) if norm == "l2" else slopes.abs().sum(dim=2)
    distances = gaps.abs() / (dual + 1e-12)
    distances[rows, labels] = torch.inf
    nearest = distances.argmin(dim=1)
    return gaps[rows, nearest], slopes[rows, nearest].view_as(points)


def _fab_run(
    forward: Forward,
    x: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor | None,
    *,
    norm: str,
    steps: int,
    alpha_max: float,
    eta: float,
    beta: float,
    bounds: tuple[float, float],
    start_radius: torch.Tensor | None,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run on correctly classified samples: (closest adversarial found [B, *F], its
    norm [B], inf where none was found)."""
    low, high = bounds
    batch = x.shape[0]
    flat_x = x.flatten(1)
    shape = (batch,) + (1,) * (x.dim() - 1)
    current = x.clone()
    if start_radius is not None:  # restarts: a random point at half the best radius so far
        if norm == "linf":
            noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
        else:
            noise = torch.randn(x.shape, generator=generator, device=x.device)
        noise = noise / lp_norm(noise, norm).clamp_min(1e-12).view(shape)
        current = (x + 0.5 * start_radius.view(shape).to(x.dtype) * noise.to(x.dtype)).clamp(low, high)
    best = x.clone()
    best_norm = torch.full((batch,), torch.inf, device=x.device)
    for _ in range(steps):
        gap, slope = _boundary(forward, current, labels, targets, norm)
        weight = slope.flatten(1)
        offset = -gap + (weight * current.flatten(1).float()).sum(dim=1)
        steps_both = project_onto_hyperplane(
            torch.cat((current.flatten(1), flat_x)),
            torch.cat((weight, weight)),
            torch.cat((offset, offset)),
            norm,
            low,
            high,
        ).view(2, *x.shape)
        from_current, from_input = steps_both[0], steps_both[1]
        size_current = lp_norm(from_current, norm).clamp_min(1e-8)
        size_input = lp_norm(from_input, norm).clamp_min(1e-8)
        bias = (size_current / (size_current + size_input)).clamp(0, alpha_max).view(shape).to(x.dtype)
        current = ((current + eta * from_current) * (1 - bias) + (x + eta * from_input) * bias).clamp(
            low, high
        )
        fooled = predict(forward, current) != labels
        distance = lp_norm(current - x, norm)
        closer = fooled & (distance < best_norm)
        best = torch.where(closer.view(shape), current, best)
        best_norm = torch.where(closer, distance, best_norm)
        # Backward step towards the input from an adversarial point: search closer to it.
        current = torch.where(fooled.view(shape), x + (current - x) * beta, current)
    return best, best_norm


def _check_options(
    norm: object,
    eps: object,
    steps: object,
    restarts: object,
    alpha_max: object,
    eta: object,
    beta: object,
    seed: object,
) -> tuple[int, int]:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0):
        raise ValueError(f"eps must be None or a number >= 0, got {eps!r}")
    for name, value, lower, upper in (
        ("alpha_max", alpha_max, 0, 1),
        ("eta", eta, 1, 10),
        ("beta", beta, 0, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lower <= value <= upper:
            raise ValueError(f"{name} must be in [{lower}, {upper}], got {value!r}")
    check_seed(seed)
    return check_count("steps", steps), check_count("restarts", restarts)


def fab(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    norm: str = "linf",
    eps: float | None = None,
    steps: int = 10,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    targeted: bool = False,
    target_labels: object = None,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    seed: int | None = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """FAB: from ``x_0`` (the input), each step linearises ``g = f_k - f_y`` at the iterate
    ``x_i`` for the class k whose linearised boundary is nearest (or the target), projects both
    ``x_i`` and ``x_0`` onto the hyperplane ``g(x_i) + grad g . (z - x_i) = 0`` inside the box
    (minimal L-inf or L2 steps ``d_i``, ``d_0``), and moves to

        x_{i+1} = clamp((1 - a)(x_i + eta d_i) + a (x_0 + eta d_0)),
        a = min(|d_i| / (|d_i| + |d_0|), alpha_max);

    once ``x_{i+1}`` is adversarial it is kept if closer than the best so far and pulled back
    to ``x_0 + beta (x_{i+1} - x_0)``. Restarts after the first start from a random point at
    half the best distance found.

    - ``labels``: true classes [B] (None: predicted). Success means leaving the true class.
    - ``targeted=True`` with ``target_labels``: linearise towards those classes only (FAB-T,
      one backward pass per step instead of the Jacobian of every class).
    - ``eps``: if given, a result farther than ``eps`` is replaced by the input (an attack in
      the eps-ball, as AutoAttack uses it); None returns every adversarial found (min-norm).

    inputs: [B, *F] within ``bounds``; returns [B, *F]: per sample the closest adversarial
    example found, or the input itself (misclassified inputs are returned as they are).

    ``dtype``: the model under autocast in that dtype, the iterates in the inputs' dtype
    (``fastxai.pgd``'s ``dtype``).

    >>> x_adv = fastxai.fab(model, x, y, norm="l2", steps=100)
    """
    steps, restarts = _check_options(norm, eps, steps, restarts, alpha_max, eta, beta, seed)
    model, x, label_t, forward = prepare(model, inputs, labels, bounds, normalize, dtype)
    targets = check_labels(target_labels, x.shape[0], x.device) if targeted else None
    if targeted and targets is None:
        raise ValueError("a targeted FAB needs target_labels")
    if not targeted and target_labels is not None:
        raise ValueError("target_labels are only used with targeted=True")
    low_high = (float(bounds[0]), float(bounds[1]))
    with _model.preserved_state(model):
        label_t = resolve_labels(forward, x, label_t)
        if targets is not None:
            targets = resolve_labels(forward, x, targets)
        generator = make_generator(seed, x.device)
        result = x.clone()
        best_norm = torch.full((x.shape[0],), torch.inf, device=x.device)
        robust = predict(forward, x) == label_t
        if targets is not None:
            robust &= targets != label_t
        for restart in range(restarts):
            index = robust.nonzero().squeeze(1)
            if index.numel() == 0:
                break
            radius = None
            if restart > 0:
                radius = best_norm[index].clamp_max(float(eps) if eps is not None else torch.inf)
                radius = torch.where(radius.isinf(), 0.0, radius)  # nothing found, no eps: from x
            found, found_norm = _fab_run(
                forward,
                x[index],
                label_t[index],
                None if targets is None else targets[index],
                norm=norm,
                steps=steps,
                alpha_max=alpha_max,
                eta=eta,
                beta=beta,
                bounds=low_high,
                start_radius=radius,
                generator=generator,
            )
            better = found_norm < best_norm[index]
            if eps is not None:
                better &= found_norm <= eps
            result[index[better]] = found[better]
            best_norm[index[better]] = found_norm[better]
            if eps is not None:
                robust[index[better]] = False  # within the ball: nothing left to find
        return result


def fab_targeted(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    norm: str = "linf",
    eps: float | None = 8 / 255,
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    seed: int | None = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """FAB-T as AutoAttack runs it: ``fab(..., targeted=True)`` towards the 2nd, 3rd, ...
    (``n_target_classes`` in all) most likely class at the clean input, each on the samples
    still robust; per sample the first misclassified result (within ``eps`` if given). The
    other arguments are ``fab``'s.

    >>> x_adv = fastxai.fab_targeted(model, x, y, eps=8/255, n_target_classes=9)
    """
    check_count("n_target_classes", n_target_classes)
    _check_options(norm, eps, steps, restarts, alpha_max, eta, beta, seed)
    model, x, label_t, forward = prepare(model, inputs, labels, bounds, normalize, dtype)
    with _model.preserved_state(model):
        label_t = resolve_labels(forward, x, label_t)

        def towards(index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return fab(
                model,
                x[index],
                label_t[index],
                norm=norm,
                eps=eps,
                steps=steps,
                restarts=restarts,
                alpha_max=alpha_max,
                eta=eta,
                beta=beta,
                targeted=True,
                target_labels=targets,
                bounds=bounds,
                normalize=normalize,
                seed=seed,
                dtype=dtype,
            )

        return by_target_rank(forward, x, label_t, n_target_classes, towards)
