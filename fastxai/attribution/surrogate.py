"""Batched surrogate-model fits for KernelSHAP and LIME: one weighted regression per input, all
solved together with ``torch.linalg`` on the inputs' device, in float64.

Shapes: ``z`` [B, P, M] the interpretable samples (coalitions), ``y`` [B, P] the model scores,
``w`` [B, P] the sample weights (>= 0, at least one > 0 per input).
"""

from __future__ import annotations

import torch

from fastxai.attribution._perturbation import as_dtype

_PIVOT_RTOL = 1e-9
"""A Cholesky pivot ``L_jj^2`` below this fraction of the largest diagonal entry of the Gram
matrix marks column ``j`` as (nearly) a combination of the columns before it."""


def _solve_normal_equations(gram: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``gram^+ rhs`` for symmetric PSD ``gram`` [B, M, M] and ``rhs`` [B, M]: the minimum-norm
    least-squares solution, also when a coalition design leaves a direction undetermined.

    A Cholesky solve where every pivot is clearly positive (``L_jj^2`` is the squared distance
    of column ``j`` from the span of the columns before it, so a dependent column shows as a
    pivot near 0): there the system has one solution, which the pseudo-inverse would also give.
    The pseudo-inverse (an eigen-decomposition, many times slower) only for the rest.
    """
    factor, info = torch.linalg.cholesky_ex(gram)
    pivots = factor.diagonal(dim1=1, dim2=2)
    scale = gram.diagonal(dim1=1, dim2=2).amax(1)
    regular = (info == 0) & (pivots.square().amin(1) > _PIVOT_RTOL * scale)
    solution = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
    if bool(regular.all()):
        return solution
    fallback = (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(-1)).squeeze(-1)
    return torch.where(regular.unsqueeze(1), solution, fallback)


_EXACT_FLOAT32_COUNT = 2**24
"""Integers up to this size are exact in float32."""


def _moments(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, fit_intercept: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The normal equations: Gram matrix ``sum_p w_p z~_p z~_p^T`` [B, M, M] and right side
    ``sum_p w_p z~_p y~_p`` [B, M], with ``z~, y~`` centred on their weighted means when
    ``fit_intercept`` (weights normalised to sum 1 then; ``z~ = z`` otherwise), and the means
    ([B, M], [B]; zeros without intercept); float64.

    ``w`` None (only without intercept) means unit weights: then ``z`` may be a float32 design
    of small integers (entries in {-1, 0, 1}, fewer than 2**24 samples), whose Gram matrix holds
    integers below 2**24 and is formed in float32, exactly, at a fraction of a float64 product's
    cost. Otherwise ``z`` is float64.

    The centring of ``z`` is applied to the moments, not to the samples: ``sum w z~ z~^T =
    sum w z z^T - mean mean^T`` and ``sum w z~ y~ = sum w z y~`` (``y`` is centred first,
    which is cheap and keeps a large offset of the scores out of the products).
    """
    if w is None:
        assert not fit_intercept and z.shape[1] < _EXACT_FLOAT32_COUNT
        gram = (z.mT @ z).double()
        zeros = y.new_zeros(y.shape[0])
        linear = (y.unsqueeze(1) @ z.double()).squeeze(1)
        return gram, linear, zeros.new_zeros(z.shape[0], z.shape[2]), zeros
    if fit_intercept:
        w = w / w.sum(dim=1, keepdim=True)
    weighted = z * w.unsqueeze(-1)
    gram = weighted.mT @ z
    if fit_intercept:
        z_mean = weighted.sum(1)
        y_mean = torch.linalg.vecdot(w, y)
        y = y - y_mean.unsqueeze(1)
        gram = gram.sub_(z_mean.unsqueeze(2) * z_mean.unsqueeze(1))
    else:
        z_mean, y_mean = z.new_zeros(z.shape[0], z.shape[2]), y.new_zeros(y.shape[0])
    linear = (y.unsqueeze(1) @ weighted).squeeze(1)  # [B, 1, P] @ [B, P, M]: BLAS's fast shape
    return gram, linear, z_mean, y_mean


def weighted_least_squares(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, *, fit_intercept: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``argmin_{beta, c} sum_p w_p (y_p - c - z_p . beta)^2`` per input: (beta [B, M], c [B]).

    Without ``fit_intercept``, ``c = 0``, and ``w`` may be None (unit weights; see ``_moments``
    for the float32 integer designs this allows). Normal equations in float64; the minimum-norm
    solution where the design leaves directions undetermined.
    """
    y = y.double()
    if w is not None:
        z, w = as_dtype(z, torch.float64), w.double()
    gram, linear, z_mean, y_mean = _moments(z, y, w, fit_intercept)
    coef = _solve_normal_equations(gram, linear)
    return coef, y_mean - (z_mean * coef).sum(1)


def constrained_least_squares(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, total: torch.Tensor
) -> torch.Tensor:
    """``argmin_phi sum_p w_p (y_p - z_p . phi)^2`` subject to ``sum_m phi_m = total`` per input.

    The KernelSHAP fit (Lundberg & Lee 2017): ``y = f(z) - f(baseline)``, ``total = f(x) -
    f(baseline)``; the constraint is the efficiency axiom. It is solved exactly by eliminating
    the last feature, ``phi_M = total - sum_{m<M} phi_m``. ``w`` None means unit weights (the
    sampled KernelSHAP design); ``z`` may then be boolean, and the Gram matrix of the 0/1
    design is formed exactly in float32. Returns phi [B, M] in float64.
    """
    y, total = y.double(), total.double()
    groups = z.shape[2]
    if groups == 1:
        return total.view(-1, 1)
    integer = w is None and not z.is_floating_point() and z.shape[1] < _EXACT_FLOAT32_COUNT
    design = as_dtype(z, torch.float32 if integer else torch.float64)
    last = design[:, :, -1:]
    reduced = design[:, :, :-1] - last  # entries in {-1, 0, 1} for a 0/1 design: exact in float32
    residual = y - last.squeeze(-1).double() * total.unsqueeze(1)
    head, _ = weighted_least_squares(reduced, residual, w, fit_intercept=False)
    return torch.cat([head, (total - head.sum(1)).unsqueeze(1)], dim=1)


def _lasso_polish(
    gram: torch.Tensor, linear: torch.Tensor, alpha: float, support: torch.Tensor, signs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact Lasso solution for a guessed support and signs, and whether it is optimal.

    On the support ``A`` the optimality conditions are linear, ``G_AA beta_A = c_A - alpha s_A``;
    the solution is optimal when its signs are ``s_A`` and ``|c_j - (G beta)_j| <= alpha`` off
    the support (the subgradient conditions). ``G_AA`` (with the identity off the support) is
    solved by Cholesky: a support whose columns are dependent fails the factorisation and is
    not optimal. Returns (beta [B, M], optimal [B], the residual ``c - G beta`` [B, M]).
    """
    pair = support.unsqueeze(2) & support.unsqueeze(1)
    identity = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
    system = torch.where(pair, gram, identity)  # G_AA, and the identity off the support
    rhs = torch.where(support, linear - alpha * signs, torch.zeros_like(linear))
    factor, info = torch.linalg.cholesky_ex(system)
    beta = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
    residual = linear - (gram @ beta.unsqueeze(-1)).squeeze(-1)
    slack = alpha * (1 + 1e-9) + 1e-12 * linear.abs().amax(1, keepdim=True)
    signs_kept = torch.where(support, torch.sign(beta) == signs, torch.ones_like(support))
    outside_ok = torch.where(support, torch.ones_like(support), residual.abs() <= slack)
    optimal = (info == 0) & signs_kept.all(1) & outside_ok.all(1) & torch.isfinite(beta).all(1)
    return beta, optimal, residual


def _polish_open(
    gram: torch.Tensor,
    linear: torch.Tensor,
    alpha: float,
    support: torch.Tensor,
    signs: torch.Tensor,
    settled: torch.Tensor,
    rank: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_lasso_polish`` on the inputs it can settle: not settled yet, and with a support of at
    most ``rank`` members (the rank of the centred design, ``n_samples - 1``: a larger support
    has dependent columns, its system is singular). Rows not tried come back not optimal, with
    zero coefficients and residual ``c``. Saves most of the work when few samples meet many
    features (LIME's default of 25 samples on an image)."""
    open_rows = ~settled & (support.sum(1) <= rank)
    beta = torch.zeros_like(linear)
    optimal = torch.zeros_like(settled)
    residual = linear.clone()
    if not bool(open_rows.any()):
        return beta, optimal, residual
    if bool(open_rows.all()):
        return _lasso_polish(gram, linear, alpha, support, signs)
    index = open_rows.nonzero().squeeze(1)
    sub = _lasso_polish(gram[index], linear[index], alpha, support[index], signs[index])
    beta[index], optimal[index], residual[index] = sub
    return beta, optimal, residual


_ACTIVE_SET_ROUNDS = 4
"""Active-set guesses ``lasso`` tries before its iteration (see there)."""

_EARLY_POLISHES = (2, 4, 8, 12)
"""Iterations at which ``lasso`` tries the support of its iterate before settling into one try
every ``polish_every``: on LIME problems most supports are right within a few iterations."""


def _polish_due(iteration: int, every: int) -> bool:
    return iteration in _EARLY_POLISHES or (iteration > _EARLY_POLISHES[-1] and iteration % every == 0)


def lasso(
    z: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    alpha: float,
    *,
    max_iter: int = 20000,
    tol: float = 1e-10,
    polish_every: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted Lasso per input, scikit-learn's objective with an unpenalised intercept:

    ``argmin_{beta, c} 1 / (2 sum_p w_p) * sum_p w_p (y_p - c - z_p . beta)^2 + alpha * ||beta||_1``

    (``sklearn.linear_model.Lasso(alpha).fit(z, y, sample_weight=w)``, Captum's default LIME
    surrogate), for all inputs at once. First by active sets: the support and signs are guessed
    from the optimality conditions at zero, the linear system they imply is solved exactly and
    kept where it is optimal, and the guess is refined from the result (``_ACTIVE_SET_ROUNDS``
    times). Inputs still open then go to FISTA (Beck & Teboulle 2009) on the weighted
    Gram matrix ``G`` with step ``1 / L``, ``L`` the largest absolute row sum of ``G`` (a bound
    on its largest eigenvalue that needs no eigen-solver). At iterations 2, 4, 8, 12 and then
    every ``polish_every`` the support and signs of the iterate are tried: the linear system
    they imply is solved exactly and kept for the inputs where it satisfies the optimality
    conditions, so the iteration only has to find the support. Inputs not settled that way stop
    when the largest coefficient change is below ``tol`` (relative) or after ``max_iter``.
    Returns (beta [B, M], c [B]).
    """
    z, y, w = as_dtype(z, torch.float64), y.double(), w.double()
    gram, linear, z_mean, y_mean = _moments(z, y, w, True)
    solution = torch.zeros_like(linear)
    settled = torch.zeros(linear.shape[0], dtype=torch.bool, device=linear.device)
    # Active set: start from the coefficients that violate the optimality conditions at zero
    # (|c_j| > alpha, sign of c_j); after each exact solve keep the support members whose sign
    # held and add those that now violate them. On LIME problems (sparse solutions) one or two
    # rounds settle every input; the iteration below only runs for the rest.
    support, signs = linear.abs() > alpha, torch.sign(linear)
    rank = max(1, z.shape[1] - 1)
    for _ in range(_ACTIVE_SET_ROUNDS):
        exact, optimal, residual = _polish_open(gram, linear, alpha, support, signs, settled, rank)
        solution = torch.where((optimal & ~settled).unsqueeze(1), exact, solution)
        settled |= optimal
        if bool(settled.all()):
            return solution, y_mean - (z_mean * solution).sum(1)
        entering = ~support & (residual.abs() > alpha)
        support = (support & (torch.sign(exact) == signs) & (exact != 0)) | entering
        signs = torch.where(entering, torch.sign(residual), torch.sign(exact))
    lipschitz = gram.abs().sum(2).amax(1).clamp_min(1e-300).view(-1, 1)
    # one step from v is soft_threshold((I - G / L) v + c / L, alpha / L): one batched matmul
    forward = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device) - gram / lipschitz.unsqueeze(2)
    shift = (linear / lipschitz).unsqueeze(-1)
    threshold = alpha / lipschitz
    coef = torch.zeros_like(linear)
    momentum_point = coef
    for iteration in range(1, max_iter + 1):
        step = torch.baddbmm(shift, forward, momentum_point.unsqueeze(-1)).squeeze(-1)
        new = step - step.clamp(-threshold, threshold)
        change = new - coef
        momentum_point = torch.add(new, change, alpha=(iteration - 1) / (iteration + 2))
        coef = new
        if _polish_due(iteration, polish_every):
            exact, optimal, _ = _polish_open(gram, linear, alpha, coef != 0, torch.sign(coef), settled, rank)
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
