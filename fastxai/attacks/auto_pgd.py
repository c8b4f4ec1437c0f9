"""Auto-PGD (Croce and Hein, ICML 2020): PGD with momentum and a step size that adapts itself
per sample, with the cross-entropy or the difference-of-logits-ratio (DLR) loss.

Every step is the fused ``pgd_step`` with per-sample step sizes; the momentum combination
and the projection back into the ball reuse the same op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional

from fastxai import _backends, _model, _precision, ops
from fastxai._model import Model
from fastxai.attacks._core import (
    check_attack_inputs,
    check_count,
    check_labels,
    check_threat_model,
    expected_gradient,
    model_logits,
    normalizer,
    random_start,
    succeeded,
)

APGD_LOSSES = ("ce", "dlr")
MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """Iterations at which the step size is reconsidered: ``ceil(p_j * steps)`` with
    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    # round() first: 0.22 + 0.19 is 0.41000000000000003 in floating point, whose ceil is one too many.
    marks = {math.ceil(round(p * steps, 9)) for p in fractions if p <= 1}
    return sorted(mark for mark in marks if mark < steps)


def apgd_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str, targeted: bool) -> torch.Tensor:
    """Per-sample loss the attacker maximises, [N] float32.

    DLR (untargeted): ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))``; targeted with target t:
    ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``, where ``z_(k)`` is the k-th largest logit
    and y the true class. Needs at least 3 (4 when targeted) classes.
    """
    z = logits.float()
    if loss == "ce":
        value = functional.cross_entropy(z, labels[0] if targeted else labels, reduction="none")
        return -value if targeted else value
    ordered = z.sort(dim=1, descending=True).values
    true_logit = z.gather(1, labels[1].view(-1, 1) if targeted else labels.view(-1, 1)).squeeze(1)
    if targeted:
        target_logit = z.gather(1, labels[0].view(-1, 1)).squeeze(1)
        return -(true_logit - target_logit) / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12)
    others = z.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return -(true_logit - others) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def apgd(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    eps: float = 8 / 255,
    steps: int = 100,
    norm: str = "linf",
    loss: str = "ce",
    rho: float = 0.75,
    targeted: bool = False,
    target_labels: object = None,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    seed: int | None = None,
    backend: str | None = None,
    eot_samples: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """APGD: from a random start, steps of size ``eta`` (initially ``2 eps``) with momentum 0.75;
    at checkpoints (22%, 41%, 57%, ... of ``steps``) a sample's ``eta`` halves, and it restarts
    from its best point, when fewer than ``rho`` of its steps since the last checkpoint raised
    the loss, or when neither ``eta`` nor its best loss changed.

    - ``loss``: ``"ce"`` or ``"dlr"`` (scale-invariant, robust to gradient masking by logit scaling).
    - ``targeted``: with ``labels`` the true classes and ``target_labels`` the targets.
    - Returns, per sample, the first point found that is adversarial, else the point of highest
      loss. inputs: [B, *F] within ``bounds``; one forward+backward per step.
    - ``eot_samples``: against a randomised model, the loss, its gradient and the logits that
      decide success are means over that many draws per step (EOT, Athalye et al. 2018; the
      "rand" version of AutoAttack uses 20); 1 is the plain APGD.
    - ``dtype``: the model under autocast in that dtype, the iterates in the inputs' dtype, as
      ``fastxai.pgd``.

    >>> x_adv = fastxai.apgd(model, x, y, eps=8/255, steps=100, loss="dlr", seed=0)
    """
    model = _model.check_model(model)
    threat = check_threat_model(eps, norm, tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds)
    steps = check_count("steps", steps, 2)
    eot_samples = check_count("eot_samples", eot_samples)
    if loss not in APGD_LOSSES:
        raise ValueError(f"loss must be one of {APGD_LOSSES}, got {loss!r}")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    if backend is not None:
        _backends.check_choice(backend)
    x = check_attack_inputs(inputs, threat.bounds).detach().contiguous()
    model_dtype = _precision.check_dtype(dtype, x.device)
    _backends.resolve(backend, x.device, x.dtype)  # a backend that cannot step x, before the model runs
    batch = x.shape[0]
    true_labels = check_labels(labels, batch, x.device)
    targets = check_labels(target_labels, batch, x.device) if targeted else None
    if targeted and (targets is None or true_labels is None):
        raise ValueError("a targeted APGD needs labels (true classes) and target_labels")
    if not targeted and target_labels is not None:
        raise ValueError("target_labels are only used with targeted=True")
    forward = model_logits(model, normalizer(normalize, x), model_dtype)

    with _model.preserved_state(model):
        try:
            true_labels = _model.resolve_target(forward, x, true_labels, batch)
            if targets is not None:
                targets = _model.resolve_target(forward, x, targets, batch)
        except ValueError as error:
            raise ValueError(str(error).replace("target", "labels")) from None
        classes = forward(x[:1]).shape[1]
        if loss == "dlr" and classes < (4 if targeted else 3):
            raise ValueError(
                f"the DLR loss needs at least {4 if targeted else 3} classes, the model has {classes}"
            )
        loss_labels = (targets, true_labels) if targeted else true_labels
        success_labels = targets if targeted else true_labels
        assert success_labels is not None

        def evaluate(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            leaf = points.detach().requires_grad_(True)

            def value(logits: torch.Tensor, repeats: int) -> torch.Tensor:
                if repeats == 1:
                    return apgd_loss(logits, loss_labels, loss, targeted)  # type: ignore[arg-type]
                # EOT's stacked copies: each copy's rows keep their labels
                if targets is not None:
                    pair = (targets.repeat(repeats), true_labels.repeat(repeats))
                    return apgd_loss(logits, pair, loss, targeted)  # type: ignore[arg-type]
                return apgd_loss(logits, true_labels.repeat(repeats), loss, targeted)

            logits, values, grad = expected_gradient(forward, leaf, eot_samples, value)
            return values.detach(), grad, succeeded(logits.detach(), success_labels, targeted)

        def project(points: torch.Tensor) -> torch.Tensor:
            return ops.pgd_step(
                points,
                torch.zeros_like(points),
                x,
                0.0,
                threat.eps,
                *threat.bounds,
                threat.norm,
                backend=backend,
            )

        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
        shape = (batch,) + (1,) * (x.dim() - 1)
        eta = torch.full((batch,), 2 * threat.eps, device=x.device)
        current = random_start(x, threat, generator) if threat.eps > 0 else x.clone()
        values, grad, fooled = evaluate(current)
        best, best_values, best_grad = current.clone(), values.clone(), grad.clone()
        found = fooled.clone()
        adversarial = torch.where(fooled.view(shape), current, x)
        previous = current
        following = ops.pgd_step(
            current, grad, x, eta, threat.eps, *threat.bounds, threat.norm, backend=backend
        )
        marks = checkpoints(steps)
        increases = torch.zeros(batch, device=x.device)
        last_mark, eta_at_mark, best_at_mark = 0, eta.clone(), best_values.clone()
        for step in range(1, steps):
            previous_values = values
            previous, current = current, following
            values, grad, fooled = evaluate(current)
            newly = fooled & ~found
            adversarial[newly] = current[newly]
            found |= fooled
            increases += (values > previous_values).float()
            improved = values > best_values
            best[improved] = current[improved]
            best_grad[improved] = grad[improved]
            best_values = torch.where(improved, values, best_values)
            if step in marks:
                too_few = increases < rho * (step - last_mark)
                stalled = (eta == eta_at_mark) & (best_values == best_at_mark)
                reduce = too_few | stalled
                eta = torch.where(reduce, eta / 2, eta)
                # Restart from the best point, with the gradient kept from when it was found.
                current = torch.where(reduce.view(shape), best, current)
                grad = torch.where(reduce.view(shape), best_grad, grad)
                values = torch.where(reduce, best_values, values)
                increases.zero_()
                last_mark, eta_at_mark, best_at_mark = step, eta.clone(), best_values.clone()
            if step == steps - 1:
                break
            candidate = ops.pgd_step(
                current, grad, x, eta, threat.eps, *threat.bounds, threat.norm, backend=backend
            )
            momentum_point = (
                current + MOMENTUM * (candidate - current) + (1 - MOMENTUM) * (current - previous)
            )
            following = project(momentum_point)
        return torch.where(found.view(shape), adversarial, best)
