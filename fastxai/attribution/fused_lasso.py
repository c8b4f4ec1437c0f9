"""Batched weighted fused-lasso regression (Tibshirani et al. 2005) by ADMM with an exact polish,
for LEMNA's mixture components: one problem per row, all solved together in float64.

Each problem, for a centred weighted design (``gram`` G [R, M, M], ``linear`` h [R, M], as
``surrogate._moments`` forms them with weights summing to 1)::

    argmin_beta  1/2 beta^T G beta - h^T beta + penalty * sum_j |beta_{j+1} - beta_j|

which is ``1/2 sum_p w_p (y_p - c - z_p . beta)^2 + penalty * ||D beta||_1`` with the intercept
``c`` profiled out and ``D`` the first-difference matrix [M - 1, M] (adjacent features'
coefficients pulled together).
"""

from __future__ import annotations

import torch

_KKT_RTOL = 1e-7
"""Slack of the optimality check, relative to the penalty and to the size of ``h``."""


def difference(beta: torch.Tensor) -> torch.Tensor:
    """``D beta``: [..., M] -> [..., M - 1], ``beta_{j+1} - beta_j``."""
    return beta[..., 1:] - beta[..., :-1]


def difference_transpose(values: torch.Tensor) -> torch.Tensor:
    """``D^T s``: [..., M - 1] -> [..., M], ``(D^T s)_i = s_{i-1} - s_i`` (zero outside)."""
    padded = torch.nn.functional.pad(values, (1, 1))
    return padded[..., :-1] - padded[..., 1:]


def _laplacian(features: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``D^T D`` [M, M]: the path graph's Laplacian (free ends)."""
    eye = torch.eye(features, dtype=dtype, device=device)
    matrix = eye[1:] - eye[:-1]  # D
    return matrix.T @ matrix


def kkt_violation(
    gram: torch.Tensor, linear: torch.Tensor, beta: torch.Tensor, penalty: float
) -> torch.Tensor:
    """How far ``beta`` is from optimal [R], 0 at the optimum (up to rounding).

    Optimality: ``h - G beta = D^T sigma`` with ``sigma_j = penalty sign((D beta)_j)`` where the
    coefficients jump and ``|sigma_j| <= penalty`` where they are fused. ``D^T sigma = r`` fixes
    ``sigma_j = -sum_{i <= j} r_i`` and needs ``sum_i r_i = 0``; the violation is the largest
    breach of these conditions.
    """
    residual = linear - (gram @ beta.unsqueeze(-1)).squeeze(-1)
    sums = residual.cumsum(-1)
    sigma, total = -sums[..., :-1], sums[..., -1].abs()
    jumps = difference(beta)
    scale = jumps.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    moving = jumps.abs() > 1e-9 * scale
    wanted = penalty * torch.sign(jumps)
    breach = torch.where(moving, (sigma - wanted).abs(), (sigma.abs() - penalty).clamp_min(0))
    worst = breach.amax(-1) if breach.shape[-1] else torch.zeros_like(total)
    return torch.maximum(worst, total)


def _polish(
    gram: torch.Tensor, linear: torch.Tensor, signs: torch.Tensor, penalty: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact solution for a guess of the jumps: ``signs`` [R, M - 1] in {-1, 0, 1}, 0 where
    adjacent coefficients are fused, else the sign of ``beta_{j+1} - beta_j``. Returns (beta
    [R, M], optimal [R], the next guess [R, M - 1]).

    With the blocks fixed, ``beta = E b`` (``E`` [M, n_blocks] the block indicator) and the
    penalty is linear, ``penalty s . D E b``: ``E^T G E b = E^T (h - penalty D^T s)``, solved
    by Cholesky (unused block columns get the identity). Optimal where the jumps keep their
    signs and ``kkt_violation`` passes. The next guess fuses the jumps whose sign flipped and
    opens, with the sign asked for, the fused pairs whose ``|sigma_j|`` exceeds the penalty
    (an active-set step, as ``surrogate.lasso`` takes for the Lasso).
    """
    features = linear.shape[1]
    block = torch.cat([torch.zeros_like(signs[:, :1]), (signs != 0).to(signs.dtype)], dim=1).cumsum(1).long()
    indicator = torch.nn.functional.one_hot(block, features).to(gram.dtype)  # [R, M, M]: E
    used = indicator.sum(1) > 0
    reduced = indicator.mT @ gram @ indicator + torch.diag_embed((~used).to(gram.dtype))
    rhs = (indicator.mT @ (linear - penalty * difference_transpose(signs)).unsqueeze(-1)).squeeze(-1)
    factor, info = torch.linalg.cholesky_ex(reduced)
    solution = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
    beta = (indicator @ solution.unsqueeze(-1)).squeeze(-1)
    jumps = torch.sign(difference(beta))
    kept = torch.where(signs != 0, jumps == signs, torch.ones_like(signs, dtype=torch.bool))
    slack = _KKT_RTOL * (penalty + linear.abs().amax(1))
    optimal = (info == 0) & kept.all(1) & torch.isfinite(beta).all(1)
    optimal &= kkt_violation(gram, linear, beta, penalty) <= slack
    sigma = -(linear - (gram @ beta.unsqueeze(-1)).squeeze(-1)).cumsum(1)[:, :-1]
    opening = (signs == 0) & (sigma.abs() > penalty + slack.unsqueeze(1))
    guess = torch.where(kept, signs, torch.zeros_like(signs))
    guess = torch.where(opening, torch.sign(sigma), guess)
    return beta, optimal, guess


_ACTIVE_SET_ROUNDS = 8
"""Active-set steps ``fused_lasso`` takes from each ADMM iterate's jump pattern."""


def fused_lasso(
    gram: torch.Tensor,
    linear: torch.Tensor,
    penalty: float,
    *,
    start: torch.Tensor | None = None,
    max_iter: int = 2000,
    tol: float = 1e-7,
    check_every: int = 25,
) -> torch.Tensor:
    """The weighted fused lasso of the module's docstring for every row: beta [R, M], float64.

    ADMM (Boyd et al. 2011, section 6.4.1, generalised lasso) on ``u = D beta``, with
    ``rho`` the mean diagonal of ``G``: ``beta <- (G + rho D^T D)^-1 (h + rho D^T (u - v))``
    (the inverse formed once per problem from its Cholesky factor), ``u <- soft(D beta + v,
    penalty / rho)``, ``v <- v + D beta - u``. Every ``check_every`` iterations the fused blocks
    and jump signs of ``u`` start up to ``_ACTIVE_SET_ROUNDS`` exact active-set steps
    (``_polish``), kept where they pass the optimality conditions; a row
    whose iterate's ``kkt_violation`` is below ``tol * (penalty + max |h|)`` stops with it (a
    nearly singular ``G`` converges slowly and may not settle exactly). Settled rows leave the
    iteration. ``start``: a warm start [R, M].
    """
    gram, linear = gram.double(), linear.double()
    rows, features = linear.shape
    eye = torch.eye(features, dtype=gram.dtype, device=gram.device)
    if features == 1 or penalty == 0:
        ridge = 1e-12 * gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-300)
        return torch.linalg.solve(gram + ridge.view(-1, 1, 1) * eye, linear.unsqueeze(-1)).squeeze(-1)
    rho = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
    system = gram + rho.view(-1, 1, 1) * _laplacian(features, gram.dtype, gram.device)
    # the explicit inverse: one batched product per iteration instead of two triangular solves
    inverse = torch.cholesky_inverse(torch.linalg.cholesky_ex(system + (1e-10 * rho).view(-1, 1, 1) * eye)[0])
    solution = torch.zeros_like(linear) if start is None else start.double().clone()
    slack = tol * (penalty + linear.abs().amax(1))
    # the rows still open, and their working copies: settled rows leave the iteration
    rows_open = torch.arange(rows, device=linear.device)
    g, h, inv, r, bound = gram, linear, inverse, rho.view(-1, 1), slack
    beta = solution.clone()
    u = difference(beta)
    v = torch.zeros_like(u)
    for iteration in range(1, max_iter + 1):
        rhs = h + r * difference_transpose(u - v)
        beta = (inv @ rhs.unsqueeze(-1)).squeeze(-1)
        moved = difference(beta)
        shifted = moved + v
        u = shifted - shifted.clamp(-penalty / r, penalty / r)
        v = v + moved - u
        if iteration % check_every and iteration != max_iter:
            continue
        settled = torch.zeros(rows_open.shape[0], dtype=torch.bool, device=linear.device)
        guess = torch.sign(u)
        for _ in range(_ACTIVE_SET_ROUNDS):
            exact, optimal, guess = _polish(g, h, guess, penalty)
            newly = optimal & ~settled
            solution[rows_open[newly]] = exact[newly]
            settled |= optimal
            if bool(settled.all()):
                break
        close = ~settled & (kkt_violation(g, h, beta, penalty) <= bound)
        solution[rows_open[close]] = beta[close]
        settled |= close
        if bool(settled.all()):
            return solution
        keep = ~settled
        rows_open, g, h, inv, r, bound = rows_open[keep], g[keep], h[keep], inv[keep], r[keep], bound[keep]
        beta, u, v = beta[keep], u[keep], v[keep]
    solution[rows_open] = beta
    return solution
