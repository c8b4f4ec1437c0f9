"""LEMNA (Guo et al. 2018): a local explanation from a mixture of linear regressions with a
fused-lasso penalty, fitted to the model's scores on random nullifications of the features."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from fastxai import _model, _precision
from fastxai._model import Model
from fastxai.attribution import _perturbation
from fastxai.attribution.fused_lasso import fused_lasso
from fastxai.attribution.lime import _coin_flips, lime

_RESPONSIBILITY_FLOOR = 1e-10
"""Added to every responsibility: a component no sample belongs to fits all of them, weakly,
instead of dividing by zero."""


class Mixture(NamedTuple):
    """A fitted mixture of K linear regressions per input: coef [B, K, M], intercept [B, K],
    variance [B, K], weights (the mixing proportions pi_k) [B, K], log_likelihood [B] (per
    sample), all float64."""

    coef: torch.Tensor
    intercept: torch.Tensor
    variance: torch.Tensor
    weights: torch.Tensor
    log_likelihood: torch.Tensor


def _component_fits(
    z: torch.Tensor, y: torch.Tensor, responsibility: torch.Tensor, penalty: float, start: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each component's weighted fused-lasso fit and residual variance: (coef [B, K, M],
    intercept [B, K], variance [B, K]). The weights ``r_kp`` are normalised to sum 1 per
    component and the intercept is profiled out by centring (``surrogate._moments``' rule)."""
    batch, components = responsibility.shape[:2]
    w = responsibility + _RESPONSIBILITY_FLOOR
    w = w / w.sum(2, keepdim=True)
    z_mean = torch.einsum("bkp,bpm->bkm", w, z)
    y_mean = torch.einsum("bkp,bp->bk", w, y)
    features = z.shape[2]
    # [B, K M, P] @ [B, P, M]: every component's weighted Gram matrix in one batched product
    weighted = (w.unsqueeze(2) * z.mT.unsqueeze(1)).reshape(batch, components * features, -1)
    gram = (weighted @ z).view(batch, components, features, features)
    gram = gram - z_mean.unsqueeze(-1) * z_mean.unsqueeze(-2)
    centred = y.unsqueeze(1) - y_mean.unsqueeze(-1)  # [B, K, P]
    linear = torch.einsum("bkp,bpm->bkm", w * centred, z)
    coef = fused_lasso(
        gram.reshape(-1, features, features),
        linear.reshape(-1, features),
        penalty,
        start=None if start is None else start.reshape(-1, features),
    ).reshape(batch, components, features)
    intercept = y_mean - (z_mean * coef).sum(-1)
    residual = y.unsqueeze(1) - intercept.unsqueeze(-1) - coef @ z.mT  # [B, K, P]
    variance = (w * residual.square()).sum(2)
    return coef, intercept, variance


def mixture_regression(
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    n_components: int = 2,
    penalty: float = 0.001,
    min_variance: float = 0.05,
    n_iter: int = 50,
    tol: float = 1e-6,
) -> Mixture:
    """EM for a mixture of ``n_components`` linear regressions with Gaussian noise, each with the
    fused-lasso penalty, for every input at once: z [B, P, M] the interpretable samples, y [B, P].

    Model: ``y_p ~ sum_k pi_k N(c_k + z_p . beta_k, sigma_k^2)``. E-step: responsibilities
    ``r_kp`` proportional to ``pi_k N(y_p; c_k + z_p . beta_k, sigma_k^2)``. M-step:
    ``(beta_k, c_k) = argmin 1/2 sum_p r~_kp (y_p - c_k - z_p . beta_k)^2 + penalty *
    sum_j |beta_k,j+1 - beta_k,j|`` (``r~`` normalised to sum 1; ``fused_lasso``, warm-started),
    ``sigma_k^2`` the weighted residual variance, floored at ``min_variance`` times the scores'
    variance: the likelihood of a mixture is unbounded (a component that fits a few samples
    exactly has variance 0), and the scores of a model on nullified features take few
    distinct values, so without a floor EM ends in components that fit one level each
    (Hathaway 1985's constrained maximum likelihood bounds the variances for this reason);
    ``pi_k = mean_p r_kp``. Start: one fused-lasso fit to all samples, its residuals' quantiles
    split the samples into K equal groups (deterministic). An input stops (and leaves the batch)
    when its mean log-likelihood changes by less than ``tol`` (relative); all stop after
    ``n_iter`` rounds.
    """
    z, y = z.double(), y.double()
    batch, samples, features = z.shape
    components = n_components
    uniform = torch.ones(batch, 1, samples, dtype=z.dtype, device=z.device)
    coef, intercept, _ = _component_fits(z, y, uniform, penalty, None)
    residual = y - intercept - (coef @ z.mT).squeeze(1)
    rank = residual.argsort(1).argsort(1)
    group = torch.div(rank * components, samples, rounding_mode="floor")
    responsibility = torch.nn.functional.one_hot(group, components).to(z.dtype).mT.contiguous()  # [B, K, P]
    floor = min_variance * y.var(1, correction=0).clamp_min(1e-300).view(-1, 1)
    coef = coef.expand(batch, components, features).clone()
    intercept = intercept.expand(batch, components).clone()
    variance = floor.expand(batch, components).clone()
    weights = torch.full((batch, components), 1 / components, dtype=z.dtype, device=z.device)
    log_likelihood = torch.full((batch,), -math.inf, dtype=z.dtype, device=z.device)
    active = torch.arange(batch, device=z.device)  # inputs whose EM has not converged
    for _ in range(n_iter):
        zs, ys = z[active], y[active]
        fit, offset, spread = _component_fits(zs, ys, responsibility[active], penalty, coef[active])
        spread = torch.maximum(spread, floor[active])
        share = responsibility[active].mean(2).clamp_min(_RESPONSIBILITY_FLOOR)
        share = share / share.sum(1, keepdim=True)
        residual = ys.unsqueeze(1) - offset.unsqueeze(-1) - fit @ zs.mT
        log_density = (
            share.log().unsqueeze(-1)
            - 0.5 * (2 * math.pi * spread).log().unsqueeze(-1)
            - residual.square() / (2 * spread.unsqueeze(-1))
        )
        total = torch.logsumexp(log_density, dim=1)  # [A, P]
        likelihood = total.mean(1)
        converged = (likelihood - log_likelihood[active]).abs() <= tol * likelihood.abs().clamp_min(1.0)
        coef[active], intercept[active], variance[active], weights[active] = fit, offset, spread, share
        responsibility[active] = (log_density - total.unsqueeze(1)).exp()
        log_likelihood[active] = likelihood
        active = active[~converged]
        if not active.numel():
            break
    return Mixture(coef, intercept, variance, weights, log_likelihood)


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def lemna(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    baselines: float | torch.Tensor | None = None,
    feature_mask: torch.Tensor | None = None,
    n_samples: int = 500,
    n_components: int = 2,
    penalty: float = 0.001,
    min_variance: float = 0.05,
    n_iter: int = 50,
    seed: int | None = None,
    return_input_shape: bool = True,
    forward_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """LEMNA (Guo, Mu, Xu, Su, Wang, Xing 2018, "LEMNA: Explaining Deep Learning based Security
    Applications", CCS): the coefficients of the mixture component that best fits the input.

    For each input, ``n_samples`` perturbations nullify a random subset of the M features
    (``z ~ Bernoulli(1/2)^M``, the input itself as the first sample; a nullified feature takes
    its ``baselines`` value, 0 by default): ``v(z) = f_t(baseline + z[mask] * (x - baseline))``,
    the same perturbations as ``lime``. A mixture of ``n_components`` linear regressions of
    ``v`` on ``z`` with the fused-lasso penalty ``penalty * sum_j |beta_j+1 - beta_j|`` over the
    feature order (``mixture_regression``: EM, each M-step an ADMM fused-lasso solve with an
    exact polish, ``fused_lasso``) captures a locally non-linear boundary, and the penalty
    pulls adjacent features (neighbouring positions of a sequence) together, as the paper's
    constraint ``sum_j |beta_j - beta_j-1| <= S`` does. The explanation is ``beta_k`` of the
    component with the smallest residual at the input (``z = 1``). No kernel weights (all
    samples count the same), no Lasso.

    Feature order is the group ids' order: with ``feature_mask`` None every element of
    ``inputs`` [B, *F] is a feature in row-major order (positions of a [B, L] sequence); group
    the embedding dimensions of a [B, L, D] sequence with ``feature_mask=torch.arange(L)
    .view(L, 1).expand(L, D)``. ``target``, ``baselines``, ``feature_mask``, ``seed``,
    ``forward_kwargs``, ``chunk_size``, ``dtype`` as in ``lime``. All inputs' perturbations run through the
    model in shared batches and all mixtures are fitted together.

    Returns beta as [B, *F] (each element its group's coefficient), or [B, M] when not
    ``return_input_shape``.

    >>> coef = fastxai.lemna(model, sequences, target=1, n_samples=500, seed=0)   # [B, L]
    >>> coef.topk(3, dim=1).indices                                             # the decisive positions
    """
    checked_model, prepared_inputs, _ = _perturbation.integer_inputs(model, inputs, baselines)
    _, x, _, _, _ = _perturbation.prepare(checked_model, prepared_inputs, target, chunk_size, forward_kwargs)
    _, groups = _perturbation.check_feature_mask(feature_mask, x)
    _precision.check_dtype(dtype, x.device)
    n_samples = _perturbation.check_count("n_samples", n_samples, 2)
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be an int >= 1, got {n_components!r}")
    if n_components > n_samples:
        raise ValueError(f"n_components must be at most n_samples ({n_samples}), got {n_components}")
    penalty = _check_number("penalty", penalty)
    min_variance = _check_number("min_variance", min_variance)
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be an int >= 1, got {n_iter!r}")
    seed = _perturbation.check_seed(seed)
    rng = _perturbation.generator(seed, x.device)
    samples = _coin_flips(x.shape[0], n_samples, groups, rng, x.device)
    samples[:, 0] = True  # the input itself: the component that fits it best is the explanation

    def fit(design: torch.Tensor, scores: torch.Tensor, _weights: torch.Tensor) -> torch.Tensor:
        mixture = mixture_regression(
            design, scores, n_components=n_components, penalty=penalty, min_variance=min_variance,
            n_iter=n_iter,
        )  # fmt: skip
        at_input = mixture.intercept + mixture.coef.sum(-1)  # the prediction at z = 1
        best = (scores[:, :1] - at_input).abs().argmin(1)
        return mixture.coef[torch.arange(design.shape[0], device=design.device), best]

    with _model.preserved_state(model):
        return lime(
            model,
            inputs,
            target,
            baselines=baselines,
            feature_mask=feature_mask,
            samples=samples,
            similarity=lambda z: torch.ones(z.shape[:2], dtype=torch.float64, device=z.device),
            interpretable_model=fit,
            return_input_shape=return_input_shape,
            forward_kwargs=forward_kwargs,
            chunk_size=chunk_size,
            dtype=dtype,
        )
