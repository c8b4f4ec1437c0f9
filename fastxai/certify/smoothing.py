"""Randomized smoothing (Cohen, Rosenfeld and Kolter 2019): PREDICT and CERTIFY.

The smoothed classifier is ``g(x) = argmax_c P(f(x + sigma z) = c)``, ``z ~ N(0, I)``. If the
top class has probability ``p_A >= p_A_lower > 1/2``, ``g`` is constant on the L2 ball of radius
``sigma * Phi^-1(p_A_lower)`` (their Theorem 1 with ``p_B <= 1 - p_A``).

Noise comes from the fused ``ops.gaussian_perturb``: sample ``s`` of input ``b`` is a pure
function of (seed, s, b), drawn a block at a time, so memory does not grow with ``n`` and a
seed gives the same counts for any ``batch_size``.

``dtype=torch.bfloat16`` (or ``torch.float16``): the base classifier is the model run under
``torch.autocast`` in that dtype (``fastxai._precision``). The noise is still added to ``x``
in its own dtype, and each noisy copy is rounded to ``dtype`` after: the rounding is part of
the base classifier ``f``, so the votes are of ``f(x + sigma z)`` with exact Gaussian noise
around ``x`` itself, and Theorem 1 holds for that smoothed classifier. Rounding ``x`` first
(noise drawn in half precision) would certify the ball around the rounded input instead. The
certificate is of the classifier run in that dtype: predict with the same ``dtype``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fastxai import _backends, _budget, _model, _precision, _scheduling, ops
from fastxai._checks import check_count, check_positive
from fastxai._model import Model


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError as error:  # pragma: no cover - scipy ships with scikit-learn
        raise ImportError(
            "randomized smoothing needs scipy for the exact binomial bounds: pip install scipy"
        ) from error
    return stats


def clopper_pearson_lower(successes: torch.Tensor, trials: int, alpha: float) -> torch.Tensor:
    """One-sided ``1 - alpha`` Clopper-Pearson lower bound on a binomial proportion, [B] float64.

    ``p_lower = Beta^-1(alpha; k, n - k + 1)`` (0 when ``k = 0``): the smallest p with
    ``P(Bin(n, p) >= k) >= alpha``. This is ``proportion_confint(k, n, 2 * alpha, "beta")[0]``
    as used by Cohen et al.

    >>> clopper_pearson_lower(torch.tensor([100]), 100, 0.001)  # = 0.001 ** (1 / 100)
    """
    _check_alpha(alpha)
    stats = _scipy_stats()
    k = successes.detach().cpu().double().numpy()
    lower = stats.beta.ppf(alpha, k, trials - k + 1)
    lower[k == 0] = 0.0
    return torch.as_tensor(lower, dtype=torch.float64)


def smoothing_predict(
    model: Model,
    x: torch.Tensor,
    *,
    sigma: float = 0.25,
    n: int = 1000,
    alpha: float = 0.001,
    batch_size: int | None = None,
    seed: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """PREDICT of Cohen et al.: the top class of ``n`` noisy votes, or -1 (abstain) when a
    two-sided binomial test of the top two counts ``n_A`` vs ``n_B`` at 1/2 has p-value > alpha.

    The returned class differs from ``g(x)`` with probability at most ``alpha``. ``dtype``: the
    base classifier run in that precision (module docstring).
    x: [B, *F]; returns [B] int64 with -1 for abstentions.

    >>> pred = fastxai.certify.smoothing_predict(model, x, sigma=0.25, n=1000, seed=0)
    """
    model, x, sigma, seed, chunk = _check_common(model, x, sigma, alpha, batch_size, seed, backend)
    model_dtype = _precision.check_dtype(dtype, x.device)
    n = check_count("n", n)
    _budget.check_philox_samples("n", n)
    with _model.preserved_state(model):
        counts = _class_counts(model, x, sigma, seed, 0, n, chunk, backend, model_dtype)
    top2 = counts.topk(min(2, counts.shape[1]), dim=1)
    winner = top2.indices[:, 0]
    n_a = top2.values[:, 0]
    n_b = top2.values[:, 1] if counts.shape[1] > 1 else torch.zeros_like(n_a)
    stats = _scipy_stats()
    trials = (n_a + n_b).cpu().numpy()
    # Two-sided exact test at p = 1/2 (symmetric): 2 P(X >= n_A), capped at 1.
    p_values = torch.as_tensor((2 * stats.binom.sf(n_a.cpu().numpy() - 1, trials, 0.5)).clip(max=1.0))
    return torch.where(p_values.to(winner.device) > alpha, torch.full_like(winner, -1), winner)


def smoothing_certify(
    model: Model,
    x: torch.Tensor,
    *,
    sigma: float = 0.25,
    n0: int = 100,
    n: int = 10000,
    alpha: float = 0.001,
    batch_size: int | None = None,
    seed: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CERTIFY of Cohen et al.: guess the top class ``c_A`` from ``n0`` noisy votes, count its
    votes ``k`` among ``n`` fresh ones, bound ``p_A >= p_lower`` (one-sided Clopper-Pearson at
    level ``1 - alpha``) and return ``(c_A, sigma * Phi^-1(p_lower))``, or ``(-1, 0)`` when
    ``p_lower < 1/2``. With probability at least ``1 - alpha`` over the noise, the smoothed
    classifier predicts ``c_A`` everywhere within the returned L2 radius.

    Selection uses noise samples ``0 .. n0-1`` and estimation ``n0 .. n0+n-1``, so the two are
    independent. ``backend`` picks the noise kernel (None: the choice in force). ``dtype``: the
    base classifier run in that precision (module docstring).
    x: [B, *F]; returns (pred [B] int64, radius [B] float32).

    >>> pred, radius = fastxai.certify.smoothing_certify(model, x, sigma=0.25, n=10000, seed=0)
    """
    model, x, sigma, seed, chunk = _check_common(model, x, sigma, alpha, batch_size, seed, backend)
    model_dtype = _precision.check_dtype(dtype, x.device)
    n0 = check_count("n0", n0)
    n = check_count("n", n)
    _budget.check_philox_samples("n0 + n", n0 + n)  # the votes use noise samples 0 .. n0 + n - 1
    with _model.preserved_state(model):
        guess = _class_counts(model, x, sigma, seed, 0, n0, chunk, backend, model_dtype).argmax(dim=1)
        counts = _class_counts(model, x, sigma, seed, n0, n, chunk, backend, model_dtype)
    votes = counts.gather(1, guess.view(-1, 1)).squeeze(1)
    p_lower = clopper_pearson_lower(votes, n, alpha)
    certified = p_lower >= 0.5
    radius = sigma * _scipy_stats().norm.ppf(p_lower.clamp(min=0.5).numpy())
    radius_t = torch.where(certified, torch.as_tensor(radius, dtype=torch.float64), torch.zeros_like(p_lower))
    pred = torch.where(certified.to(guess.device), guess, torch.full_like(guess, -1))
    return pred, radius_t.float().to(x.device)


def certified_accuracy(
    pred: torch.Tensor, radius: torch.Tensor, labels: torch.Tensor, radii: Sequence[float]
) -> dict[float, float]:
    """Fraction of inputs predicted correctly with a certified radius ``>= r``, for each r.

    pred, radius, labels: [B] (an abstention, -1, is never correct); returns {r: accuracy}.

    >>> certified_accuracy(pred, radius, y, [0.0, 0.25, 0.5, 1.0])
    """
    for name, tensor in (("pred", pred), ("radius", radius), ("labels", labels)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 1 or tensor.shape != pred.shape or tensor.numel() == 0:
            raise ValueError(
                f"{name} must have shape {tuple(pred.shape)} (one entry per input), got {tuple(tensor.shape)}"
            )
    if isinstance(radii, (int, float)) or not all(
        isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 0 for r in radii
    ):
        raise ValueError(f"radii must be a sequence of numbers >= 0, got {radii!r}")
    correct = pred.cpu() == labels.cpu()
    return {float(r): float((correct & (radius.cpu() >= r)).double().mean()) for r in radii}


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def _check_common(
    model: Model,
    x: torch.Tensor,
    sigma: object,
    alpha: object,
    batch_size: object,
    seed: object,
    backend: str | None,
) -> tuple[Model, torch.Tensor, float, int, int]:
    if backend is not None:
        _backends.check_choice(backend)
    model = _model.check_model(model)
    try:
        x = _model.check_inputs(x).detach().contiguous()
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("inputs", "x", 1)) from None
    _backends.resolve(backend, x.device, x.dtype)  # a backend that cannot draw x's noise: before the model
    sigma_value = check_positive("sigma", sigma)
    _check_alpha(alpha)
    if batch_size is not None:
        check_count("batch_size", batch_size)
    chunk = _scheduling.auto_chunk_size(batch_size, x)  # type: ignore[arg-type]
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
    return model, x, sigma_value, seed, chunk


def _class_counts(
    model: Model,
    x: torch.Tensor,
    sigma: float,
    seed: int,
    sample_offset: int,
    n: int,
    chunk: int,
    backend: str | None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Votes [B, C] int64 of ``n`` noisy copies (samples ``sample_offset ..``) of every input;
    ``dtype``: the copies rounded to it after the noise, the model under autocast in it."""
    batch = x.shape[0]
    counts: list[torch.Tensor] = []
    scored = _precision.autocast_model(model, dtype, x.device.type)  # model itself for None

    def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
        count = sample_stop - sample
        noisy = ops.gaussian_perturb(
            x[row:row_stop], sigma, seed, sample_offset + sample, count, row, backend=backend
        )
        noisy = noisy.view(count * (row_stop - row), *x.shape[1:])
        if dtype is not None:  # rounded after the noise: part of the base classifier (module docstring)
            noisy = noisy.to(dtype)
        with torch.no_grad():
            output = _model.logits(scored, noisy)
        if not counts:
            counts.append(torch.zeros(batch, output.shape[1], dtype=torch.long, device=x.device))
        votes = output.argmax(dim=1).view(count, row_stop - row)
        counts[0][row:row_stop].scatter_add_(1, votes.T, torch.ones_like(votes.T))

    _scheduling.for_each_block(n, batch, chunk, body, halve_on_oom=x.is_cuda)
    return counts[0]
