"""Model inversion (Fredrikson et al. 2015, "Model inversion attacks that exploit confidence
information and basic countermeasures", MI-Face): reconstruct a representative input of a class
from a trained classifier alone, by descending on the input.

>>> rec = model_inversion(model, target=[0, 1, 2], input_shape=(1, 8, 8), restarts=4, seed=0)
>>> inversion_scores(rec.inputs, [0, 1, 2], judge=other_model, reference=(x_train, y_train))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.nn import functional

from fastxai import _model, _scheduling, ops
from fastxai._checks import check_count, check_positive
from fastxai._model import Model
from fastxai.global_views.activation_maximisation import gaussian_blur

LOSSES = ("log_probability", "probability")
GRADIENTS = ("exact", "estimate")


class InversionResult(NamedTuple):
    """inputs: [restarts, *input_shape] for one int target, [len(target), restarts, *input_shape]
    for a sequence; probability: the model's softmax probability of the target at each, [restarts]
    or [len(target), restarts] float64; queries: model evaluations spent per input row."""

    inputs: torch.Tensor
    probability: torch.Tensor
    queries: int


class InversionScores(NamedTuple):
    """recognition: the share of reconstructions a separate ``judge`` model puts in their target
    class; nearest_mean: the share whose nearest class mean (L2, over ``reference``) is the
    target's; distance: the mean L2 distance to the target's class mean; other_distance: the mean
    L2 distance to the other classes' means (the scale ``distance`` should be read against)."""

    recognition: float
    nearest_mean: float
    distance: float
    other_distance: float


def _check_targets(target: object) -> tuple[list[int], bool]:
    if isinstance(target, int) and not isinstance(target, bool):
        return [target], True
    if (
        isinstance(target, Sequence)
        and not isinstance(target, str)
        and len(target) > 0
        and all(isinstance(t, int) and not isinstance(t, bool) for t in target)
    ):
        return list(target), False
    raise TypeError(f"target must be a class index or a non-empty sequence of them, got {target!r}")


def _smoothness(x: torch.Tensor) -> torch.Tensor:
    """Squared total variation per row, ``sum_d sum (x[i+1] - x[i])^2`` over each spatial dim."""
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for dim in range(2, x.dim()):
        total = total + x.diff(dim=dim).square().flatten(1).sum(1)
    return total


def _model_term(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Per row: ``1 - p_t`` (Fredrikson et al.) or ``-log p_t``, with p the softmax of the logits."""
    log_p = functional.log_softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
    return 1 - log_p.exp() if loss == "probability" else -log_p


def _estimated_gradient(
    model: Model,
    x: torch.Tensor,
    target: torch.Tensor,
    loss: str,
    sigma: float,
    n: int,
    seed: int,
    offset: int,
    chunk: int,
) -> torch.Tensor:
    """The antithetic Gaussian estimate (NES; Ilyas et al. 2018) of the model term's gradient
    from outputs only: ``sum_i (c(x + s z_i) - c(x - s z_i)) z_i / (2 n s)``; the noise comes from
    the fused Philox op (samples ``offset .. offset + n`` of ``seed``)."""
    plus = ops.gaussian_perturb(x, sigma, seed, sample_offset=offset, n_samples=n)  # [n, B, *F]
    minus = 2 * x.unsqueeze(0) - plus
    rows = torch.cat([plus, minus]).flatten(0, 1)
    repeated = target.repeat(2 * n)
    with torch.no_grad():
        values = torch.cat(
            [
                _model_term(_model.logits(model, rows[i : i + chunk]), repeated[i : i + chunk], loss)
                for i in range(0, rows.shape[0], chunk)
            ]
        ).view(2, n, x.shape[0])
    noise = (plus - x.unsqueeze(0)) / sigma
    weights = (values[0] - values[1]).view(n, x.shape[0], *([1] * (x.dim() - 1)))
    return (weights * noise).sum(0) / (2 * n * sigma)


def model_inversion(
    model: Model,
    target: int | Sequence[int],
    *,
    input_shape: Sequence[int],
    steps: int = 500,
    lr: float = 0.05,
    loss: str = "log_probability",
    tv: float = 0.02,
    l2: float = 0.01,
    prior: float | torch.Tensor = 0.0,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    restarts: int = 1,
    gradient: str = "exact",
    n_queries: int = 20,
    sigma: float = 0.05,
    seed: int = 0,
    chunk_size: int | None = None,
) -> InversionResult:
    """MI-Face model inversion (Fredrikson et al. 2015).

    For every target class ``t`` and restart, minimises over the input
    ``c(x) = L(p_t(x)) + tv * sum_d ||D_d x||^2 + l2 * ||x - prior||^2`` from ``prior`` plus
    seeded noise of std 0.01, where ``p = softmax(f(x))``, ``L(p) = -log p`` (``loss=
    "log_probability"``) or ``1 - p`` (``"probability"``, the paper's cost, whose gradient
    vanishes as ``p -> 0``: on the digits CNN, from a blank start, 5 of the 10 classes keep
    ``p`` near 0 through 500 steps),
    and ``D_d`` the finite difference along spatial dim ``d`` (the denoising term). Adam steps
    with ``lr``; the "Process" step of the paper is the clamp to ``bounds`` and, every
    ``blur_every`` steps, a Gaussian blur of ``blur_sigma``. The lowest-cost iterate is kept.

    ``gradient="exact"`` back-propagates to the input (white box); ``"estimate"`` uses only the
    model's outputs: the antithetic Gaussian estimate with ``n_queries`` noise pairs of std
    ``sigma`` per step (``2 * n_queries`` queries per step and row), the regularisers
    differentiated exactly. All targets and restarts run as one batch.

    >>> rec = model_inversion(model, target=list(range(10)), input_shape=(1, 8, 8), restarts=4)
    >>> rec.inputs.shape                                   # (10, 4, 1, 8, 8)
    """
    model = _model.check_model(model)
    targets, single = _check_targets(target)
    if (
        not isinstance(input_shape, (tuple, list, torch.Size))
        or len(input_shape) == 0
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ValueError(f"input_shape must be the shape of one input, ints >= 1, got {input_shape!r}")
    shape = tuple(input_shape)
    steps = check_count("steps", steps, 1)
    lr = check_positive("lr", lr)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    for name, value in (("tv", tv), ("l2", l2)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    box = _check_bounds(bounds)
    blur_every = check_count("blur_every", blur_every, 0)
    blur_sigma = check_positive("blur_sigma", blur_sigma)
    if blur_every and len(shape) < 2:
        raise ValueError(f"blur_every needs spatial dimensions (input_shape (C, *spatial)), got {shape}")
    restarts = check_count("restarts", restarts, 1)
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    n_queries = check_count("n_queries", n_queries, 1)
    sigma = check_positive("sigma", sigma)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**62:
        raise ValueError(f"seed must be an int in [0, 2**62), got {seed!r}")
    chunk = _scheduling.check_chunk_size(chunk_size)
    device, dtype = _placement(model)
    centre = _check_prior(prior, shape, device)
    rows = len(targets) * restarts
    generator = torch.Generator().manual_seed(seed)
    start = centre + 0.01 * torch.randn((rows, *shape), generator=generator).to(device)
    x = start.clamp(*box) if box is not None else start
    chunk = _scheduling.auto_chunk_size(chunk, x)
    row_targets = torch.tensor(targets, device=device).repeat_interleave(restarts)

    def regulariser(inputs: torch.Tensor) -> torch.Tensor:
        return tv * _smoothness(inputs) + l2 * (inputs - centre).square().flatten(1).sum(1)

    with _model.preserved_state(model):
        with torch.no_grad():
            classes = _model.logits(model, x[:1].to(dtype)).shape[1]
        if min(targets) < 0 or max(targets) >= classes:
            raise ValueError(
                f"target must be in [0, {classes}) for a model with {classes} classes, got {targets}"
            )
        x = x.requires_grad_(True)
        optimiser = torch.optim.Adam([x], lr=lr)
        best, best_cost = x.detach().clone(), torch.full((rows,), math.inf, device=device)
        for step in range(steps):
            gradient_value = torch.empty_like(x)
            cost = torch.empty(rows, device=device)
            for i in range(0, rows, chunk):
                part, wanted = x[i : i + chunk], row_targets[i : i + chunk]
                with torch.enable_grad():
                    leaf = part.detach().requires_grad_(True)
                    extra = regulariser(leaf)
                    if gradient == "exact":
                        term = _model_term(_model.logits(model, leaf.to(dtype)), wanted, loss)
                        (gradient_value[i : i + chunk],) = torch.autograd.grad((term + extra).sum(), leaf)
                    else:
                        with torch.no_grad():
                            term = _model_term(_model.logits(model, leaf.detach().to(dtype)), wanted, loss)
                        (grad_extra,) = torch.autograd.grad(extra.sum(), leaf)
                        estimate = _estimated_gradient(
                            model,
                            leaf.detach(),
                            wanted,
                            loss,
                            sigma,
                            n_queries,
                            seed,
                            step * n_queries,
                            chunk,
                        )
                        gradient_value[i : i + chunk] = grad_extra + estimate
                cost[i : i + chunk] = (term + extra).detach()
            with torch.no_grad():
                improved = cost < best_cost
                best_cost = torch.where(improved, cost, best_cost)
                best[improved] = x.detach()[improved]
            optimiser.zero_grad()
            x.grad = gradient_value
            optimiser.step()
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0:
                    x.copy_(gaussian_blur(x, blur_sigma))
                if box is not None:
                    x.clamp_(*box)
        with torch.no_grad():
            final = x.detach()
            final_cost = torch.cat(
                [
                    _model_term(
                        _model.logits(model, final[i : i + chunk].to(dtype)), row_targets[i : i + chunk], loss
                    )
                    for i in range(0, rows, chunk)
                ]
            ) + regulariser(final)
            improved = final_cost < best_cost
            best[improved] = final[improved]
            probability = torch.cat(
                [
                    functional.softmax(_model.logits(model, best[i : i + chunk].to(dtype)).double(), dim=1)
                    .gather(1, row_targets[i : i + chunk].view(-1, 1))
                    .squeeze(1)
                    for i in range(0, rows, chunk)
                ]
            )
    queries = (steps + 1) * (1 + (2 * n_queries if gradient == "estimate" else 0))
    lead = (restarts,) if single else (len(targets), restarts)
    return InversionResult(best.to(dtype).reshape(*lead, *shape), probability.reshape(lead).cpu(), queries)


def _check_bounds(bounds: object) -> tuple[float, float] | None:
    if bounds is None:
        return None
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds
        )
        or not bounds[0] < bounds[1]
    ):
        raise ValueError(f"bounds must be None or (lo, hi), finite numbers with lo < hi, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def _check_prior(prior: object, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    if isinstance(prior, (int, float)) and not isinstance(prior, bool):
        if not math.isfinite(prior):
            raise ValueError(f"prior must be finite, got {prior!r}")
        return torch.full(shape, float(prior), device=device)
    if isinstance(prior, torch.Tensor) and prior.is_floating_point():
        if tuple(prior.shape) != shape:
            raise ValueError(
                f"prior must be a number or a tensor of the input shape {shape}, got {tuple(prior.shape)}"
            )
        if not _model.all_finite(prior):
            raise ValueError("prior contains NaN or infinity")
        return prior.detach().float().to(device)
    raise TypeError(f"prior must be a number or a floating-point tensor, got {type(prior).__name__}")


def _placement(model: Model) -> tuple[torch.device, torch.dtype]:
    parameters = [p for p in getattr(model, "parameters", lambda: [])() if p.is_floating_point()]
    if parameters:
        return parameters[0].device, parameters[0].dtype
    return torch.device("cpu"), torch.float32


def inversion_scores(
    reconstructions: torch.Tensor,
    target: int | Sequence[int],
    *,
    judge: Model,
    reference: tuple[torch.Tensor, torch.Tensor],
) -> InversionScores:
    """How much of each class the reconstructions reveal, judged from outside the attacked model:
    a separately trained ``judge`` model's recognition rate, and the L2 distances to the class
    means of ``reference = (inputs [N, *F], labels [N])``, the data the attacker never saw.

    reconstructions: [R, *F] for one int target, [len(target), R, *F] for a sequence (the
    ``inputs`` of ``model_inversion``).

    >>> inversion_scores(rec.inputs, list(range(10)), judge=judge, reference=(x_train, y_train))
    """
    targets, single = _check_targets(target)
    judge = _model.check_model(judge)
    if not isinstance(reference, tuple) or len(reference) != 2:
        raise TypeError("reference must be a tuple (inputs [N, *F], labels [N])")
    x_ref = _model.check_inputs(reference[0])
    y_ref = reference[1]
    if not isinstance(y_ref, torch.Tensor) or y_ref.is_floating_point() or y_ref.shape != (x_ref.shape[0],):
        raise ValueError(f"reference labels must be an integer tensor of shape ({x_ref.shape[0]},)")
    rec = _model.check_inputs(reconstructions)
    lead = 1 if single else 2
    if (
        rec.dim() - lead != x_ref.dim() - 1
        or rec.shape[lead:] != x_ref.shape[1:]
        or (not single and rec.shape[0] != len(targets))
    ):
        expected = "[R, *F]" if single else f"[{len(targets)}, R, *F]"
        raise ValueError(
            f"reconstructions must be {expected} with F = {tuple(x_ref.shape[1:])}, got {tuple(rec.shape)}"
        )
    missing = sorted(set(targets) - set(y_ref.unique().tolist()))
    if missing:
        raise ValueError(f"reference has no example of target classes {missing}")
    flat = rec.reshape(-1, *x_ref.shape[1:])
    restarts = flat.shape[0] // len(targets)
    wanted = torch.tensor(targets, device=flat.device).repeat_interleave(restarts)
    classes = sorted(set(y_ref.tolist()))
    means = torch.stack([x_ref[y_ref == c].double().mean(0) for c in classes]).flatten(1)
    distances = torch.cdist(flat.double().flatten(1), means.to(flat.device))  # [rows, classes]
    column = torch.tensor([classes.index(t) for t in wanted.tolist()], device=flat.device)
    own = distances.gather(1, column.view(-1, 1)).squeeze(1)
    others = (distances.sum(1) - own) / max(len(classes) - 1, 1)
    with _model.inference_state(judge), torch.no_grad():
        judged = _model.logits(judge, flat).argmax(1)
    return InversionScores(
        recognition=float((judged == wanted).double().mean()),
        nearest_mean=float((distances.argmin(1) == column).double().mean()),
        distance=float(own.mean()),
        other_distance=float(others.mean()),
    )
