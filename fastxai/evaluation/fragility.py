"""Fragility of explanations: attacks that move an explanation but not the prediction
(Ghorbani et al. 2019) and that move the prediction but not the explanation (Zhang et al. 2020).

Both ascend gradients *of explanations*, i.e. second derivatives of the model. A ReLU network's
second derivative is zero almost everywhere, so, as Ghorbani et al. do, the attack's gradients
are taken on a smooth surrogate: by default every ``nn.ReLU`` module is replaced, for the
attack's gradient only, by ``softplus(x, beta)`` through forward hooks that are removed
afterwards (functional ``torch.relu`` calls are not seen: pass ``surrogate=`` a smooth copy of
the model then). Labels and the reported explanations always use the real model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from fastxai import _backends, _budget, _model, _precision, ops
from fastxai._model import Model
from fastxai.attacks import pgd
from fastxai.attacks._core import (
    check_attack_inputs,
    check_count,
    check_positive,
    check_threat_model,
    objective,
)
from fastxai.attribution import quadrature
from fastxai.evaluation.similarity import rank_correlation, topk_intersection

EXPLANATIONS = ("saliency", "smoothgrad", "integrated_gradients")
OBJECTIVES = ("topk", "center_of_mass")


@dataclass(frozen=True)
class ExplanationConfig:
    """How explanations are computed: ``n_samples``/``stdevs``/``seed`` for SmoothGrad (the same
    noise at every attack step), ``n_steps`` Gauss-Legendre points and a zero baseline for IG.
    ``dtype`` (``torch.bfloat16`` or ``torch.float16``): the model's passes for the explanation
    and its scores run under autocast in it (``fastxai._precision``; ``explanation_map``,
    ``attribution_features`` and the attribution detector), the maps are float32; checked before
    the model runs. The attacks on explanations build their own config and take none."""

    explanation: str = "saliency"
    n_samples: int = 16
    stdevs: float = 0.15
    n_steps: int = 16
    seed: int = 0
    dtype: torch.dtype | None = None


def explanation_map(
    model: Model, inputs: torch.Tensor, target: object = None, *, config: ExplanationConfig | None = None
) -> torch.Tensor:
    """The saliency map the fragility measures compare: ``|attribution|`` summed over the channel
    dimension for inputs [B, C, *S] with at least one spatial dimension, else ``|attribution|``.

    inputs: [B, *F]; returns [B, *S] (or [B, *F]) float32.

    >>> maps = explanation_map(model, x, config=ExplanationConfig("smoothgrad"))
    """
    model = _model.check_model(model)
    x = _model.check_inputs(inputs).detach()
    config = _check_config(config)
    check_map_fits(config, x, x.shape[0])
    target_t = _model.check_target(target, x.shape[0], x.device)
    scored = _precision.autocast_model(model, config.dtype, x.device.type)  # model itself for None
    with _model.preserved_state(model):
        target_t = _model.resolve_target(scored, x, target_t, x.shape[0])
        return _map(model, x, target_t, config, create_graph=False).detach()


@dataclass(frozen=True)
class FragilityReport:
    """Per-sample results of ``interpretation_attack``; ``summary()`` gives the means."""

    label_kept: torch.Tensor
    topk_intersection: torch.Tensor
    rank_correlation: torch.Tensor
    center_shift: torch.Tensor

    def summary(self) -> dict[str, float]:
        return {
            "label_kept_rate": float(self.label_kept.float().mean()),
            "topk_intersection": float(self.topk_intersection.mean()),
            "rank_correlation": float(self.rank_correlation.nanmean()),
            "center_shift": float(self.center_shift.mean()),
        }


def interpretation_attack(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    explanation: str = "saliency",
    eps: float = 8 / 255,
    steps: int = 50,
    alpha: float | None = None,
    norm: str = "linf",
    k: int | None = None,
    objective: str = "topk",
    bounds: Sequence[float] = (0.0, 1.0),
    surrogate: Model | None = None,
    softplus_beta: float = 10.0,
    n_samples: int = 16,
    stdevs: float = 0.15,
    n_steps: int = 16,
    seed: int = 0,
    backend: str | None = None,
) -> tuple[torch.Tensor, FragilityReport]:
    """The interpretation attack of Ghorbani, Abid and Zou (2019), "Interpretation of neural
    networks is fragile": a perturbation ``||delta|| <= eps`` (``norm``) that keeps the predicted
    label and moves the explanation ``M`` (``explanation_map``, normalised to unit mass).

    ``objective="topk"`` minimises the mass ``sum_{i in T} M(x + delta)_i`` on the original top-k
    features T; ``"center_of_mass"`` maximises the shift of the map's centre of mass. Each step
    is a fused PGD step along the objective's gradient (taken on the smooth surrogate); a step
    that changes the label is rejected and that sample's step size halves. The result per
    sample is the accepted iterate whose real explanation is furthest from the original (the
    input itself if none moved it), so every returned input keeps its label.

    ``target``: the explained class (None: the predicted one). ``alpha`` defaults to
    ``eps / 8``; ``k`` to a tenth of the map size. inputs: [B, *F] within ``bounds``; returns
    (perturbed inputs [B, *F], ``FragilityReport``).

    >>> x_adv, report = fastxai.evaluation.interpretation_attack(model, x, eps=0.1, steps=50)
    >>> report.summary()["topk_intersection"]
    """
    model = _model.check_model(model)
    threat = check_threat_model(eps, norm, tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds)
    steps = check_count("steps", steps)
    step_size = check_positive("alpha", alpha if alpha is not None else threat.eps / 8 or 1.0)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    config = _check_config(ExplanationConfig(explanation, n_samples, stdevs, n_steps, seed))
    beta = check_positive("softplus_beta", softplus_beta)
    if surrogate is not None:
        _model.check_model(surrogate)
    x = check_attack_inputs(inputs, threat.bounds).detach().contiguous()
    check_map_fits(config, x, x.shape[0])
    _backends.resolve(backend, x.device, x.dtype)  # the PGD step's backend, before the model runs
    target_t = _model.check_target(target, x.shape[0], x.device)
    with _model.preserved_state(model), _model.preserved_state(surrogate if surrogate is not None else model):
        labels = _predict(model, x)
        if target_t is not None:
            _model.check_target_range(target_t, _model.logits(model, x[:1]).shape[1])
        explained = labels if target_t is None else target_t
        before = _map(model, x, explained, config, create_graph=False).detach()
        size = before[0].numel()
        k = check_count("k", k if k is not None else max(1, size // 10))
        if k > size:
            raise ValueError(f"k must be <= the explanation size ({size}), got {k}")
        top = before.flatten(1).topk(k, dim=1).indices
        com_before = _center_of_mass(before)

        def dissimilarity(maps: torch.Tensor) -> torch.Tensor:
            """What the attack increases, on normalised maps: [B]."""
            if objective == "topk":
                return -_normalise(maps).gather(1, top).sum(1)
            return (_center_of_mass(maps) - com_before).norm(dim=1)

        best, best_score = x.clone(), dissimilarity(before)
        current = x.clone()
        steps_per_sample = torch.full((x.shape[0],), step_size, dtype=torch.float32, device=x.device)
        smooth = surrogate if surrogate is not None else model
        for _ in range(steps):
            point = current.detach().requires_grad_(True)
            with torch.enable_grad(), _softplus_relus(smooth, beta if surrogate is None else None):
                score = dissimilarity(_map(smooth, point, explained, config, create_graph=True))
                (grad,) = torch.autograd.grad(score.sum(), point)
            stepped = ops.pgd_step(
                current, grad, x, steps_per_sample, threat.eps, *threat.bounds, threat.norm, backend=backend
            )
            kept = _predict(model, stepped) == labels
            current = torch.where(_rows(kept, x), stepped, current)
            steps_per_sample = torch.where(kept, steps_per_sample, steps_per_sample / 2)
            real = dissimilarity(_map(model, current, explained, config, create_graph=False).detach())
            better = kept & (real > best_score)
            best = torch.where(_rows(better, x), current, best)
            best_score = torch.where(better, real, best_score)
        after = _map(model, best, explained, config, create_graph=False).detach()
        report = FragilityReport(
            label_kept=_predict(model, best) == labels,
            topk_intersection=topk_intersection(before, after, k),
            rank_correlation=rank_correlation(before, after),
            center_shift=(_center_of_mass(after) - com_before).norm(dim=1),
        )
    return best.to(inputs.dtype), report


@dataclass(frozen=True)
class JointAttackReport:
    """Per-sample results of ``joint_attack``, and of plain PGD with the same budget when
    compared (``pgd_*``, else None). Distances are L1 between unit-mass maps, in [0, 2]."""

    success: torch.Tensor
    explanation_distance: torch.Tensor
    topk_intersection: torch.Tensor
    pgd_success: torch.Tensor | None = None
    pgd_explanation_distance: torch.Tensor | None = None
    pgd_topk_intersection: torch.Tensor | None = None

    def summary(self) -> dict[str, float]:
        values = {
            "success_rate": self.success,
            "explanation_distance": self.explanation_distance,
            "topk_intersection": self.topk_intersection,
            "pgd_success_rate": self.pgd_success,
            "pgd_explanation_distance": self.pgd_explanation_distance,
            "pgd_topk_intersection": self.pgd_topk_intersection,
        }
        return {name: float(value.float().mean()) for name, value in values.items() if value is not None}


def joint_attack(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    explanation: str = "saliency",
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 20,
    lam: float = 10.0,
    kappa: float = 1.0,
    norm: str = "linf",
    k: int | None = None,
    bounds: Sequence[float] = (0.0, 1.0),
    surrogate: Model | None = None,
    softplus_beta: float = 10.0,
    compare_pgd: bool = True,
    n_samples: int = 16,
    stdevs: float = 0.15,
    n_steps: int = 16,
    seed: int = 0,
    backend: str | None = None,
) -> tuple[torch.Tensor, JointAttackReport]:
    """The joint attack of Zhang et al. (2020), "Interpretable deep learning under fire" (ADV^2):
    fool the classifier while the explanation stays close to the benign one. Each step ascends

        ``min(max_{j != y} z_j - z_y, kappa) - lam * ||M(x') - M(x)||_1``

    (unit-mass maps; the prediction term stops pulling once the margin reaches ``kappa``, so the
    explanation term then has the step to itself). The result per sample is the fooling iterate
    with the closest explanation (the last iterate if none fooled). With ``compare_pgd`` the
    report also holds plain PGD (``fastxai.pgd``, same eps/alpha/steps) for comparison.

    ``labels``: true classes (None: the predicted ones). Returns (x_adv [B, *F], report).

    >>> x_adv, report = fastxai.evaluation.joint_attack(model, x, y, eps=0.1, alpha=0.01, steps=40)
    """
    model = _model.check_model(model)
    threat = check_threat_model(eps, norm, tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds)
    step_size = check_positive("alpha", alpha)
    steps = check_count("steps", steps)
    lam_f = float(lam) if isinstance(lam, (int, float)) and not isinstance(lam, bool) and lam >= 0 else None
    if lam_f is None:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")
    kappa_f = check_positive("kappa", kappa)
    config = _check_config(ExplanationConfig(explanation, n_samples, stdevs, n_steps, seed))
    beta = check_positive("softplus_beta", softplus_beta)
    if surrogate is not None:
        _model.check_model(surrogate)
    x = check_attack_inputs(inputs, threat.bounds).detach().contiguous()
    check_map_fits(config, x, x.shape[0])
    _backends.resolve(backend, x.device, x.dtype)  # the PGD step's backend, before the model runs
    label_t = _model.check_target(labels, x.shape[0], x.device)
    with _model.preserved_state(model), _model.preserved_state(surrogate if surrogate is not None else model):
        label_t = _model.resolve_target(model, x, label_t, x.shape[0])
        benign = _normalise(_map(model, x, label_t, config, create_graph=False).detach())
        size = benign.shape[1]
        k = check_count("k", k if k is not None else max(1, size // 10))
        smooth = surrogate if surrogate is not None else model

        def distance(point: torch.Tensor) -> torch.Tensor:
            return (
                (_normalise(_map(model, point, label_t, config, create_graph=False).detach()) - benign)
                .abs()
                .sum(1)
            )

        current = x.clone()
        best, best_distance = x.clone(), torch.full((x.shape[0],), float("inf"), device=x.device)
        for _ in range(steps):
            point = current.detach().requires_grad_(True)
            with torch.enable_grad():
                margin = objective(_model.logits(model, point), label_t, "margin", targeted=False)
                with _softplus_relus(smooth, beta if surrogate is None else None):
                    maps = _normalise(_map(smooth, point, label_t, config, create_graph=True))
                loss = margin.clamp(max=kappa_f) - lam_f * (maps - benign).abs().sum(1)
                (grad,) = torch.autograd.grad(loss.sum(), point)
            current = ops.pgd_step(
                current, grad, x, step_size, threat.eps, *threat.bounds, threat.norm, backend=backend
            )
            fooled = _predict(model, current) != label_t
            current_distance = distance(current)
            better = fooled & (current_distance < best_distance)
            best = torch.where(_rows(better, x), current, best)
            best_distance = torch.where(better, current_distance, best_distance)
        never = torch.isinf(best_distance)
        best = torch.where(_rows(never, x), current, best)
        after = _map(model, best, label_t, config, create_graph=False).detach()
        fields: dict[str, torch.Tensor | None] = {
            "success": _predict(model, best) != label_t,
            "explanation_distance": (_normalise(after) - benign).abs().sum(1),
            "topk_intersection": topk_intersection(benign, after.flatten(1), k),
        }
        if compare_pgd:
            x_pgd = pgd(
                model,
                x,
                label_t,
                eps=threat.eps,
                alpha=step_size,
                steps=steps,
                norm=threat.norm,
                random_start=False,
                bounds=threat.bounds,
                backend=backend,
            )
            pgd_map = _map(model, x_pgd, label_t, config, create_graph=False).detach()
            fields["pgd_success"] = _predict(model, x_pgd) != label_t
            fields["pgd_explanation_distance"] = (_normalise(pgd_map) - benign).abs().sum(1)
            fields["pgd_topk_intersection"] = topk_intersection(benign, pgd_map.flatten(1), k)
    return best.to(inputs.dtype), JointAttackReport(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- internals


def _check_config(config: ExplanationConfig | None) -> ExplanationConfig:
    config = config if config is not None else ExplanationConfig()
    if not isinstance(config, ExplanationConfig):
        raise TypeError(f"config must be an ExplanationConfig, got {type(config).__name__}")
    if config.explanation not in EXPLANATIONS:
        raise ValueError(f"explanation must be one of {EXPLANATIONS}, got {config.explanation!r}")
    check_count("n_samples", config.n_samples)
    check_positive("stdevs", config.stdevs)
    check_count("n_steps", config.n_steps)
    if config.explanation == "smoothgrad":
        _budget.check_philox_samples("n_samples", config.n_samples)
    if config.explanation == "integrated_gradients":
        quadrature.check_steps("gausslegendre", config.n_steps)
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {config.seed!r}")
    return config


def check_map_fits(config: ExplanationConfig, x: torch.Tensor, rows: int) -> None:
    """Refuse, before any model call, a SmoothGrad or IG map that cannot fit: ``_map`` sends all
    ``n`` noisy (or path) copies of ``rows`` inputs through the model as one batch, since the
    attacks differentiate through all of them at once, and holds the copies, the model batch and
    its input gradient (3 copies; the model's own activations come on top). Also the config's
    ``dtype``, on the inputs' device."""
    _precision.check_dtype(config.dtype, x.device)
    if config.explanation == "saliency":
        return
    smooth = config.explanation == "smoothgrad"
    name, count = ("n_samples", config.n_samples) if smooth else ("n_steps", config.n_steps)
    nbytes = 3 * count * rows * math.prod(x.shape[1:]) * x.element_size()
    what = f"the {config.explanation} map's {count} copies of {rows} inputs (one model batch)"
    _budget.check_fits(name, count, nbytes, what, x.device)


def _predict(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _model.logits(model, x).argmax(dim=1)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    return flat / flat.sum(1, keepdim=True).clamp_min(1e-12)


def _center_of_mass(maps: torch.Tensor) -> torch.Tensor:
    """Centre of mass of each map over its own index grid: [B, *S] -> [B, len(S)]."""
    mass = maps.float()
    total = mass.flatten(1).sum(1).clamp_min(1e-12)
    centres = []
    for dim in range(1, mass.dim()):
        shape = [1] * mass.dim()
        shape[dim] = mass.shape[dim]
        coordinate = torch.arange(mass.shape[dim], dtype=mass.dtype, device=mass.device).view(shape)
        centres.append((mass * coordinate).flatten(1).sum(1) / total)
    return torch.stack(centres, dim=1)


def _map(
    model: Model, x: torch.Tensor, target: torch.Tensor, config: ExplanationConfig, *, create_graph: bool
) -> torch.Tensor:
    attribution = _attribution(model, x, target, config, create_graph).float().abs()
    return attribution.sum(1) if attribution.dim() >= 3 else attribution


def _attribution(
    model: Model, x: torch.Tensor, target: torch.Tensor, config: ExplanationConfig, create_graph: bool
) -> torch.Tensor:
    """A differentiable attribution (``create_graph``) of ``f_target`` at x: [B, *F]; the model
    under autocast in ``config.dtype`` (the gradient comes back in x's dtype)."""
    leaf = x if x.requires_grad else x.detach().requires_grad_(True)
    model = _precision.autocast_model(model, config.dtype, x.device.type)  # itself for None

    def gradients(points: torch.Tensor, repeats: int) -> torch.Tensor:
        with torch.enable_grad():
            scores = _model.logits(model, points).gather(1, target.repeat(repeats).view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(scores, leaf, create_graph=create_graph)
        return grad

    batch = x.shape[0]
    if config.explanation == "saliency":
        return gradients(leaf, 1)
    if config.explanation == "smoothgrad":
        noise = ops.gaussian_perturb(
            torch.zeros_like(x.detach()), config.stdevs, config.seed, 0, config.n_samples
        )
        points = (leaf.unsqueeze(0) + noise).reshape(config.n_samples * batch, *x.shape[1:])
        return gradients(points, config.n_samples) / config.n_samples
    alphas, weights = quadrature.points_and_weights("gausslegendre", config.n_steps)
    alpha_t = torch.as_tensor(alphas, dtype=x.dtype, device=x.device).view(-1, 1, *([1] * (x.dim() - 1)))
    weight_t = torch.as_tensor(weights, dtype=x.dtype, device=x.device).view(-1, 1, *([1] * (x.dim() - 1)))
    # Zero baseline: d/dx sum_k (w_k / alpha_k) f(alpha_k x) = sum_k w_k grad f(alpha_k x), the IG
    # integral, in one backward (Gauss-Legendre points are never 0).
    with torch.enable_grad():
        points = (alpha_t * leaf.unsqueeze(0)).reshape(config.n_steps * batch, *x.shape[1:])
        scores = _model.logits(model, points).gather(1, target.repeat(config.n_steps).view(-1, 1))
        weighted = (scores.view(config.n_steps, batch) * (weight_t / alpha_t).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(weighted, leaf, create_graph=create_graph)
    return leaf * grad


@contextlib.contextmanager
def _softplus_relus(model: Model, beta: float | None) -> Iterator[None]:
    """While active, every ``nn.ReLU`` of ``model`` outputs ``softplus(input, beta)`` (hooks,
    removed on exit; an in-place ReLU gets a copy of its input so the original stays intact)."""
    if beta is None or not isinstance(model, nn.Module):
        yield
        return
    stash: dict[int, torch.Tensor] = {}
    handles = []

    def before(module: nn.Module, args: tuple) -> tuple:
        stash[id(module)] = args[0]
        return (args[0].clone(), *args[1:])

    def after(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return functional.softplus(stash.pop(id(module)), beta=beta)

    try:
        for module in model.modules():
            if type(module) is nn.ReLU:
                handles.append(module.register_forward_pre_hook(before))
                handles.append(module.register_forward_hook(after))
        yield
    finally:
        for handle in handles:
            handle.remove()
        stash.clear()
