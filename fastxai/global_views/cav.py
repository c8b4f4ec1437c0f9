"""Concept activation vectors: the normal of a linear classifier separating a concept's layer
activations from those of other examples (Kim et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional

from fastxai._checks import check_positive

CLASSIFIERS = ("logistic", "svm")


@dataclass(frozen=True)
class CAV:
    """A trained concept activation vector.

    vector: [D] unit normal of the decision boundary, pointing towards the concept;
    weight, bias: the classifier itself, ``score(a) = weight . a + bias`` (> 0: concept).
    """

    vector: torch.Tensor
    weight: torch.Tensor
    bias: float

    def accuracy(self, positive: torch.Tensor, negative: torch.Tensor) -> float:
        """Fraction of ``positive`` [P, D] scored > 0 and ``negative`` [Q, D] scored <= 0."""
        weight = self.weight.to(positive.device)
        hits = int((positive.flatten(1).double() @ weight + self.bias > 0).sum())
        hits += int((negative.flatten(1).double() @ weight + self.bias <= 0).sum())
        return hits / (positive.shape[0] + negative.shape[0])


def _check_examples(name: str, examples: object) -> torch.Tensor:
    if not isinstance(examples, torch.Tensor) or not examples.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor [N, ...], got {type(examples).__name__}")
    if examples.dim() < 1 or examples.shape[0] < 1:
        raise ValueError(f"{name} must be [N, ...] with N >= 1, got shape {tuple(examples.shape)}")
    if not bool(torch.isfinite(examples).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    return examples.flatten(1) if examples.dim() > 1 else examples.unsqueeze(1)


def check_regularization(regularization: object) -> float:
    return check_positive("regularization", regularization)


def _loss_terms(margins: torch.Tensor, classifier: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example loss of the margins ``m = y (w . a + b)`` and its first and second derivatives."""
    if classifier == "logistic":
        return (
            functional.softplus(-margins),
            -torch.sigmoid(-margins),
            torch.sigmoid(margins) * torch.sigmoid(-margins),
        )
    hinge = functional.relu(1 - margins)
    return hinge.square(), -2 * hinge, 2 * (margins < 1).to(margins.dtype)


def _newton(
    features: torch.Tensor, labels: torch.Tensor, classifier: str, regularization: float, max_iter: int
) -> torch.Tensor:
    """Minimise ``mean_i loss(y_i (z_i . theta)) + regularization/2 ||theta[:-1]||^2`` over theta
    (the last feature is the constant 1 of the bias) by Newton's method with backtracking; the
    squared hinge uses its generalised Hessian (Keerthi and DeCoste 2005)."""
    count, width = features.shape
    penalty = torch.full((width,), regularization, dtype=features.dtype, device=features.device)
    penalty[-1] = 0.0
    theta = features.new_zeros(width)

    def objective(point: torch.Tensor) -> torch.Tensor:
        loss, _, _ = _loss_terms(labels * (features @ point), classifier)
        return loss.mean() + 0.5 * (penalty * point.square()).sum()

    tolerance = None
    for _ in range(max_iter):
        margins = labels * (features @ theta)
        loss, first, second = _loss_terms(margins, classifier)
        gradient = features.T @ (labels * first) / count + penalty * theta
        size = float(gradient.abs().max())
        tolerance = 1e-12 * max(1.0, size) if tolerance is None else tolerance
        if size <= tolerance:
            break
        hessian = (features.T * second) @ features / count + torch.diag(penalty)
        # A ridge of relative size 1e-12 keeps the solve defined when no example is active (hinge).
        hessian.diagonal().add_(1e-12 * float(hessian.diagonal().abs().max()) + 1e-300)
        step = -torch.linalg.solve(hessian, gradient)
        current = loss.mean() + 0.5 * (penalty * theta.square()).sum()
        slope = float(gradient @ step)
        scale = 1.0
        for _ in range(60):
            if float(objective(theta + scale * step)) <= float(current) + 1e-4 * scale * slope:
                break
            scale *= 0.5
        theta = theta + scale * step
    return theta


def train_cav(
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    classifier: str = "logistic",
    regularization: float = 1e-2,
    max_iter: int = 100,
) -> CAV:
    """Fit a linear classifier, concept (``positive``, [P, *A]) against the rest (``negative``,
    [Q, *A]), on flattened activations, and return its normal as the CAV.

    ``logistic`` minimises ``mean_i log(1 + exp(-y_i (w . a_i + b))) + regularization/2 ||w||^2``;
    ``svm`` (a linear SVM with the squared hinge, liblinear's L2-SVM) minimises
    ``mean_i max(0, 1 - y_i (w . a_i + b))^2 + regularization/2 ||w||^2``, with ``y = +1`` for the
    concept. Both are strictly convex in ``w``, so the CAV is unique and deterministic: the
    optimal ``w`` lies in the span of the examples (representer theorem), so when D > P + Q the
    problem is solved exactly in an orthonormal basis of that span (a QR factorisation), by
    Newton's method in float64 either way. The logistic optimum equals scikit-learn's
    ``LogisticRegression(C=1 / (regularization * (P + Q)))``.

    >>> cav = train_cav(concept_activations, random_activations)
    >>> cav.vector.shape  # [D]
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    check_regularization(regularization)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    pos = _check_examples("positive", positive)
    neg = _check_examples("negative", negative)
    if pos.shape[1:] != neg.shape[1:]:
        raise ValueError(
            f"positive and negative must have the same activation size, got {pos.shape[1]} and {neg.shape[1]}"
        )
    examples = torch.cat([pos, neg.to(pos.device)]).double()
    labels = torch.cat([examples.new_ones(pos.shape[0]), -examples.new_ones(neg.shape[0])])
    basis = None
    if examples.shape[1] > examples.shape[0]:
        basis, _ = torch.linalg.qr(examples.T)  # [D, n], orthonormal columns spanning the examples
        coordinates = examples @ basis
    else:
        coordinates = examples
    features = torch.cat([coordinates, coordinates.new_ones(coordinates.shape[0], 1)], dim=1)
    theta = _newton(features, labels, classifier, float(regularization), max_iter)
    trained = theta[:-1] if basis is None else basis @ theta[:-1]
    norm = trained.norm()
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        raise ValueError("the concept and the other examples could not be separated (zero CAV)")
    return CAV(vector=(trained / norm).float(), weight=trained, bias=float(theta[-1]))
