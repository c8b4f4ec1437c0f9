"""Batched surrogate-model fits for KernelSHAP and LIME: one weighted regression per input, all
solved together with ``torch.linalg`` on the inputs' device, in float64.

Shapes: ``z`` [B, P, M] the interpretable samples (coalitions), ``y`` [B, P] the model scores,
``w`` [B, P] the sample weights (>= 0, at least one > 0 per input).
"""

from __future__ import annotations

import torch


def _solve_normal_equations(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``gram^+ rhs`` for symmetric PSD ``gram`` [B, M, M] and ``rhs`` [B, M]: the minimum-norm
    least-squares solution, also when a coalition design leaves a direction undetermined."""
    return (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(-1)).squeeze(-1)


def _centered(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights normalised to sum 1, and z, y centred on their weighted means (the intercept)."""
    w = w / w.sum(dim=1, keepdim=True)
    z_mean = torch.einsum("bp,bpm->bm", w, z)
    y_mean = (w * y).sum(dim=1)
    return w, z - z_mean.unsqueeze(1), y - y_mean.unsqueeze(1), z_mean, y_mean


def weighted_least_squares(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, fit_intercept: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``argmin_{beta, c} sum_p w_p (y_p - c - z_p . beta)^2`` per input: (beta [B, M], c [B]).

    Without ``fit_intercept``, ``c = 0``. Normal equations in float64, pseudo-inverse.
    """
    z, y, w = z.double(), y.double(), w.double()
    if fit_intercept:
        w, z, y, z_mean, y_mean = _centered(z, y, w)
    weighted = z * w.unsqueeze(-1)
    coef = _solve_normal_equations(weighted.transpose(1, 2) @ z, torch.einsum("bpm,bp->bm", weighted, y))
    intercept = y_mean - (z_mean * coef).sum(1) if fit_intercept else torch.zeros_like(y[:, 0])
    return coef, intercept


def constrained_least_squares(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, total: torch.Tensor
) -> torch.Tensor:
    """``argmin_phi sum_p w_p (y_p - z_p . phi)^2`` subject to ``sum_m phi_m = total`` per input.

    The KernelSHAP fit (Lundberg & Lee 2017): ``y = f(z) - f(baseline)``, ``total = f(x) -
    f(baseline)``; the constraint is the efficiency axiom. It is solved exactly by eliminating
    the last feature, ``phi_M = total - sum_{m<M} phi_m``. Returns phi [B, M].
    """
    z, y, w, total = z.double(), y.double(), w.double(), total.double()
    groups = z.shape[2]
    if groups == 1:
        return total.view(-1, 1)
    last = z[:, :, -1:]
    reduced = z[:, :, :-1] - last
    residual = y - last.squeeze(-1) * total.unsqueeze(1)
    head, _ = weighted_least_squares(reduced, residual, w, fit_intercept=False)
    return torch.cat([head, (total - head.sum(1)).unsqueeze(1)], dim=1)


def _lasso_polish(
    gram: torch.Tensor, linear: torch.Tensor, alpha: float, support: torch.Tensor, signs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact Lasso solution for a guessed support and signs, and whether it is optimal.

    On the support ``A`` the optimality conditions are linear, ``G_AA beta_A = c_A - alpha s_A``;
    the solution is optimal when its signs are ``s_A`` and ``|c_j - (G beta)_j| <= alpha`` off
    the support (the subgradient conditions). Returns (beta [B, M], optimal [B]).
    """
    pair = support.unsqueeze(2) & support.unsqueeze(1)
    eye = torch.diag_embed((~support).to(gram.dtype))
    system = torch.where(pair, gram, torch.zeros_like(gram)) + eye
    rhs = torch.where(support, linear - alpha * signs, torch.zeros_like(linear))
    beta, info = torch.linalg.solve_ex(system, rhs)
    residual = linear - (gram @ beta.unsqueeze(-1)).squeeze(-1)
    slack = alpha * (1 + 1e-9) + 1e-12 * linear.abs().amax(1, keepdim=True)
    signs_kept = torch.where(support, torch.sign(beta) == signs, torch.ones_like(support))
    outside_ok = torch.where(support, torch.ones_like(support), residual.abs() <= slack)
    optimal = (info == 0) & signs_kept.all(1) & outside_ok.all(1) & torch.isfinite(beta).all(1)
    return beta, optimal


def lasso(
    z: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    alpha: float,
    *,
    max_iter: int = 20000,
    tol: float = 1e-10,
    polish_every: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Lasso per input, scikit-learn's objective with an unpenalised intercept:

    ``argmin_{beta, c} 1 / (2 sum_p w_p) * sum_p w_p (y_p - c - z_p . beta)^2 + alpha * ||beta||_1``

    (``sklearn.linear_model.Lasso(alpha).fit(z, y, sample_weight=w)``, Captum's default LIME
    surrogate). Solved for all inputs at once by FISTA with adaptive restart (Beck & Teboulle
    2009; O'Donoghue & Candes 2015) on the weighted Gram matrix, step ``1 / lambda_max``. Every
    ``polish_every`` iterations the support and signs of the iterate are tried: the linear
    system they imply is solved exactly and kept for the inputs where it satisfies the
    optimality conditions (usually after a few dozen iterations). Inputs not settled that way
    stop when the largest coefficient change is below ``tol`` (relative) or after ``max_iter``.
    Returns (beta [B, M], c [B]).
    """
    z, y, w = z.double(), y.double(), w.double()
    w, z, y, z_mean, y_mean = _centered(z, y, w)
    weighted = z * w.unsqueeze(-1)
    gram = weighted.transpose(1, 2) @ z  # [B, M, M]
    linear = torch.einsum("bpm,bp->bm", weighted, y)
    lipschitz = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(1e-300).unsqueeze(1)
    threshold = alpha / lipschitz
    coef = torch.zeros_like(linear)
    momentum_point = coef
    t = torch.ones_like(lipschitz)
    solution = torch.zeros_like(linear)
    settled = torch.zeros(linear.shape[0], dtype=torch.bool, device=linear.device)
    for iteration in range(max_iter):
        gradient = (gram @ momentum_point.unsqueeze(-1)).squeeze(-1) - linear
        step = momentum_point - gradient / lipschitz
        new = torch.sign(step) * (step.abs() - threshold).clamp_min(0)
        change = new - coef
        restart = ((momentum_point - new) * change).sum(1, keepdim=True) > 0
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
        t = torch.where(restart, torch.ones_like(t), t_next)
        momentum_point = new + momentum * change
        coef = new
        if iteration % polish_every == polish_every - 1:
            exact, optimal = _lasso_polish(gram, linear, alpha, coef != 0, torch.sign(coef))
            newly = optimal & ~settled
            solution = torch.where(newly.unsqueeze(1), exact, solution)
            settled |= optimal
            scale = coef.abs().amax(1).clamp_min(1.0)
            converged = settled | (change.abs().amax(1) <= tol * scale)
            if bool(converged.all()):
                break
    coef = torch.where(settled.unsqueeze(1), solution, coef)
    intercept = y_mean - (z_mean * coef).sum(1)
    return coef, intercept
