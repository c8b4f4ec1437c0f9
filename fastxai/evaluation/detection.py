"""Detecting adversarial inputs from their explanations (in the spirit of Tao et al. 2018,
"Attacks meet interpretability", and Liu et al. 2018): adversarial examples tend to have
diffuse, large-gradient saliency maps and small margins, so a few statistics of the map
separate them from clean inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastxai import _model, _precision, _scheduling
from fastxai._model import Model
from fastxai.evaluation.fragility import ExplanationConfig, _check_config, _map, check_map_fits
from fastxai.evaluation.similarity import _average_ranks

FEATURES = (
    "log_l1",
    "log_max",
    "entropy",
    "top1pct_mass",
    "top5pct_mass",
    "top10pct_mass",
    "skewness",
    "log_kurtosis",
    "margin",
    "log_max_probability",
)


def attribution_features(
    model: Model,
    inputs: torch.Tensor,
    *,
    config: ExplanationConfig | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-input statistics of the explanation of the predicted class, [B, len(FEATURES)] float64.

    With ``a`` the attribution (``config``, saliency by default), ``m = |a|`` summed over
    channels (``explanation_map``) and ``p = m / sum(m)``: ``log sum m``, ``log max m``, the
    normalised entropy ``-sum p log p / log P``, the mass of the top 1%, 5%, 10% of features,
    the skewness and log kurtosis of ``a``'s values, the logit margin ``z_(1) - z_(2)`` and
    ``log max softmax``. ``config.dtype``: the model's passes under autocast in it.

    >>> attribution_features(model, x).shape  # (B, 10)
    """
    model = _model.check_model(model)
    x = _model.check_inputs(inputs).detach()
    config = _check_config(config)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x)
    check_map_fits(config, x, min(chunk, x.shape[0]))
    rows = []
    scored = _precision.autocast_model(model, config.dtype, x.device.type)  # model itself for None
    with _model.preserved_state(model):
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk]
            with torch.no_grad():
                logits = _model.logits(scored, part).double()
            predicted = logits.argmax(dim=1)
            maps = _map(model, part, predicted, config, create_graph=False).detach().double().flatten(1)
            rows.append(_statistics(maps, logits))
    return torch.cat(rows)


def _statistics(maps: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    size = maps.shape[1]
    tiny = 1e-30
    total = maps.sum(1)
    p = maps / total.clamp_min(tiny).unsqueeze(1)
    entropy = -(p * p.clamp_min(tiny).log()).sum(1) / math.log(max(size, 2))
    ordered = p.sort(dim=1, descending=True).values.cumsum(1)
    masses = [ordered[:, max(1, round(size * fraction)) - 1] for fraction in (0.01, 0.05, 0.1)]
    centred = maps - maps.mean(1, keepdim=True)
    variance = centred.pow(2).mean(1).clamp_min(tiny)
    skewness = centred.pow(3).mean(1) / variance.pow(1.5)
    kurtosis = centred.pow(4).mean(1) / variance.pow(2)
    top2 = logits.topk(min(2, logits.shape[1]), dim=1).values
    margin = top2[:, 0] - top2[:, -1]
    log_max_probability = logits.log_softmax(dim=1).max(dim=1).values
    columns = [
        total.clamp_min(tiny).log(),
        maps.max(1).values.clamp_min(tiny).log(),
        entropy,
        *masses,
        skewness,
        kurtosis.clamp_min(tiny).log(),
        margin,
        log_max_probability,
    ]
    return torch.stack(columns, dim=1)


@dataclass(frozen=True)
class AttributionDetector:
    """A logistic regression on standardised ``attribution_features``: ``score(x)`` is the
    probability that x is adversarial, [B] float64."""

    model: Model
    config: ExplanationConfig
    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def features(self, x: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
        return attribution_features(self.model, x, config=self.config, chunk_size=chunk_size)

    def score(self, x: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
        standard = (self.features(x, chunk_size=chunk_size).cpu() - self.mean) / self.std
        return torch.sigmoid(standard @ self.weight + self.bias)


def fit_attribution_detector(
    model: Model,
    clean: torch.Tensor,
    adversarial: torch.Tensor,
    *,
    config: ExplanationConfig | None = None,
    l2: float = 1e-3,
    max_iter: int = 200,
    chunk_size: int | None = None,
) -> AttributionDetector:
    """Fit the detector on clean inputs (label 0) and adversarial ones (label 1).

    Minimises the mean logistic loss plus ``l2 * ||w||^2`` over standardised features with
    L-BFGS in float64 (a convex problem: the result does not depend on a seed).

    clean: [N0, *F]; adversarial: [N1, *F]; returns an ``AttributionDetector``.

    >>> detector = fit_attribution_detector(model, x_clean, fastxai.pgd(model, x_clean, y))
    >>> auroc(detector.score(x_test), detector.score(x_test_adv))
    """
    model = _model.check_model(model)
    clean = _model.check_inputs(clean)
    adversarial = _model.check_inputs(adversarial)
    if clean.shape[1:] != adversarial.shape[1:]:
        raise ValueError(
            f"adversarial inputs must have the shape of the clean ones {tuple(clean.shape[1:])}, "
            f"got {tuple(adversarial.shape[1:])}"
        )
    if clean.shape[0] < 2 or adversarial.shape[0] < 2:
        raise ValueError("clean and adversarial need at least 2 inputs each")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 >= 0:
        raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    config = _check_config(config)
    for part in (clean, adversarial):  # both sets checked before the model runs on either
        chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), part)
        check_map_fits(config, part, min(chunk, part.shape[0]))
    features = torch.cat(
        [
            attribution_features(model, clean, config=config, chunk_size=chunk_size),
            attribution_features(model, adversarial, config=config, chunk_size=chunk_size),
        ]
    ).cpu()
    labels = torch.cat([torch.zeros(clean.shape[0]), torch.ones(adversarial.shape[0])]).double()
    mean, std = features.mean(0), features.std(0).clamp_min(1e-12)
    standard = (features - mean) / std
    weight = torch.zeros(standard.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(standard @ weight + bias, labels)
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return AttributionDetector(model, config, mean, std, weight.detach(), bias.detach())


def auroc(scores_clean: torch.Tensor, scores_adversarial: torch.Tensor) -> float:
    """Area under the ROC curve with adversarial as the positive class, exactly: the
    Mann-Whitney statistic ``P(s_adv > s_clean) + P(s_adv = s_clean) / 2``.

    >>> auroc(detector.score(x_clean), detector.score(x_adv))
    """
    for name, tensor in (("scores_clean", scores_clean), ("scores_adversarial", scores_adversarial)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 1 or tensor.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-d tensor, got shape {tuple(tensor.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or infinity")
    n_clean, n_adv = scores_clean.numel(), scores_adversarial.numel()
    both = torch.cat([scores_clean.detach().double().cpu(), scores_adversarial.detach().double().cpu()])
    ranks = _average_ranks(both.view(1, -1)).view(-1) + 1
    u_statistic = float(ranks[n_clean:].sum()) - n_adv * (n_adv + 1) / 2
    return u_statistic / (n_clean * n_adv)
